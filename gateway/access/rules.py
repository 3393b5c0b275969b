"""What a Consent decides and who may see a document: pure functions from FHIR resources to the
rows the access filter reads (access_rules, and the visibility columns of a document).

Consent kinds (Consent.category, system CONSENT_KIND_SYSTEM; PAM-FR ZFA consents keep theirs):
- consultation: the patient consents to (permit) or opposes (deny) consultation by professionals;
- professional: one professional (IdNatPs) or organisation (FINESS) authorised (permit) or blocked (deny);
- attending-physician: the médecin traitant (permit), who sees every document;
- emergency-access / regulation-access: deny = opposition to break-the-glass / to the SAMU regulator;
- record: deny = the record is closed.
"""
from __future__ import annotations

import re

from gateway.mapping import codes
from gateway.mapping.dates import fhir_range
from gateway.refusal import Refused

CONSENT_KIND_SYSTEM = "urn:dmp-gateway:consent-kind"
ZFA_SYSTEM = "urn:hl7-france:pam-fr:zfa"
ZFA_KINDS = {"consultation": "consultation", "alimentation": "feeding"}

KINDS = ("consultation", "professional", "attending-physician", "emergency-access", "regulation-access", "record")
KINDS_WITH_ACTOR = ("professional", "attending-physician")

IDNATPS_SYSTEM = f"urn:oid:{codes.IDNATPS_OID}"
IDNATST_SYSTEM = f"urn:oid:{codes.IDNATST_OID}"
ORGANIZATION_SYSTEMS = (codes.FINESS_SYSTEM, IDNATST_SYSTEM)
# A FINESS number: nine characters, digits but for 2A or 2B (Corsica) in front.
FINESS = re.compile(r"(?:\d{2}|2A|2B)\d{7}")
# A structure's IdNatSt (TRE_G07's type, then its number) as the CI-SIS writes one of a FINESS: 1 + FINESS.
IDNATST_OF_FINESS = re.compile(rf"1({FINESS.pattern})")

# TRE_A07 by its canonical URL, and by its OID (1.2.250.1.213.1.1.4.13), as XDS and HL7v2 name it;
# the codes that spell a visibility label, HL7v2's spelling of one included.
VISIBILITY_OID_SYSTEM = "urn:oid:1.2.250.1.213.1.1.4.13"
VISIBILITY_SYSTEMS = (codes.VISIBILITY_SYSTEM, VISIBILITY_OID_SYSTEM)
VISIBILITY_SPELLINGS = {*codes.VISIBILITY_DISPLAYS, "INVISIBLE_REP_LEGAUX"}

MASQUE_PS = "MASQUE_PS"
INVISIBLE_PATIENT = "INVISIBLE_PATIENT"
INVISIBLE_REPRESENTATIVES = "INVISIBLE_REPRESENTANTS_LEGAUX"


def consent_kind(consent: dict) -> str | None:
    for category in consent.get("category", []):
        for coding in category.get("coding", []):
            if coding.get("system") == CONSENT_KIND_SYSTEM and coding.get("code") in KINDS:
                return coding["code"]
            if coding.get("system") == ZFA_SYSTEM and coding.get("code") in ZFA_KINDS:
                return ZFA_KINDS[coding["code"]]
    return None


def consent_actors(consent: dict) -> list[tuple[str, str]]:
    """(system, value) of each actor the provision names by identifier."""
    return [named for named in map(actor_identifier, consent.get("provision", {}).get("actor", [])) if named]


def actor_identifier(actor: dict) -> tuple[str, str] | None:
    """(system, value) of a provision's actor named by identifier; None when it is named otherwise."""
    identifier = actor.get("reference", {}).get("identifier", {})
    return (identifier["system"], identifier["value"]) if identifier.get("system") and identifier.get("value") \
        else None


def rule_actor(system: str, value: str) -> tuple[str, str]:
    """An actor as the rules name it: a structure's IdNatSt of a FINESS is that FINESS, as a token's
    `org` names it (`structure`). Kept as sent, an authorisation or a block of a clinic by its
    IdNatSt, as the CI-SIS names structures, was answered 201 and applied to no one."""
    if system == IDNATST_SYSTEM and (finess := structure(value)) != value:
        return codes.FINESS_SYSTEM, finess
    return system, value


def structure(org: str) -> str:
    """The structure a professional acts for (a token's `org`) as the rules name it: its FINESS, or
    its IdNatSt of another kind (a cabinet's SIRET) as given. An IdNatSt of a FINESS in the token
    missed every decision about that FINESS, a block included."""
    found = IDNATST_OF_FINESS.fullmatch(org)
    return found.group(1) if found else org


def structure_spellings(system: str, value: str) -> list[tuple[str, str]]:
    """A structure named by its FINESS or by its IdNatSt of that FINESS, named both ways (a
    Consent's actors are indexed so): a search by one spelling missed the decisions written in the
    other."""
    if system == IDNATST_SYSTEM and (finess := structure(value)) != value:
        return [(system, value), (codes.FINESS_SYSTEM, finess)]
    if system == codes.FINESS_SYSTEM and FINESS.fullmatch(value):
        return [(system, value), (IDNATST_SYSTEM, f"1{value}")]
    return [(system, value)]


def for_a_period(consent: dict) -> bool:
    """Whether a Consent's period bounds its rules: an authorisation of professionals given for a
    period. (A ZFA's period is the record's closing date, which its rules do not read.)"""
    return (consent_kind(consent) == "professional" and consent.get("provision", {}).get("type") == "permit"
            and isinstance(consent.get("provision", {}).get("period"), dict))


def period_bounds(period: dict) -> tuple[str | None, str | None]:
    """The first instant a period's start covers and the last its end covers (index strings, UTC)."""
    return (fhir_range(period["start"])[0] if period.get("start") else None,
            fhir_range(period["end"])[1] if period.get("end") else None)


def validity(consent: dict) -> dict:
    """The rules' bounds (access_rules.valid_from, valid_until): an authorisation given for a period
    holds within it."""
    valid_from, valid_until = period_bounds(consent["provision"]["period"]) if for_a_period(consent) else (None, None)
    return {"valid_from": valid_from, "valid_until": valid_until}


def rules_of(consent: dict, patient_id: str) -> list[dict]:
    """The access_rules rows of one Consent: none unless it is active and states permit or deny.
    Feeding consents give no rule here: ingest reads them (a document for an opposing patient is refused)."""
    kind = consent_kind(consent)
    effect = consent.get("provision", {}).get("type")
    if consent.get("status") != "active" or kind in (None, "feeding") or effect not in ("permit", "deny"):
        return []
    base = {"consent_id": consent["id"], "patient_id": patient_id, "kind": kind, "effect": effect,
            **validity(consent)}
    if kind in KINDS_WITH_ACTOR:
        return [{**base, "actor_system": system, "actor_value": value}
                for system, value in (rule_actor(*actor) for actor in consent_actors(consent))]
    return [{**base, "actor_system": "", "actor_value": ""}]


def applied_labels(labels: list, location: str) -> list:
    """A document's security labels as sent (a submission's, a PATCH's), as the gateway keeps them,
    or Refused. A visibility label (TRE_A07) is applied, so one the gateway cannot apply is refused,
    where it was kept or dropped and ignored: the document it was to hide (from the patient until
    the announcement) was shown. TRE_A07 known by its OID is TRE_A07; a visibility code under
    another system or none, a code JDV_J58 does not hold (MASQUE_PT, MASQUE_PSOCIAL), or the
    HL7v2 spelling INVISIBLE_REP_LEGAUX, is refused."""
    kept = []
    for index, label in enumerate(labels):
        codings = label.get("coding", []) if isinstance(label, dict) else []
        codings = [coding for coding in codings if isinstance(coding, dict)] if isinstance(codings, list) else []
        for place, coding in enumerate(codings):
            code, system = coding.get("code"), coding.get("system")
            where = f"{location}[{index}].coding[{place}]"
            if system in VISIBILITY_SYSTEMS and code not in codes.VISIBILITY_DISPLAYS:
                spelt = (" (HL7v2's spelling of INVISIBLE_REPRESENTANTS_LEGAUX)"
                         if code == "INVISIBLE_REP_LEGAUX" else "")
                raise Refused(f"the visibility label {code}{spelt} is not one the DMP applies (JDV_J58): "
                              f"{', '.join(codes.VISIBILITY_DISPLAYS)}", location=where)
            if system not in VISIBILITY_SYSTEMS and code in VISIBILITY_SPELLINGS:
                raise Refused(f"{code} is a visibility label of TRE_A07 ({codes.VISIBILITY_SYSTEM}): under "
                              f"{'the system ' + str(system) if system else 'no system'} it would not be applied",
                              location=f"{where}.system")
        if any(coding.get("system") == VISIBILITY_OID_SYSTEM for coding in codings):
            label = dict(label, coding=[dict(coding, system=codes.VISIBILITY_SYSTEM)
                                        if coding.get("system") == VISIBILITY_OID_SYSTEM else coding
                                        for coding in codings])
        kept.append(label)
    return kept


def visibility_codes(resource: dict) -> set[str]:
    return {coding.get("code") for label in resource.get("securityLabel", [])
            for coding in label.get("coding", []) if coding.get("system") == codes.VISIBILITY_SYSTEM}


VISIBILITY_COLUMNS = ("masked", "hidden_from_patient", "hidden_from_representatives")

# What a replacement keeps of the documents it replaces: their masking from professionals and their
# hiding from legal representatives, which the patient may have asked for after the feed sent them
# (the replacement, restating the original's flags or giving none, unmasked what the patient had
# masked). INVISIBLE_PATIENT is the author's to state: a replacement is how an HL7v2 feed, which
# has no PATCH, announces a document to its patient.
KEPT_BY_REPLACEMENT = (MASQUE_PS, INVISIBLE_REPRESENTATIVES)


def with_replaced_masking(docref: dict, replaced: list[dict], lifted: frozenset[str] = frozenset()) -> dict:
    """`docref` with the labels of KEPT_BY_REPLACEMENT that the documents it replaces carry,
    before its own (where PDSM4DMP's masking PATCH puts a visibility label), but those its sender
    lifted with it (`lifted`, which writes.changeable_labels allows them)."""
    held = visibility_codes(docref) | lifted
    kept: dict[str, dict] = {}
    for previous in replaced:
        for label in previous.get("securityLabel", []):
            for coding in label.get("coding", []):
                code = coding.get("code")
                if coding.get("system") == codes.VISIBILITY_SYSTEM and code in KEPT_BY_REPLACEMENT \
                        and code not in held:
                    kept.setdefault(code, {"coding": [coding]})
    if not kept:
        return docref
    return {**docref, "securityLabel": [kept[code] for code in KEPT_BY_REPLACEMENT if code in kept]
            + docref.get("securityLabel", [])}


def related_ids(docref: dict, code: str) -> list[str]:
    """The DocumentReferences a document names in relatesTo with this code, by id."""
    return [r["target"]["reference"].rsplit("/", 1)[-1] for r in docref.get("relatesTo", [])
            if isinstance(r, dict) and r.get("code") == code
            and str(r.get("target", {}).get("reference", "")).startswith("DocumentReference/")]


def signed_ids(docref: dict) -> list[str]:
    """The DocumentReferences a signature signs (relatesTo signs), by id."""
    return related_ids(docref, "signs")


def visibility_columns(docref: dict) -> dict:
    """The resources-table columns that say who may not see this document (and its Binary)."""
    labels = visibility_codes(docref)
    return {"masked": MASQUE_PS in labels, "hidden_from_patient": INVISIBLE_PATIENT in labels,
            "hidden_from_representatives": INVISIBLE_REPRESENTATIVES in labels}


def binary_ids(docref: dict) -> list[str]:
    """The Binaries a DocumentReference's attachments point to on this server. A FHIR document is
    kept in a Binary too, and read at Bundle/[id] (PDSM4DMP TD3.2): its URL names that Binary."""
    out = []
    for content in docref.get("content", []):
        url = content.get("attachment", {}).get("url", "")
        if any(f"/{kind}/" in url or url.startswith(f"{kind}/") for kind in ("Binary", "Bundle")):
            out.append(url.rsplit("/", 1)[-1])
    return out
