"""One CDA document: read (parse, header, rules) and its DocumentReference (and, for a CDA sent
alone, the SubmissionSet of that one document) mapped and validated outside any transaction, under
stand-in ids; then, in the unit of work, its patient, authors and custodian found or created, and
the DocumentReference linked to them and persisted with its Binary (and that SubmissionSet).

Used by POST /cda and `gateway ingest` (through the ingest pipeline), by ITI-65 and by the HL7v2
document messages (inside theirs).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from gateway.refusal import Refused
from gateway.cda.header import CD, II, CdaHeader, Person, extract_header, named_patient_ids
from gateway.cda.parser import parse_cda
from gateway.access import AccessContext
from gateway.access.rules import binary_ids, with_replaced_masking
from gateway.access.writes import Producers, Write, changeable_labels, finess
from gateway.fhir.validation import InvalidResource, validate, with_plain_spaces
from gateway.mapping import codes
from gateway.mapping import document as mapping
from gateway.mapping import submission
from gateway.mapping.hl7v2 import feeding_refused
from gateway.mapping.identity import contradicted_traits, identifier_value
from gateway.mapping.rules import check_document
from gateway.storage.repository import Base64InRaw, DuplicateIdentifier, Repository, StoredResource, UnitOfWork

from .patients import feeding_consent, named_patient
from .ingest import Received, Steps, Written, ingesting, run

CDA_CONTENT_TYPES = {"application/xml", "text/xml", "application/hl7-cda+xml"}


@dataclass
class Ingested:
    created: bool                   # False: the same document was already there
    document_reference: StoredResource
    produced: list[str] = field(default_factory=list)


@dataclass
class ParsedCda:
    data: bytes
    header: CdaHeader
    ins: str
    digests: mapping.Digests
    # Where the raw copy of the message that carried it holds it in base64 (document_messages).
    in_raw: Base64InRaw | None = None
    # The DocumentReference it gives, validated, by visibility (checked_reference).
    _checked: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def checked_reference(self, visibility: list[str] = ()) -> dict:
        """The DocumentReference this document gives, validated, under stand-in ids and links that
        the unit of work replaces (mapping.linked): the services ask for it before their transaction,
        so that neither the mapping nor the validation holds SQLite's write lock."""
        key = tuple(sorted(set(visibility)))
        if key not in self._checked:
            header = self.header
            attachment = mapping.Attachment(url=mapping.UNSET_ID, content_type=_content_type(header),
                                            size=len(self.data), sha1_base64=self.digests.sha1_base64)
            self._checked[key] = _checked(mapping.document_reference(
                header, mapping.UNSET_ID, mapping.stand_in_links(header), attachment, list(key)))
        return self._checked[key]

    def replacing(self, parents: list[II]) -> "ParsedCda":
        """This document as the new version of `parents`, which its header does not name (an
        MDM^T10's TXA-13, an ITI-65 submission's relatesTo). The DocumentReferences validated for
        it stand: their one difference, relatesTo, is set from the links the unit of work resolves
        (mapping.linked). A submission's parent is found only in its unit of work: without them,
        the document would be validated again there, under the write lock."""
        copy = dataclasses.replace(self, header=dataclasses.replace(self.header, replaced=parents))
        copy._checked.update(self._checked)
        return copy

    @property
    def patient_key(self) -> tuple[str, str]:
        """(system, value) the patient is matched on: the INS, spaces removed."""
        ins_ii = next(ii for ii in self.header.patient.ids
                      if ii.extension and identifier_value(ii.root, ii.extension) == self.ins)
        return f"urn:oid:{ins_ii.root}", self.ins


def read_cda(data: bytes, max_bytes: int, digests: mapping.Digests | None = None) -> ParsedCda:
    """A CDA read: its header, checked by the DMP's rules, and its digests (`digests` when its
    reader computed them already)."""
    root, wrapped = parse_cda(data, max_bytes=max_bytes, whole_texts=False)
    header = extract_header(root, wrapped_in_xslt=wrapped)
    return ParsedCda(data, header, check_document(header), digests or mapping.Digests.of(data))


def ingest_cda(repo: Repository, data: bytes, **options) -> Ingested:
    """One CDA document through the ingest pipeline (`ingesting_cda`), alone."""
    return run(repo, ingesting_cda(repo, data, **options))


def ingesting_cda(repo: Repository, data: bytes, *, max_bytes: int, channel: str = "cda",
                  content_type: str | None = None, sender: str | None = None, raw_id: int | None = None,
                  size: int | None = None) -> Steps[Ingested]:
    """`raw_id`: the raw copy already kept, for an operator's reprocessing. `size`: the document's,
    when it is over `max_bytes` and `data` is only its first bytes: it is not read whole, and its
    raw copy keeps those bytes, refused, as an oversized message's does."""
    def write(uow: UnitOfWork, prepared: tuple[ParsedCda, dict]) -> Written[Ingested]:
        parsed, unlinked = prepared
        result = register_document(uow, repo.base_url, parsed)
        if result.created:
            result.produced.append(_submission_set(uow, result.document_reference, unlinked))
        return Written(result, "processed" if result.created else "duplicate", result.produced)

    # The document is the body: hashed once, for its raw copy and for its Binary.
    digests = mapping.Digests.of(data)

    def prepare() -> tuple[ParsedCda, dict]:
        if size is not None and size > max_bytes:
            raise Refused(f"document is {size} bytes, above the limit of {max_bytes} bytes; only its first "
                          f"{len(data)} bytes were kept", location="/", status=413, code="too-costly")
        parsed = read_cda(data, max_bytes, digests)
        parsed.checked_reference()
        return parsed, _unlinked_submission_set(repo.access)

    received = Received(channel, data, content_type, sender, sha256=digests.sha256)
    _, written = yield from ingesting(received, Write.FEED, prepare, write, raw_id=raw_id,
                                      named_patient=lambda uow: named_patient(uow, named_patient_ids(data)))
    return written.value


def _unlinked_submission_set(access: AccessContext) -> dict:
    """The SubmissionSet of a CDA sent alone, validated: one document, sent by the requester, as
    ITI-105's. A document registered so was in no SubmissionSet, where XDS puts each document in the
    one that brought it, and ITI-66 listed the submissions of a record but those."""
    return _checked(submission.unlinked_submission_set(
        1, title="Dépôt d'un document CDA", source=[submission.device_source(access.name or access.subject)],
        source_id={"system": submission.SUBMITTER_SYSTEM, "value": access.subject}))


def _submission_set(uow: UnitOfWork, docref: StoredResource, unlinked: dict) -> str:
    list_id = uow.new_id()
    uow.save(submission.linked(unlinked, list_id, docref.json()["subject"], [docref.reference]),
             patient_id=docref.patient_id)
    return f"List/{list_id}"


def _content_type(header: CdaHeader) -> str:
    return "application/xslt+xml" if header.wrapped_in_xslt else "text/xml"


def _checked(resource: dict) -> dict:
    resource = with_plain_spaces(resource)
    try:
        validate(resource)
    except InvalidResource as exc:
        raise Refused(f"the {exc.res_type} built from the header is not valid FHIR: {exc}",
                              location=CD, code="invariant") from None
    return resource


def refuse_if_deleted(existing: StoredResource, unique_id: str, location: str) -> None:
    """A document sent again after its producer deleted it is not registered again under its unique
    id: it was answered as registered already (AA, "nothing new stored"; 200 to ITI-105), and the
    sender took it for shared while no one could read it."""
    if existing.deleted:
        raise Refused(f"the document of unique id {unique_id} was deleted on {existing.last_updated[:10]}: a deleted "
                      "document is not registered again under its unique id; to share it again, send it under a "
                      "new one", location=location, status=409, code="duplicate")


def existing_document(uow: UnitOfWork, parsed: ParsedCda) -> StoredResource | None:
    """The DocumentReference already registered under this unique id, if the bytes are the same."""
    system, value = mapping.identifier_key(parsed.header.unique_id)
    existing_id = uow.find_by_identifier("DocumentReference", system, value)
    if existing_id is None:
        return None
    existing = uow.current("DocumentReference", existing_id)
    refuse_if_deleted(existing, value, f"{CD}/id")
    binary = uow.document_binary(existing)
    if binary is None or binary.blob_sha256 != parsed.digests.sha256:
        raise Refused(
            f"a different document is already registered under unique id {value}; "
            "a new version needs a new id and relatedDocument RPLC",
            location=f"{CD}/id", status=409, code="duplicate",
        )
    return existing


def register_document(uow: UnitOfWork, base_url: str, parsed: ParsedCda, *, visibility: list[str] = (),
                      docref_id: str | None = None, lift: frozenset[str] = frozenset()) -> Ingested:
    """Write the resources of one parsed CDA inside the caller's unit of work. `lift`: the labels
    of the versions it replaces that its sender lifts (MODIF_CONF_CODE), as far as they may."""
    header = parsed.header
    uow.look_up_identifiers(_identifiers_named(parsed))
    existing = existing_document(uow, parsed)
    if existing is not None:
        return Ingested(False, existing, [f"DocumentReference/{existing.res_id}"])

    produced: list[str] = []
    patient_id = _patient(uow, parsed, produced)
    check_record_open(uow, patient_id, f"{CD}/recordTarget")
    # The directory learns the professionals and organisations a document names; the document
    # itself carries its own copy of its authors (mapping.author_role).
    for person in _people(header):
        if person.device is None:   # a device is no professional
            match_practitioner(uow, person, produced)
        if person.organization and mapping.entity_key(person.organization.ids):
            _organization(uow, person.organization, produced)
    custodian = _organization(uow, header.custodian, produced)

    docref_id = docref_id or uow.new_id()
    replaces, replaced = _supersede(uow, header, patient_id, docref_id, produced)
    binary_id = uow.new_id()
    links = mapping.Links(patient=patient_id, custodian=custodian, replaces=replaces)
    docref = mapping.linked(parsed.checked_reference(visibility), docref_id, links,
                            f"{base_url.rstrip('/')}/fhir/Binary/{binary_id}")
    if lift and replaced:   # _supersede checked that the sender may change what it replaces
        lift &= changeable_labels(uow.repository.access, producer=True,
                                   masked_by_patient=uow.masked_by_their_patient([p["id"] for p in replaced]))
    docref = with_replaced_masking(docref, replaced, lift)
    system, value = mapping.identifier_key(header.unique_id)
    if replaced_already(uow, system, value, patient_id):
        docref["status"] = "superseded"
    stored = uow.save(docref, patient_id=patient_id)
    uow.claim_identifier("DocumentReference", system, value, docref_id)
    uow.save_binary(binary_id, docref_id, _content_type(header), parsed.data, parsed.digests.sha256, patient_id,
                    _checked, parsed.in_raw)
    produced += [f"Binary/{binary_id}", f"DocumentReference/{docref_id}"]
    return Ingested(True, stored, produced)


def _people(header: CdaHeader) -> list[Person]:
    """The authors and the legal authenticator a document names."""
    return [*header.authors, *([header.legal_authenticator] if header.legal_authenticator else [])]


def _identifiers_named(parsed: ParsedCda) -> list[tuple[str, str, str]]:
    """The identifiers registering this document looks up (register_document): its own, its
    patient's, those of the professionals and organisations it names, and of the versions it
    replaces."""
    header = parsed.header
    people = _people(header)
    organizations = [*(person.organization for person in people if person.organization),
                     *([header.custodian] if header.custodian else [])]
    patient_ids = mapping.patient_identifiers(header.patient.ids)
    return [("DocumentReference", *mapping.identifier_key(header.unique_id)), ("Patient", *parsed.patient_key),
            *(("Patient", named["system"], named["value"]) for named in patient_ids),
            *(("Practitioner", *key) for person in people
              if person.device is None and (key := mapping.entity_key(person.ids))),
            *(("Organization", *key) for org in organizations if (key := mapping.entity_key(org.ids))),
            *(("DocumentReference", *mapping.identifier_key(parent)) for parent in header.replaced)]


def check_record_open(uow: UnitOfWork, patient_id: str, location: str) -> None:
    """A record takes a new document unless it is closed or its patient opposed feeding it."""
    if uow.record_closed(patient_id):
        raise Refused("the patient's record is closed: it accepts no new document", location=location,
                      status=422, code="business-rule", record=patient_id)
    if feeding_refused(feeding_consent(uow, patient_id)):
        raise Refused("the patient opposed feeding the shared record, or the record is closed (ZFA): "
                      "the document is not registered", location=location, status=422, code="business-rule",
                      record=patient_id)


def check_identity(uow: UnitOfWork, patient_id: str, stated: dict, location: str) -> None:
    """A document's patient is the registered one: the sex and birth date it states for them agree
    with those registered under the identifier that found them. A report about another person
    under a mistyped or wrongly chosen INS was filed in this one's record, read by everyone who
    reads it. The patient's identity is changed by the identity feed (PAM-FR ADT), not by a document."""
    registered = uow.current("Patient", patient_id)
    contradicted = contradicted_traits(registered.json(), stated) if registered and not registered.deleted else []
    if contradicted:
        # The registered values are not told: the sender may not read the record.
        verb = "contradicts" if len(contradicted) == 1 else "contradict"
        raise Refused(f"the {' and '.join(contradicted)} this document states for its patient {verb} the "
                      "identity registered under the same identifier: is it this patient's? Check the patient's "
                      "identity (identitovigilance); if the registered one is wrong, correct it through the identity "
                      "feed (ADT A31 or A08) first", location=location, status=422, code="business-rule",
                      hl7_code="205", record=patient_id)   # 205: the key (the INS) is another person's


def _patient(uow: UnitOfWork, parsed: ParsedCda, produced: list[str]) -> str:
    header, ins = parsed.header, parsed.ins
    patient_id = uow.patient_record(uow.find_by_identifier("Patient", *parsed.patient_key))
    if patient_id is None:
        patient_id = uow.new_id()
        uow.save(_checked(mapping.patient_resource(header.patient, patient_id)), patient_id=patient_id)
        produced.append(f"Patient/{patient_id}")
    else:
        check_identity(uow, patient_id, mapping.patient_resource(header.patient, patient_id),
                       f"{CD}/recordTarget/patientRole/patient")
    for identifier in mapping.patient_identifiers(header.patient.ids):
        try:
            uow.claim_identifier("Patient", identifier["system"], identifier["value"], patient_id)
        except DuplicateIdentifier:
            raise Refused(
                f"identifier {identifier['system']}|{identifier['value']} belongs to another patient than INS {ins}",
                location=f"{CD}/recordTarget/patientRole/id", status=422, code="conflict",
            ) from None
    return patient_id


def _matched(uow: UnitOfWork, res_type: str, key: tuple[str, str], build, produced: list[str]) -> str:
    """The reference of the resource holding this identifier, created (with `build`) if none does."""
    res_id = uow.find_by_identifier(res_type, *key)
    if res_id is None:
        res_id = uow.new_id()
        uow.save(_checked(build(res_id)))
        uow.claim_identifier(res_type, *key, res_id)
        produced.append(f"{res_type}/{res_id}")
    return f"{res_type}/{res_id}"


def match_practitioner(uow: UnitOfWork, person: Person, produced: list[str]) -> str | None:
    key = mapping.entity_key(person.ids)
    if key is None:
        return None
    return _matched(uow, "Practitioner", key, lambda res_id: mapping.practitioner_resource(person, res_id), produced)


def _organization(uow: UnitOfWork, org, produced: list[str]) -> str:
    return _matched(uow, "Organization", mapping.entity_key(org.ids),
                    lambda res_id: mapping.organization_resource(org, res_id), produced)


def _supersede(uow: UnitOfWork, header: CdaHeader, patient_id: str, docref_id: str,
               produced: list[str]) -> tuple[list[dict], list[dict]]:
    """relatedDocument RPLC: the previous version, a document of this patient the requester may
    change (gateway.access.writes), becomes superseded; another patient's document is refused
    without being named, a parent never registered here is kept by its identifier, and awaited.
    Returns the relatesTo targets, and the documents superseded."""
    targets, replaced, location = [], [], f"{CD}/relatedDocument/parentDocument/id"
    for parent in header.replaced:
        system, value = mapping.identifier_key(parent)
        parent_id = uow.find_by_identifier("DocumentReference", system, value)
        if parent_id is None:
            # Registered elsewhere (or not yet): the link is kept by its identifier, as real documents
            # (the ANS examples among them) name parents this gateway never saw. Another replacement
            # may await it already (README, "Versions"): neither names the other, and both are kept.
            targets.append({"identifier": {"system": system, "value": value}})
            uow.await_parent(system, value, docref_id)
            continue
        stored = uow.document_to_change(parent_id, patient_id, header_producers(header), location)
        previous = stored.json()
        if previous["status"] != "current":
            raise Refused(f"document {value} is {previous['status']} and cannot be replaced again",
                          location=location, status=409, code="conflict")
        previous["status"] = "superseded"
        uow.save(previous, patient_id=patient_id, method="PUT")
        produced.append(f"DocumentReference/{stored.res_id}")
        targets.append({"reference": f"DocumentReference/{stored.res_id}"})
        replaced.append(previous)
    return targets, replaced


def replaced_already(uow: UnitOfWork, system: str, value: str, patient_id: str) -> bool:
    """Whether a live document of this patient, registered before this one, replaces it: this one
    arrived after its new version (an MDM^T02 sent again after its T10, a PDF submitted after the
    CDA that replaces it), and is not current. Its new version keeps the link by identifier."""
    for res_id in uow.replacements_awaiting(system, value):
        replacement = uow.current("DocumentReference", res_id)
        if replacement is not None and not replacement.deleted and replacement.patient_id == patient_id:
            return True
    return False


def _organization_finess(ids) -> set[str]:
    return {f for f in (finess(f"urn:oid:{ii.root}", ii.extension or "") for ii in ids) if f}


def person_producers(people: list[Person], organizations=()) -> Producers:
    """Who a submission names: people by IdNatPs, organisations (theirs and others) by FINESS."""
    idnatps = {ii.extension for person in people for ii in person.ids if ii.root == codes.IDNATPS_OID and ii.extension}
    orgs = [*organizations, *(person.organization for person in people if person.organization)]
    return Producers(frozenset(idnatps), frozenset(f for org in orgs if org for f in _organization_finess(org.ids)))


def header_producers(header: CdaHeader) -> Producers:
    return person_producers(_people(header), [header.custodian] if header.custodian else [])


def delete_document(uow: UnitOfWork, stored: StoredResource) -> None:
    """Delete a document (MDM^T04, ORU OBX-11 D, PDSM4DMP TD3.3c) and its bytes' Binary. MHD allows a
    DocumentReference only the statuses current and superseded, where PDSM4DMP writes entered-in-error
    and leaves the question open: the gateway deletes it (FHIR delete). It leaves every search and
    read (410 Gone), and its versions stay in the history for the audit trail (README, "Deletion")."""
    for binary_id in binary_ids(stored.json()):
        binary = uow.current("Binary", binary_id)
        if binary is not None and not binary.deleted:
            uow.delete(binary)
    uow.delete(stored)
