"""CI-SIS "transmission de documents CDA en HL7v2": MDM^T02/T10/T04 and ORU^R01 (OBX-11 F/C/D).

The CDA in OBX-5 goes through the same pipeline as a direct upload (read, rules, mapping,
validation); the MetaDMPMSS OBX add visibility labels; the PRT "send by" becomes the source of a
SubmissionSet List naming the documents the message registered."""
from __future__ import annotations

import binascii
import dataclasses
from dataclasses import dataclass, field

from gateway import base64text
from gateway.refusal import Refused
from gateway.cda.header import II
from gateway.hl7v2.ack import Issue
from gateway.hl7v2.er7 import Message, Segment
from gateway.mapping import codes
from gateway.mapping import document as mapping
from gateway.mapping import hl7v2 as v2
from gateway.mapping import submission
from gateway.mapping.identity import contradicted_traits
from gateway.storage.repository import Base64InRaw, StoredResource, UnitOfWork

from gateway.access.rules import visibility_codes
from gateway.access.writes import Producers

from .documents import ParsedCda, delete_document, header_producers, person_producers, read_cda, register_document
from .patients import (Applied, MessageRefused, check_birth_date, checked_ids, find_patient, identifier_keys, single,
                       valid_from_message)

# sourceId of a sending system known only by its HL7v2 names (MSH-3|MSH-4).
SENDER_SYSTEM = "urn:dmp-gateway:hl7v2-sender"
# What each message asks for: register a new document, replace one, delete one.
MDM_ACTIONS = {"T02": "new", "T10": "replace", "T04": "delete"}
ORU_ACTIONS = {"F": "new", "C": "replace", "D": "delete"}


# The MetaDMPMSS flags asking what the volet's GESTIONNAIRE does beside the shared record: this
# gateway is the shared record, and sends nothing by MSSanté nor any business acknowledgement (ZAM).
# Each asked is told in the ACK: kept and ignored in silence, a letter asked to be mailed to the
# attending physician could be taken for sent, and a ZAM Z01 waited for that never comes.
NOT_DONE_HERE = {
    "DESTMSSANTEPS": "this gateway sends no document by MSSanté: the professionals the PRT segments name (RCT) "
                     "were not sent it",
    "DESTMSSANTEPAT": "this gateway sends no document by MSSanté: the patient was not sent it",
    "ACK_RECEPTION": "no business acknowledgement (ZAM, event Z01) follows: this gateway is the shared record, and "
                     "this ACK, sent once the message's result is stored, acknowledges its reception",
    "ACK_LECTURE_MSS": "no MSSanté reading acknowledgement (ZAM, event Z03) follows: this gateway sends nothing "
                       "by MSSanté",
    "ACK_LECTURE": "no MSSanté reading acknowledgement (ZAM, event Z03) follows: this gateway sends nothing by MSSanté",
}


@dataclass
class Plan:
    """What a document message asks for, read and checked before any transaction: the CDA of each
    OBX parsed, its rules checked, its patient compared with PID-3."""
    message: Message
    pid_ids: list[II]
    pid_patient: dict                              # the Patient PID states: its sex and birth date
    visibility: list[str] = field(default_factory=list)
    skipped: bool = False                          # DESTDMP is N: nothing for the shared record
    deleted_id: II | None = None                   # MDM^T04: the document TXA-12 names
    targets: list[tuple[str, str, ParsedCda]] = field(default_factory=list)   # (OBX location, action, CDA)
    not_done: list[Issue] = field(default_factory=list)   # what its flags ask that no one does here (NOT_DONE_HERE)
    lifted: frozenset[str] = frozenset()           # MODIF_CONF_CODE Y: labels a replacement lifts
    lifted_at: str = ""                            # where MODIF_CONF_CODE is
    submission_set: dict | None = None             # validated, under stand-in ids (submission.linked)


def read(message: Message, max_bytes: int) -> Plan:
    code, event, _ = message.message_type
    # ORU^R01 repeats its patient group; each document is compared with the first PID-3.
    pid = single(message, "PID") if code == "MDM" else message.first("PID")
    if pid is None:
        raise MessageRefused(Issue("the message has no PID segment", "PID", "100"))
    info = v2.patient_info(pid)
    check_birth_date(info)
    # Its sex and birth date, compared with the CDA's; a document message does not read the death
    # of PID-29/PID-30, the identity feed's (a PID-29 no time was an internal error, found by the fuzz).
    stated = mapping.patient_resource(dataclasses.replace(info, death_time=None, deceased=None), "pid")
    plan = Plan(message, checked_ids(pid, 3), stated)
    observations = message.all("OBX")
    documents = [(index, obx) for index, obx in enumerate(observations, start=1)
                 if obx.get(2) == "ED" and not v2.is_metadata(obx)]
    for index, obx in enumerate(observations, start=1):
        if not v2.is_metadata(obx):
            continue
        flag, answer = obx.get(3, 1).upper(), obx.get(5, 1).upper()
        # A flag the gateway applies answers Y or N (the CI-SIS's expandedYes-NoIndicator), or is not
        # given. Another answer (O for oui, 1, UNK) was taken for N: a document to be kept from the
        # patient was shown.
        if flag in v2.APPLIED_FLAGS and answer not in ("Y", "N", ""):
            raise MessageRefused(Issue(f"the flag {flag} is answered '{obx.get(5, 1)}' in OBX-5: Y or N "
                                       "(expandedYes-NoIndicator)", f"OBX^{index}^5", "103"))
        if flag in NOT_DONE_HERE and answer == "Y":
            plan.not_done.append(Issue(f"{flag} is Y: {NOT_DONE_HERE[flag]}", f"OBX^{index}^5", "0", "W"))
        if flag in v2.MODIF_CONF_CODES:
            plan.lifted_at = f"OBX^{index}^5"
    flags = v2.document_flags([obx for obx in observations if v2.is_metadata(obx)])
    if not flags.to_dmp:
        plan.skipped = True
        return plan
    plan.visibility = flags.visibility
    plan.lifted = flags.lifted

    if code == "MDM":
        txa = single(message, "TXA")
        action = MDM_ACTIONS[event]
        if action == "delete":
            if txa is None or not txa.get(12):
                raise MessageRefused(Issue("MDM^T04 names the document to delete in TXA-12", "TXA^1^12", "101"))
            plan.deleted_id = _document_id(txa, 12)
            return plan
        if not documents:
            raise MessageRefused(Issue("no OBX carries the CDA document (OBX-2 ED)", "OBX", "101"))
        targets = [(documents[0], action, txa)]
    else:
        if not documents:
            raise MessageRefused(Issue("no OBX carries the CDA document (OBX-2 ED)", "OBX", "101"))
        targets = []
        for doc in documents:
            status = doc[1].get(11).upper()
            if status not in ORU_ACTIONS:
                raise MessageRefused(Issue(f"OBX-11 is '{status}'; F (new), C (replacement) or D (deletion) "
                                           "are expected", f"OBX^{doc[0]}^11", "103"))
            targets.append((doc, ORU_ACTIONS[status], None))

    for (index, obx), action, txa in targets:
        location = f"OBX^{index}^5"
        parsed = _cda(obx, location, max_bytes)
        _same_patient(plan, parsed)
        named = _document_id(txa, 12) if txa is not None and action != "delete" and txa.get(12) else None
        if named and mapping.identifier_key(named) != mapping.identifier_key(parsed.header.unique_id):
            raise MessageRefused(Issue(f"TXA-12 ({mapping.document_uri(named)}) is not the id of the CDA in OBX-5 "
                                       f"({mapping.document_uri(parsed.header.unique_id)})", "TXA^1^12", "207"))
        if action == "replace":
            parsed = _with_parent(parsed, txa)
        if action != "delete":
            try:
                parsed.checked_reference(plan.visibility)   # here, not under the write lock
            except Refused as refusal:
                raise refusal.at(location) from None
        plan.targets.append((location, action, parsed))
    registering = sum(action != "delete" for _, action, _ in plan.targets)
    if registering:
        plan.submission_set = _unlinked_submission_set(message, registering)
    return plan


def apply(uow: UnitOfWork, plan: Plan, applied: Applied, base_url: str) -> None:
    message = plan.message
    applied.issues += plan.not_done
    if plan.skipped:
        applied.status = "skipped"
        applied.issues.append(Issue("DESTDMP is N: the document is not meant for the shared record and "
                                    "was not registered", "OBX", "0", "W"))
        return
    if plan.deleted_id is not None:
        _delete(uow, plan.deleted_id, plan.pid_ids, applied, "TXA^1^12", _named(message))
        return

    registered: list[StoredResource] = []
    for location, action, parsed in plan.targets:
        if action == "delete":
            named = _named(message)
            header = header_producers(parsed.header)
            _delete(uow, parsed.header.unique_id, plan.pid_ids, applied, location,
                    Producers(named.people | header.people, named.organizations | header.organizations))
            continue
        lift = plan.lifted if action == "replace" else frozenset()
        try:
            result = register_document(uow, base_url, parsed, visibility=plan.visibility, lift=lift)
        except Refused as refusal:
            raise refusal.at(location) from None
        kept = sorted(lift & visibility_codes(result.document_reference.json()))
        if kept and result.created:
            applied.issues.append(Issue(
                f"MODIF_CONF_CODE is Y and {', '.join(kept)} answered N, but the new version keeps "
                f"{'it' if len(kept) == 1 else 'them'} from the one it replaces: a mask the patient set, and a "
                "document's hiding from their legal representatives, are the patient's to lift", plan.lifted_at, "0",
                "W"))
        applied.produced += [p for p in result.produced if p not in applied.produced]
        if result.created:
            registered.append(result.document_reference)
        else:
            applied.issues.append(Issue("this document is already registered: nothing new stored",
                                        location, "0", "I"))
    if registered:
        applied.produced.append(_submission_set(uow, registered, plan.submission_set))
    elif any(action != "delete" for _, action, _ in plan.targets):
        applied.status = "duplicate"  # every document of the message was already registered


def _document_id(txa: Segment, number: int) -> II:
    """The document TXA-12 or TXA-13 names (an EI), as the CI-SIS volet fills it from the CDA's id:
    an id with an extension gives the extension in component 1 and the root in component 3 (ISO);
    a root alone, component 1. Component 1 alone was read: an MDM^T02 whose CDA has an extension,
    filled so, was refused (AE 207, "TXA-12 is not the id of the CDA"), and its T04 found nothing."""
    root = txa.get(number, 3)
    return II(root, txa.get(number, 1)) if root else II(txa.get(number, 1))


def _document_bytes(obx: Segment, location: str) -> bytes:
    """OBX-5's data, decoded: base64 from the received bytes that carried it (er7.LongRuns). Its
    final padding may be left out: five of the ANS's own example messages (hl7V2-exemples, CR-IMG
    and CR-BIO) leave it out, and each was refused "not valid base64"."""
    encoding = obx.get(5, 4).upper()
    if encoding == "BASE64":
        try:
            return base64text.decode(obx.received_component(5, 5), padded=False)
        except (binascii.Error, ValueError):
            raise MessageRefused(Issue("OBX-5 declares Base64 but its data is not valid base64",
                                       location, "102")) from None
    if encoding in ("A", ""):
        return obx.unescape(obx.raw_component(5, 5)).encode("utf-8")
    raise MessageRefused(Issue(f"OBX-5 encoding '{encoding}' is not supported (Base64 or A)", location, "103"))


def _cda(obx: Segment, location: str, max_bytes: int) -> ParsedCda:
    data = _document_bytes(obx, location)
    try:
        parsed = read_cda(data, max_bytes)
    except Refused as refusal:
        raise MessageRefused(Issue(f"the CDA in OBX-5 is refused: {refusal.reason}", location, "207")) from None
    found = obx.received_run(5, 5) if obx.get(5, 4).upper() == "BASE64" else None
    if found is not None:
        # The raw copy of the message holds the document: its Binary reads it there.
        runs, (begin, end) = found
        parsed.in_raw = Base64InRaw(runs.received_sha256(), len(runs.received), begin, end - begin)
    return parsed


def _same_patient(plan: Plan, parsed: ParsedCda) -> None:
    """PID-3 must name the patient of the CDA recordTarget: same INS when both carry one, at least
    one identifier in common, and no sex or birth date that contradicts the CDA's."""
    pid_keys = set(identifier_keys(plan.pid_ids))
    cda_keys = set(identifier_keys(parsed.header.patient.ids))
    pid_ins = {value for system, value in pid_keys if system.removeprefix("urn:oid:") in codes.INS_OIDS}
    if pid_ins and parsed.ins not in pid_ins:
        raise MessageRefused(Issue("the INS in PID-3 is not the INS of the CDA recordTarget", "PID^1^3", "207"))
    if not pid_keys & cda_keys:
        raise MessageRefused(Issue("none of the PID-3 identifiers is an identifier of the CDA recordTarget",
                                   "PID^1^3", "207"))
    contradicted = contradicted_traits(plan.pid_patient, mapping.patient_resource(parsed.header.patient, "cda"))
    if contradicted:
        field = "PID^1^8" if contradicted == ["sex"] else "PID^1^7"
        raise MessageRefused(Issue(f"the {' and '.join(contradicted)} of PID-7/PID-8 and of the CDA recordTarget "
                                   "differ: whose document is it?", field, "207"))


def _with_parent(parsed: ParsedCda, txa: Segment | None) -> ParsedCda:
    """A replacement names its parent in the CDA (relatedDocument RPLC) or, for MDM^T10, in TXA-13."""
    if parsed.header.replaced:
        return parsed
    if txa is not None and txa.get(13):
        return parsed.replacing([_document_id(txa, 13)])
    raise MessageRefused(Issue("a replacement must name the replaced document (CDA relatedDocument RPLC "
                               "or TXA-13)", "TXA^1^13", "101"))


def _named(message: Message) -> Producers:
    """Who a message says it comes from: the PRT "send by" and its organisation."""
    sender = v2.sender_of(message.all("PRT"))
    return person_producers([sender]) if sender is not None else Producers()


def _delete(uow: UnitOfWork, unique_id: II, pid_ids: list[II], applied: Applied, location: str,
            named: Producers) -> None:
    system, value = mapping.identifier_key(unique_id)
    docref_id = uow.find_by_identifier("DocumentReference", system, value)
    current = uow.current("DocumentReference", docref_id) if docref_id else None
    if current is not None and current.deleted and current.patient_id == find_patient(uow, pid_ids):
        applied.issues.append(Issue(f"document {value} was already deleted", location, "0", "I"))
        return
    try:
        stored = uow.document_to_change(docref_id, find_patient(uow, pid_ids), named, location)
    except Refused as refusal:
        raise MessageRefused(Issue(refusal.reason, location, "204" if refusal.status == 422 else "207")) from None
    delete_document(uow, stored)
    applied.produced.append(f"DocumentReference/{stored.res_id}")


def _source_id(message: Message) -> dict:
    """The sending system: MSH-4's universal id when it is an OID, else MSH-3 and MSH-4 as sent."""
    if message.msh.get(4, 3).upper() == "ISO" and message.msh.get(4, 2):
        return {"system": "urn:ietf:rfc:3986", "value": f"urn:oid:{message.msh.get(4, 2)}"}
    return {"system": SENDER_SYSTEM, "value": message.sender}


def _unlinked_submission_set(message: Message, documents: int) -> dict:
    """The SubmissionSet of the message, validated: the documents it registers, sent by whom (the
    PRT "send by", else the sending application)."""
    sender = v2.sender_of(message.all("PRT"))
    source = submission.person_source(sender) if sender is not None else \
        [submission.device_source(message.msh.get(3, 1) or message.sender)]
    return valid_from_message(submission.unlinked_submission_set(
        documents, title="Transmission HL7v2", source=source, source_id=_source_id(message)), "MSH^1")


def _submission_set(uow: UnitOfWork, documents: list[StoredResource], unlinked: dict) -> str:
    list_id = uow.new_id()
    resource = submission.linked(unlinked, list_id, documents[0].json()["subject"],
                                 [document.reference for document in documents])
    uow.save(resource, patient_id=documents[0].patient_id)
    return f"List/{list_id}"
