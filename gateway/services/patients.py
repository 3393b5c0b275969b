"""PAM-FR identity feed: create or update a Patient from PID, merge (A40), change an identifier (A47),
and the DMP consents a ZFA segment states. The `prepare_` functions build and validate what a
segment states, before any transaction; the others work inside the caller's unit of work."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from gateway.cda.header import II, PatientInfo
from gateway.fhir.validation import InvalidResource, validate, with_plain_spaces
from gateway.hl7v2.ack import Issue
from gateway.hl7v2.er7 import Message, Segment
from gateway.mapping import codes
from gateway.mapping import document as mapping
from gateway.mapping import hl7v2 as v2
from gateway.mapping.dates import InvalidTime, fhir_range, ts_to_fhir
from gateway.mapping.identity import compact_ins, ins_key_is_valid
from gateway.refusal import Refused
from gateway.storage.repository import StoredResource, UnitOfWork, says_the_same

from .ingest import NAMED_IDENTIFIERS, NamedPatient

# The key under which a patient's consent of each kind is found again (one Consent per kind).
CONSENT_KEY_SYSTEM = v2.ZFA_SYSTEM + ":consent-of-patient:"


class MessageRefused(Refused):
    """A refusal stated in HL7v2 terms: the message is understood but cannot be applied, answered
    AE (or AR) with this issue (an HL7 location and a table 0357 code)."""

    def __init__(self, issue: Issue, ack_code: str = "AE"):
        super().__init__(issue.text, location=issue.location, hl7_code=issue.code, ack_code=ack_code)


def single(message: Message, name: str) -> Segment | None:
    """The `name` segment of a message whose structure holds one (the PID of an ADT or an MDM, an
    A40's MRG): a second one, another patient or another merge, would be ignored, so the message
    is refused."""
    found = message.all(name)
    if len(found) > 1:
        raise MessageRefused(Issue(f"the message has {len(found)} {name} segments where its structure holds one; "
                                   "the others would be ignored", f"{name}^2", "100"))
    return found[0] if found else None


@dataclass
class Applied:
    produced: list[str] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    status: str = "processed"


def identifier_keys(ids: list[II]) -> list[tuple[str, str]]:
    return [(i["system"], i["value"]) for i in mapping.patient_identifiers(ids)]


def checked_ids(segment: Segment, field_number: int) -> list[II]:
    """The identifiers of PID-3 / MRG-1, refusing an INS whose key is wrong."""
    ids = []
    for ii in v2.cx_ids(segment, field_number):
        if ii.root in codes.INS_OIDS:
            value = compact_ins(ii.extension or "")
            if not ins_key_is_valid(value):
                raise MessageRefused(Issue(
                    "the INS is not valid: 15 characters whose last two are 97 - (first 13 mod 97)",
                    f"{segment.name}^1^{field_number}", "102"))
            ii = II(ii.root, value)
        ids.append(ii)
    return ids


def find_patient(uow: UnitOfWork, ids: list[II]) -> str | None:
    """The record of the patient these identifiers name, once no merge of it is running. They are
    looked up in one statement: those not found (an IPP the gateway has not met) are claimed for the
    patient next, without a look-up of their own."""
    keys = identifier_keys(ids)
    uow.look_up_identifiers([("Patient", system, value) for system, value in keys])
    for system, value in keys:
        found = uow.find_by_identifier("Patient", system, value)
        if found:
            return uow.patient_record(found)
    return None


def named_patient(uow: UnitOfWork, ids: list[II]) -> NamedPatient:
    """The patient an input names by these identifiers, read from it as they were written
    (unchecked: the input may have been refused; an INS compacted, as `identifier_keys` gives
    it): their record if they are known, else the identifiers."""
    ids = ids[:NAMED_IDENTIFIERS]
    record = find_patient(uow, ids)
    return NamedPatient(record) if record else NamedPatient(identifiers=named_identifiers(ids))


def named_identifiers(ids: list[II]) -> tuple[str, ...]:
    """The identifiers an input names a patient by (`system|value`), its first NAMED_IDENTIFIERS."""
    return tuple(f"{system}|{value}" for system, value in identifier_keys(ids[:NAMED_IDENTIFIERS]))


def valid_from_message(resource: dict, location: str) -> dict:
    """What the gateway built from a message, its spaces plain, or the message refused at `location`."""
    resource = with_plain_spaces(resource)
    try:
        validate(resource)
    except InvalidResource as exc:
        raise MessageRefused(Issue(f"the {exc.res_type} built from the message is not valid FHIR: {exc}",
                                   location, "102")) from None
    return resource


def _claim_all(uow: UnitOfWork, patient_id: str, identifiers: list[dict], location: str) -> None:
    for identifier in identifiers:
        if identifier.get("use") == "old":
            continue
        owner = uow.find_by_identifier("Patient", identifier["system"], identifier["value"])
        if owner and owner != patient_id:
            raise MessageRefused(Issue(
                f"identifier {identifier['system']}|{identifier['value']} belongs to another patient; "
                "merge the two patients (A40) first", location, "205"))
        uow.claim_identifier("Patient", identifier["system"], identifier["value"], patient_id)


@dataclass(frozen=True)
class PreparedPatient:
    """A PID read, mapped and validated before any transaction: its identifiers, and the Patient it
    states, whose id the unit of work gives it (the one its identifiers find, or a new one)."""
    ids: list[II]
    resource: dict


def prepare_patient(pid: Segment) -> PreparedPatient:
    """The identity a PID states, refused here if it is wrong: no write lock is held for it."""
    ids = checked_ids(pid, 3)
    if not ids:
        raise MessageRefused(Issue("PID-3 has no identifier with an assigning authority", "PID^1^3", "101"))
    info = dataclasses.replace(v2.patient_info(pid), ids=ids)
    check_birth_date(info)
    _check_death(pid, info)
    return PreparedPatient(ids, valid_from_message(mapping.patient_resource(info, mapping.UNSET_ID), "PID^1"))


def check_birth_date(info: PatientInfo) -> None:
    if info.birth_time:
        try:
            ts_to_fhir(info.birth_time)
        except InvalidTime:
            raise MessageRefused(Issue("PID-7 (birth date) is not a valid date (YYYY[MM[DD]])", "PID^1^7",
                                       "102")) from None


def _check_death(pid: Segment, info: PatientInfo) -> None:
    """PID-29 and PID-30 say one thing: a death date, a death indicator of table 0136, not a death
    date beside an indicator N."""
    if pid.get(30).strip() and info.deceased is None:
        raise MessageRefused(Issue(f"PID-30 (patient death indicator) is Y or N (HL7 table 0136), not "
                                   f"{pid.get(30).strip()[:20]!r}", "PID^1^30", "103"))
    if info.death_time:
        try:
            ts_to_fhir(info.death_time)
        except InvalidTime:
            raise MessageRefused(Issue("PID-29 (patient death date and time) is not a valid HL7 time "
                                       "(YYYYMMDD[HHMM[SS]][+ZZZZ])", "PID^1^29", "102")) from None
        if info.deceased is False:
            raise MessageRefused(Issue("PID-29 gives a death date and PID-30 says the patient is not deceased",
                                       "PID^1^30", "103"))


def upsert_patient(uow: UnitOfWork, prepared: PreparedPatient, applied: Applied) -> str:
    """The patient the prepared PID names, created or updated with the identity it carries.

    Identifiers known from earlier messages or documents and absent from this PID are kept."""
    patient_id = find_patient(uow, prepared.ids)
    previous = _stored(uow, "Patient", patient_id)
    resource = _keeping(prepared, patient_id or uow.new_id(), previous)
    if previous is not None and not says_the_same(resource, previous):
        # The new version keeps what the current one holds: made again from it once it is locked
        # (until the unit commits), in case another message for the patient wrote it meanwhile.
        # Two at once each kept its own identifiers, and the second dropped the first one's. A
        # message that changes nothing locks nothing.
        previous = _stored(uow, "Patient", patient_id, for_update=True)
        resource = _keeping(prepared, patient_id, previous)
    _claim_all(uow, resource["id"], resource["identifier"], "PID^1^3")
    if not says_the_same(resource, previous):
        uow.save(resource, patient_id=resource["id"])
        applied.produced.append(f"Patient/{resource['id']}")
    return resource["id"]


def _keeping(prepared: PreparedPatient, patient_id: str, previous: dict | None) -> dict:
    """The Patient a PID states, with what the stored version holds and the PID does not say: the
    identifiers known from earlier messages or documents, a merge's link and active."""
    # A copy: a unit of work run again (a concurrent claim) starts from the prepared Patient.
    resource = {**prepared.resource, "id": patient_id, "identifier": list(prepared.resource["identifier"])}
    if previous is not None:
        # What is added was validated as part of the stored version.
        sent = {(i["system"], i["value"]) for i in resource["identifier"]}
        resource["identifier"] += [i for i in previous.get("identifier", []) if (i["system"], i["value"]) not in sent]
        for kept in ("link", "active"):
            if kept in previous:
                resource[kept] = previous[kept]
        # A death a PID does not mention (PID-29 and PID-30 empty: not said) stays as recorded.
        if not {"deceasedBoolean", "deceasedDateTime"} & resource.keys():
            resource.update((name, previous[name]) for name in ("deceasedBoolean", "deceasedDateTime")
                            if name in previous)
    return resource


def _stored(uow: UnitOfWork, res_type: str, res_id: str | None, *, for_update: bool = False) -> dict | None:
    """The current version of a resource, unless there is none or it was deleted; `for_update`:
    locked until the unit commits."""
    current = uow.current(res_type, res_id, for_update=for_update) if res_id else None
    return current.json() if current is not None and not current.deleted else None


# ZFA-6 and ZFA-7: the patient's oppositions to break-the-glass and to the SAMU regulator's
# access, usage X in PAM-FR 2.11 and not read (the patient records them as Consents).
UNREAD_OPPOSITIONS = {6: "break-the-glass access", 7: "the SAMU regulator's access"}


def unread_oppositions(zfas: list[Segment]) -> list[Issue]:
    """A warning for each opposition a ZFA states that the gateway does not read: a feed of an
    earlier PAM-FR that sent one got AA and nothing told it that the opposition was not recorded."""
    return [Issue(f"ZFA-{number} (the patient's opposition to {what}) is not read (usage X in PAM-FR 2.11): the "
                  "opposition is not recorded; the patient records it in their decisions", f"ZFA^{index}^{number}",
                  "0", "W")
            for index, zfa in enumerate(zfas, start=1) for number, what in UNREAD_OPPOSITIONS.items()
            if zfa.get(number).upper() == "Y"]


def prepare_consents(zfa: Segment) -> dict[str, dict]:
    """The Consents a ZFA states, by kind, validated before any transaction; the unit of work
    gives each its id and its patient. A value the gateway does not know is refused: it was taken
    for "not collected", and an opposition spelt otherwise left the record open."""
    for kind, (value_field, *_) in v2.CONSENT_KINDS.items():
        value = zfa.get(value_field)
        if value.upper() not in v2.CONSENT_VALUES and value.upper() not in ("NA", ""):
            raise MessageRefused(Issue(f"ZFA-{value_field} ({kind}) is '{value}': one of "
                                       f"{', '.join(v2.CONSENT_VALUES)} or NA (not collected)",
                                       f"ZFA^1^{value_field}", "103"))
    stated = v2.consents(zfa, f"Patient/{mapping.UNSET_ID}")
    return {kind: valid_from_message(consent, "ZFA^1") for kind, consent in stated.items()}


def record_consents(uow: UnitOfWork, prepared: dict[str, dict], patient_id: str, applied: Applied,
                    zfa_index: int) -> None:
    """One Consent per kind and patient, updated in place as new ZFA arrive (`zfa_index`: the
    message's ZFA segment that states them, from 1).

    A Consent the patient changed since a feed wrote it (their app lifted an opposition, or made
    one) is their decision: a ZFA collected before it (ZFA-12 or ZFA-10, else ZFA-2) does not undo
    it, and the ACK warns that it was not applied. A hospital's next message repeats the ZFA it
    collected at admission, and it silently reclosed a record the patient had opened, or reopened
    one the patient had closed. A kind the ZFA did not collect (NA, or nothing) leaves what was
    collected before as it was (`_not_collected`)."""
    uow.look_up_identifiers([("Consent", CONSENT_KEY_SYSTEM + kind, patient_id) for kind in prepared])
    for kind, stated in prepared.items():
        key_system = CONSENT_KEY_SYSTEM + kind
        consent_id = uow.find_by_identifier("Consent", key_system, patient_id)
        current = uow.current("Consent", consent_id) if consent_id else None
        stored = current.json() if current is not None and not current.deleted else None
        if stored is not None and _decided_since(stored, current.last_updated, stated):
            field = v2.CONSENT_KINDS[kind][0]
            applied.issues.append(Issue(
                f"ZFA-{field} ({kind}) was collected before the patient's own decision of {current.last_updated[:16]} "
                "UTC, which stays in force: it is not applied", f"ZFA^{zfa_index}^{field}", "0", "W"))
            continue
        if stored is not None and "type" in stored.get("provision", {}) and "type" not in stated["provision"]:
            stated = _not_collected(stored, stated)
        if consent_id is None:
            consent_id = uow.new_id()
            uow.claim_identifier("Consent", key_system, patient_id, consent_id)
        consent = {**stated, "id": consent_id, "patient": {"reference": f"Patient/{patient_id}"}}
        if not says_the_same(consent, stored):
            uow.save(consent, patient_id=patient_id)
            applied.produced.append(f"Consent/{consent_id}")


def _not_collected(stored: dict, stated: dict) -> dict:
    """The stored Consent of a kind, a decision, as a ZFA that did not collect that kind leaves it:
    what the ZFA says of the record itself (its status in ZFA-1, its closing date in ZFA-3) is
    applied, the decision stays. A later admission where nobody asked (NA) lifted the patient's
    opposition to consultation, and professionals read the record again."""
    kept = {key: value for key, value in stored.items() if key != "meta"}
    if "extension" in stated:   # ZFA-1: the record's status
        kept["extension"] = [e for e in stored.get("extension", []) if e.get("url") != v2.RECORD_STATUS_URL] \
            + stated["extension"]
        kept["status"] = "inactive" if stated["status"] == "inactive" else "active"
    if "period" in stated["provision"]:   # ZFA-3: the record's closing date
        kept["provision"] = {**stored["provision"], "period": stated["provision"]["period"]}
    return kept


def _decided_since(stored: dict, decided: str, stated: dict) -> bool:
    """Whether the stored Consent is the patient's decision (a feed's keeps the ZFA category; the
    patient's update gives it the gateway's kind) made after the ZFA `stated` was collected. A ZFA
    without any date, or known only to a day the patient decided in, is not after it."""
    collected = stated.get("dateTime")
    return not _by_a_feed(stored) and (collected is None or fhir_range(collected)[0] <= fhir_range(decided)[0])


def _by_a_feed(consent: dict) -> bool:
    """Whether a ZFA wrote this Consent's current version (the patient's update of it gives it the
    gateway's kind for category)."""
    return any(coding.get("system") == v2.ZFA_SYSTEM for category in consent.get("category", [])
               for coding in category.get("coding", []))


def _standing(stored: StoredResource) -> tuple[bool, str]:
    """How a Consent of a kind ranks against another one of the same person: a decision before
    none (NA, not collected), then the later one, a feed's as of its collection, a patient's as
    of when they made it."""
    consent = stored.json()
    when = consent.get("dateTime") if _by_a_feed(consent) else stored.last_updated
    return "type" in consent.get("provision", {}), fhir_range(when)[0] if when else ""


def feeding_consent(uow: UnitOfWork, patient_id: str) -> dict | None:
    consent_id = uow.find_by_identifier("Consent", CONSENT_KEY_SYSTEM + "alimentation", patient_id)
    return uow.current("Consent", consent_id).json() if consent_id else None


def merge(uow: UnitOfWork, pid: Segment, mrg: Segment, applied: Applied) -> None:
    """A40: the patient MRG-1 names is merged into the one PID-3 names.

    Its documents, binaries, consents and lists move to the survivor, written anew there; its
    identifiers now find the survivor (kept on it with use `old` where the survivor has its own of
    the same system); it stays readable, inactive, with a `replaced-by` link. Its deleted resources
    stay deleted, and with its trail they join the survivor's record as they are."""
    merged_ids = checked_ids(mrg, 1)
    if not merged_ids:
        raise MessageRefused(Issue("MRG-1 has no identifier with an assigning authority", "MRG^1^1", "101"))
    merged_id = find_patient(uow, merged_ids)
    survivor_id = upsert_patient(uow, prepare_patient(pid), applied)
    if merged_id is None:
        applied.issues.append(Issue("the merged patient (MRG-1) is unknown here: nothing to move",
                                    "MRG^1^1", "204", "W"))
        return
    if merged_id == survivor_id:
        return
    uow.merging(merged_id)
    survivor = uow.current("Patient", survivor_id, for_update=True).json()
    merged = uow.current("Patient", merged_id, for_update=True).json()
    own_systems = {i["system"] for i in survivor["identifier"]}
    present = {(i["system"], i["value"]) for i in survivor["identifier"]}
    for identifier in merged.get("identifier", []):
        if (identifier["system"], identifier["value"]) in present:
            continue
        moved = dict(identifier)
        if identifier["system"] in own_systems:
            moved["use"] = "old"
        survivor["identifier"].append(moved)
    survivor.setdefault("link", []).append({"other": {"reference": f"Patient/{merged_id}"}, "type": "replaces"})
    uow.move_identifiers("Patient", merged_id, survivor_id)
    ended = {consent_id for kind in v2.CONSENT_KINDS
             if (consent_id := _merge_consents(uow, kind, merged_id, survivor_id)) is not None}
    uow.save(valid_from_message(survivor, "PID^1"), patient_id=survivor_id)
    merged["active"] = False
    merged["link"] = [{"other": {"reference": f"Patient/{survivor_id}"}, "type": "replaced-by"}]
    # The same person: read through the survivor's rules, destroyed with the survivor's record.
    uow.save(merged, patient_id=survivor_id)
    applied.produced.append(f"Patient/{merged_id}")
    old_ref, new_ref = json.dumps(f"Patient/{merged_id}"), json.dumps(f"Patient/{survivor_id}")
    for page in uow.live_patient_resources(merged_id):
        for stored in page:
            moved = json.loads(stored.body.replace(old_ref, new_ref))
            if stored.res_id in ended:
                moved["status"] = "inactive"
            uow.save(moved, patient_id=survivor_id, blob_sha256=stored.blob_sha256)
            applied.produced.append(f"{stored.res_type}/{stored.res_id}")
        uow.store_audit_so_far()
    uow.move_rest_of_record(merged_id, survivor_id)


def _merge_consents(uow: UnitOfWork, kind: str, merged_id: str, survivor_id: str) -> str | None:
    """The Consent of this kind that holds for the person once merged (the consent follows the
    person, not the record number): the merged patient's when the survivor has none, else the one
    that ranks first (`_standing`). The other ends inactive; returns its id when it is the merged
    patient's, which the merge writes anew. Both stayed in force, and an older opposition of the
    merged record kept the record closed whatever the survivor's and every later ZFA said."""
    system = CONSENT_KEY_SYSTEM + kind
    merged_consent = uow.find_by_identifier("Consent", system, merged_id)
    if merged_consent is None:
        return None
    uow.release_identifier("Consent", system, merged_id)
    own_consent = uow.find_by_identifier("Consent", system, survivor_id)
    if own_consent is None:
        uow.claim_identifier("Consent", system, survivor_id, merged_consent)
        return None
    merged, own = uow.current("Consent", merged_consent), uow.current("Consent", own_consent)
    if _standing(merged) <= _standing(own):
        return merged_consent
    uow.release_identifier("Consent", system, survivor_id)
    uow.claim_identifier("Consent", system, survivor_id, merged_consent)
    uow.save({**{k: v for k, v in own.json().items() if k != "meta"}, "status": "inactive"}, patient_id=survivor_id)
    return None


def change_identifier(uow: UnitOfWork, pid: Segment, mrg: Segment, applied: Applied) -> None:
    """A47: the identifier in MRG-1 was wrong; PID-3 carries the right one, of the same authority."""
    old_ids = checked_ids(mrg, 1)
    new_ids = checked_ids(pid, 3)
    patient_id = find_patient(uow, old_ids)
    if patient_id is None:
        raise MessageRefused(Issue("no patient has the identifier MRG-1 names", "MRG^1^1", "204"))
    patient = uow.current("Patient", patient_id, for_update=True).json()
    old_keys = set(identifier_keys(old_ids))
    new_identifiers = mapping.patient_identifiers(new_ids)
    changed_systems = {s for s, _ in old_keys}
    for system, value in old_keys:
        uow.release_identifier("Patient", system, value)
    patient["identifier"] = [i for i in patient["identifier"] if (i["system"], i["value"]) not in old_keys]
    present = {(i["system"], i["value"]) for i in patient["identifier"]}
    patient["identifier"] += [i for i in new_identifiers
                              if i["system"] in changed_systems and (i["system"], i["value"]) not in present]
    _claim_all(uow, patient_id, patient["identifier"], "PID^1^3")
    uow.save(valid_from_message(patient, "PID^1"), patient_id=patient_id)
    applied.produced.append(f"Patient/{patient_id}")

