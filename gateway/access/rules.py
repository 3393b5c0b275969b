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

from gateway.mapping import codes

CONSENT_KIND_SYSTEM = "urn:dmp-gateway:consent-kind"
ZFA_SYSTEM = "urn:hl7-france:pam-fr:zfa"
ZFA_KINDS = {"consultation": "consultation", "alimentation": "feeding"}

KINDS = ("consultation", "professional", "attending-physician", "emergency-access", "regulation-access", "record")
KINDS_WITH_ACTOR = ("professional", "attending-physician")

IDNATPS_SYSTEM = f"urn:oid:{codes.IDNATPS_OID}"
ORGANIZATION_SYSTEMS = (codes.FINESS_SYSTEM, f"urn:oid:{codes.IDNATST_OID}")

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
    out = []
    for actor in consent.get("provision", {}).get("actor", []):
        identifier = actor.get("reference", {}).get("identifier", {})
        if identifier.get("system") and identifier.get("value"):
            out.append((identifier["system"], identifier["value"]))
    return out


def rules_of(consent: dict, patient_id: str) -> list[dict]:
    """The access_rules rows of one Consent: none unless it is active and states permit or deny.
    Feeding consents give no rule here: ingest reads them (a document for an opposing patient is refused)."""
    kind = consent_kind(consent)
    effect = consent.get("provision", {}).get("type")
    if consent.get("status") != "active" or kind in (None, "feeding") or effect not in ("permit", "deny"):
        return []
    base = {"consent_id": consent["id"], "patient_id": patient_id, "kind": kind, "effect": effect}
    if kind in KINDS_WITH_ACTOR:
        return [{**base, "actor_system": system, "actor_value": value} for system, value in consent_actors(consent)]
    return [{**base, "actor_system": "", "actor_value": ""}]


def visibility_codes(resource: dict) -> set[str]:
    return {coding.get("code") for label in resource.get("securityLabel", [])
            for coding in label.get("coding", []) if coding.get("system") == codes.VISIBILITY_SYSTEM}


VISIBILITY_COLUMNS = ("masked", "hidden_from_patient", "hidden_from_representatives")


def signed_ids(docref: dict) -> list[str]:
    """The DocumentReferences a signature signs (relatesTo signs), by id."""
    return [r["target"]["reference"].rsplit("/", 1)[-1] for r in docref.get("relatesTo", [])
            if isinstance(r, dict) and r.get("code") == "signs"
            and str(r.get("target", {}).get("reference", "")).startswith("DocumentReference/")]


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
