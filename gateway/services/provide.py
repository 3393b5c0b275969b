"""ITI-65 Provide Document Bundle: a transaction of SubmissionSet, DocumentReferences and Binaries.

All or nothing: every document is checked, and only then is everything written in one
transaction. A CDA's header is the source of truth: submitted metadata that contradicts it is
refused. An IHE DSG signature is verified, and its digests must match the signed documents.
"""
from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Callable

import orjson

from gateway import base64text
from gateway.access import AccessContext
from gateway.access.rules import VISIBILITY_SPELLINGS, applied_labels, binary_ids
from gateway.access.writes import Write
from gateway.refusal import Refused
from gateway.cda.header import II
from gateway.dicom import KOS_SOP_CLASS, UID_REGISTRY, DicomObject, dicom_declaration, read_dicom
from gateway.fhir.formats import load, sha1_mismatch
from gateway.fhir.validation import InvalidResource, keep_claimed_profiles, prohibited, validate
from gateway.mapping import codes
from gateway.mapping import document as mapping
from gateway.mapping import submission
from gateway.mapping.dates import fhir_now
from gateway.signature import SignatureRefused, digest, verify_signature
from gateway.storage.repository import Repository, StoredResource, UnitOfWork, new_id

from .described import (attachment_data, bundle_patients, is_cda, register_described, resolve_subject,
                        subject_identifiers)
from .documents import ParsedCda, check_identity, read_cda, register_document
from .ingest import NAMED_IDENTIFIERS, NamedPatient, Received, Written, ingest


# The entries of one submission, written in one transaction. 5,000 small documents in a 5 MB
# Bundle took 17 s and held SQLite's writer all along; the body limit let one carry 27,000. A
# managed FHIR service anchors the figure (Azure's FHIR service takes 500 entries in a Bundle).
MAX_ENTRIES = 500
# Where a submission's PUT of a Folder points: the Folder's id, or List alone (MHD's own example),
# the Folder then named by its uniqueId.
FOLDER_URL = re.compile(r"List(/[A-Za-z0-9\-.]{1,64})?")


@dataclass
class Submitted:
    index: int                  # position in Bundle.entry
    resource: dict
    binary_index: int | None = None
    data: bytes = b""
    digests: mapping.Digests | None = None   # of data
    parsed: ParsedCda | None = None
    dicom: DicomObject | None = None   # a DICOM object's header (an imaging manifest, KOS)
    new_id: str = ""            # the id it is written under, drawn by the unit of work that writes it
    signs: list["Submitted"] = field(default_factory=list)  # for a signature: the documents it signs
    stored: StoredResource | None = None                      # the DocumentReference written
    updates: str | None = None  # for a Folder a submission updates (PUT): its request.url
    written: dict | None = None  # a SubmissionSet as written, validated under stand-in ids (_unlinked_submission_set)


def _refuse(reason: str, expression: str, status: int = 422, code: str = "invalid") -> Refused:
    return Refused(reason, location=expression, status=status, code=code)


def _is_signature(resource: dict) -> bool:
    formats = [c.get("format", {}).get("code") for c in resource.get("content", [])]
    classes = [c.get("code") for cc in resource.get("category", []) for c in cc.get("coding", [])]
    return codes.SIGNATURE_FORMAT in formats or codes.SIGNATURE_CLASS in classes


def provide(repo: Repository, received: Received, trust_anchors, max_bytes: int,
            raw_id: int | None = None) -> dict:
    """ITI-65: `received` on the channel iti65, its body a transaction Bundle (JSON or XML).
    `raw_id`: its raw copy already kept, for an operator's reprocessing."""
    submission = _provide(repo, received, lambda read: _load(received.take_body(), received.content_type),
                          trust_anchors, max_bytes, raw_id)
    return submission.response


PUBLISHED = "Bundle.entry[1].resource"   # where ITI-105's DocumentReference stands in its Bundle


def publish(repo: Repository, received: Received, trust_anchors, max_bytes: int,
            raw_id: int | None = None) -> tuple[bool, StoredResource]:
    """ITI-105 Simplified Publish: one DocumentReference carrying its document in attachment.data,
    registered as an ITI-65 submission of that one document (the gateway writes its SubmissionSet).
    Returns whether it was new, and the DocumentReference."""
    def bundle_of_document(read: dict) -> dict:
        # What was posted, read before it is a Bundle: a refusal until then names its subject.
        document = read["submitted"] = load(received.take_body(), received.content_type)
        if not isinstance(document, dict) or document.get("resourceType") != "DocumentReference":
            raise _refuse("ITI-105 posts a DocumentReference", "DocumentReference", 400, "structure")
        content = document.get("content")
        if not isinstance(content, list) or len(content) != 1 or not isinstance(content[0], dict) \
                or not isinstance(content[0].get("attachment"), dict):
            raise _refuse("ITI-105 carries one content.attachment with the document in its data",
                          "DocumentReference.content")
        attachment = dict(content[0]["attachment"])
        data = attachment_data(attachment, "DocumentReference.content[0].attachment", max_bytes)
        attachment.pop("data")
        attachment["url"] = "urn:uuid:binary"
        resource = dict(document, content=[{**content[0], "attachment": attachment}])
        subject = document.get("subject", {})
        return {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:submissionset", "request": {"method": "POST", "url": "List"}, "resource": {
                "resourceType": "List", "meta": {"profile": [codes.PDSM_SUBMISSION_SET]},
                "identifier": [{"use": "usual", "system": "urn:ietf:rfc:3986", "value": submission.unique_id()}],
                "status": "current", "mode": "working", "title": "Publication simplifiée (ITI-105)",
                "code": {"coding": [{"system": submission.LIST_TYPES, "code": "submissionset"}]},
                "subject": subject, "date": fhir_now(), "entry": [{"item": {"reference": "urn:uuid:document"}}]}},
            {"fullUrl": "urn:uuid:document", "request": {"method": "POST", "url": "DocumentReference"}, "resource": resource},
            {"fullUrl": "urn:uuid:binary", "request": {"method": "POST", "url": "Binary"}, "resource": {
                "resourceType": "Binary", "contentType": attachment.get("contentType") or "application/octet-stream",
                "data": base64.b64encode(data).decode()}}]}

    try:
        written = _provide(repo, received, bundle_of_document, trust_anchors, max_bytes, raw_id)
    except Refused as refusal:
        # The client posted a DocumentReference: the refusal names it, not the Bundle it became.
        if (refusal.location or "").startswith(PUBLISHED):
            raise refusal.at("DocumentReference" + refusal.location[len(PUBLISHED):]) from None
        raise
    return written.response["entry"][1]["response"]["status"].startswith("201"), written.documents[0].stored


@dataclass
class Submission:
    """A transaction Bundle, checked: its documents read, its signatures verified."""
    bundle: dict
    documents: list[Submitted]
    signatures: list[Submitted]
    lists: list
    patches: list
    response: dict = field(default_factory=dict)


def _provide(repo: Repository, received: Received, bundle_of: Callable[[dict], dict], trust_anchors,
             max_bytes: int, raw_id: int | None) -> Submission:
    """Check every document before any transaction, then write everything in one unit of work
    (all or nothing). `bundle_of` leaves what it read in the dict it is given (`submitted`), for
    the patient a refusal names."""
    read: dict = {}

    def check() -> Submission:
        bundle = read["submitted"] = bundle_of(read)
        documents, signatures, lists, binaries, patches = _classify(bundle)
        for item in documents + signatures:
            where = f"Bundle.entry[{item.index}].resource"
            if "securityLabel" in item.resource:
                labels = item.resource["securityLabel"]
                item.resource["securityLabel"] = applied_labels(labels, f"{where}.securityLabel")
            if any(isinstance(coding, dict) and coding.get("code") in VISIBILITY_SPELLINGS
                   for coding in item.resource.get("meta", {}).get("security", [])):
                raise _refuse("a document's visibility labels are its securityLabel (PDSm): in meta.security they "
                              "would not be applied", f"{where}.meta.security")
            _attach_binary(item, bundle, binaries, max_bytes)
        # Decoded, a Binary's base64 text is not needed again: dropped before the documents are
        # read (a 20 MB document is 27 MB of it).
        for index in {item.binary_index for item in documents + signatures}:
            bundle["entry"][index]["resource"].pop("data", None)
        for item in documents:
            _read_document(item, max_bytes)
        patients = {item.parsed.ins for item in documents if item.parsed}
        if len(patients) > 1:
            raise _refuse(f"a submission concerns one patient; its documents name {len(patients)} INS",
                          "Bundle.entry")
        for item in signatures:
            _check_signature(item, documents, trust_anchors)
        for item in lists:
            if submission.is_submission_set(item.resource):
                item.written = _unlinked_submission_set(repo.access, item)
        return Submission(bundle, documents, signatures, lists, patches)

    def write(uow: UnitOfWork, checked: Submission) -> Written[Submission]:
        checked.response = _write(uow, repo.base_url, checked.bundle, checked.documents, checked.signatures,
                                  checked.lists, checked.patches)
        return Written(checked, produced=[e["response"]["location"] for e in checked.response["entry"]
                                          if "location" in e["response"]])

    return ingest(repo, received, Write.FEED, check, write, raw_id=raw_id,
                  named_patient=lambda uow: _named_patient(uow, read.get("submitted")))[1].value


def _named_patient(uow: UnitOfWork, submitted) -> NamedPatient:
    """The patient a refused submission (a Bundle, or ITI-105's DocumentReference) names, if it was
    read, as it was sent (a reference, an identifier, a Patient entry): the first subject of its
    entries that designates a known patient, else the identifiers its subjects give."""
    if isinstance(submitted, dict) and submitted.get("resourceType") == "DocumentReference":
        resources = [(None, submitted)]
    else:
        entries = submitted.get("entry") if isinstance(submitted, dict) else None
        resources = [(entry.get("fullUrl"), entry["resource"]) for entry in entries[:MAX_ENTRIES]
                     if isinstance(entry, dict) and isinstance(entry.get("resource"), dict)
                     ] if isinstance(entries, list) else []
    patients = bundle_patients(resources)
    # A submission concerns one patient: its first subjects name them (and each is a few look-ups).
    subjects = [resource["subject"] for _, resource in resources
                if isinstance(resource.get("subject"), dict)][:NAMED_IDENTIFIERS]
    for subject in subjects:
        if record := resolve_subject(uow, subject, patients):
            return NamedPatient(record)
    named = dict.fromkeys(f"{system}|{value}" for subject in subjects
                          for system, value in subject_identifiers(subject, patients))
    return NamedPatient(identifiers=tuple(named)[:NAMED_IDENTIFIERS])


def _load(body: bytes, content_type: str) -> dict:
    bundle = load(body, content_type)
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise _refuse("ITI-65 expects a Bundle", "Bundle", 400, "structure")
    if bundle.get("type") != "transaction":
        raise _refuse(f"Bundle.type must be transaction, not {bundle.get('type')!r}", "Bundle.type")
    if not bundle.get("entry"):
        raise _refuse("the Bundle has no entry", "Bundle.entry")
    if isinstance(bundle["entry"], list) and len(bundle["entry"]) > MAX_ENTRIES:
        raise _refuse(f"the Bundle has {len(bundle['entry'])} entries, over the {MAX_ENTRIES} this gateway takes in "
                      "one submission: send its documents in several", "Bundle.entry", 400, "too-costly")
    return bundle


def _classify(bundle: dict):
    documents, signatures, lists, binaries, patches = [], [], [], {}, []
    full_urls: set[str] = set()
    for index, entry in enumerate(bundle["entry"]):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        where = f"Bundle.entry[{index}]"
        if not isinstance(resource, dict):
            raise _refuse("entry without resource", where)
        full_url = entry.get("fullUrl")
        if full_url in full_urls:
            # bdl-7: a reference to it would name either entry (a document's Binary, a List's item).
            raise _refuse(f"fullUrl {str(full_url)[:100]!r} is already an earlier entry's: a fullUrl is unique in a "
                          "Bundle (bdl-7)", f"{where}.fullUrl")
        if full_url:
            full_urls.add(full_url)
        request = entry.get("request") if isinstance(entry.get("request"), dict) else {}
        kind = resource.get("resourceType")
        if request.get("method") == "PATCH" and kind == "Parameters":
            patches.append(_superseding_patch(index, request, resource))
            continue
        # A Patient is sent for reference and matched to the record, never written, whatever its
        # method. A Folder is created or updated (MHD's MHDprovideFolderActions). Everything else
        # is created (MHD fixes POST): a PUT, an update of an existing Binary, was created anew.
        folder = kind == "List" and submission.is_folder(resource) and not submission.is_submission_set(resource)
        if request.get("method") not in (("POST", "PUT") if kind == "Patient" or folder else ("POST",)):
            raise _refuse("ITI-65 entries are created with request.method POST (a Folder may be updated with a PUT, "
                          "a replaced document's status with a PATCH of Parameters)", f"{where}.request.method")
        if kind != "Patient":
            _request_checked(request, kind, where)
        if kind == "DocumentReference":
            (signatures if _is_signature(resource) else documents).append(Submitted(index, resource))
        elif kind == "Binary" or kind == "Bundle":
            # MHD's FhirDocuments: a FHIR document may come as a Bundle entry, where a Binary carries
            # any other document; it was refused, "Bundle is not part of an ITI-65 submission".
            if kind == "Bundle" and resource.get("type") != "document":
                raise _refuse("a Bundle in a submission is a FHIR document (type document: MHD's FhirDocuments)",
                              f"{where}.resource.type")
            for key in (entry.get("fullUrl"), f"{kind}/{resource.get('id')}"):
                if key:
                    binaries[key] = index
        elif kind == "List":
            if submission.is_submission_set(resource):
                refusals = submission.refusals(resource)
            elif folder:
                refusals = submission.folder_refusals(resource)
            else:
                raise _refuse("a List of a submission is its SubmissionSet or a Folder (MHD's list types "
                              "submissionset and folder)", f"{where}.resource.code")
            if refusals:
                path, requirement = refusals[0]
                raise _refuse(f"List.{path}: {requirement}", f"{where}.resource.{path}")
            updates = None
            if request.get("method") == "PUT":
                updates = str(request.get("url", ""))
                if not FOLDER_URL.fullmatch(updates):
                    raise _refuse("a Folder is updated at List/[id], or at List by its uniqueId",
                                  f"{where}.request.url")
            lists.append(Submitted(index, resource, updates=updates))
        elif kind != "Patient":
            raise _refuse(f"{kind} is not part of an ITI-65 submission", f"{where}.resource.resourceType")
    if not documents:
        raise _refuse("the submission has no DocumentReference", "Bundle.entry")
    submission_sets = [item for item in lists if submission.is_submission_set(item.resource)]
    if len(submission_sets) != 1:
        raise _refuse(f"the submission has {len(submission_sets) or 'no'} SubmissionSet Lists: it has one (MHD)",
                      "Bundle.entry")
    _check_members(bundle, submission_sets[0], documents + signatures + lists)
    return documents, signatures, lists, binaries, patches


def _check_members(bundle: dict, submission_set: Submitted, members: list[Submitted]) -> None:
    """The SubmissionSet lists every DocumentReference and Folder of its submission, as XDS
    associates each with its SubmissionSet (HasMember), and as every example of MHD and PDSM4DMP
    does. One it left out was registered in no SubmissionSet, and the submission sent again
    registered a second SubmissionSet: what it listed was not new."""
    listed = {_item_reference(entry) for entry in submission_set.resource.get("entry", [])
              if isinstance(entry, dict)}
    for item in members:
        if item is not submission_set and bundle["entry"][item.index].get("fullUrl") not in listed:
            raise _refuse(f"the SubmissionSet lists every DocumentReference and Folder of its submission (XDS's "
                          f"HasMember), by its fullUrl: Bundle.entry[{item.index}] is not among its entries",
                          f"Bundle.entry[{submission_set.index}].resource.entry")


CONDITIONS = ("ifNoneExist", "ifMatch", "ifNoneMatch", "ifModifiedSince")


def _request_checked(request: dict, kind: str, where: str) -> None:
    """An entry the submission writes is created at its type (a Folder's PUT names its List), and
    unconditionally: a condition was ignored (an ifNoneExist, the create made anyway), and a
    request.url naming another type than its resource's (Binary for a DocumentReference) too. A
    document's uniqueId is what makes its submission idempotent."""
    given = next((name for name in CONDITIONS if name in request), None)
    if given:
        raise _refuse(f"request.{given}: an ITI-65 entry is written unconditionally (a document sent again is "
                      "known by its uniqueId)", f"{where}.request.{given}")
    if request.get("method") == "POST" and str(request.get("url")).rstrip("/").rsplit("/", 1)[-1] != kind:
        raise _refuse(f"request.url {str(request.get('url'))[:64]!r} is not the type of the entry's resource, {kind}",
                      f"{where}.request.url")


@dataclass
class SupersedingPatch:
    index: int
    target: str   # the DocumentReference id it names


def _superseding_patch(index: int, request: dict, parameters: dict) -> SupersedingPatch:
    """PDSM4DMP TD2.1 (PDSm UpdateDocumentRefs): a FHIRPath Patch setting a replaced document's
    status to superseded. Nothing else may be patched in a submission; the replacement itself, the
    new document's relatesTo, is what supersedes (and what the write rules check)."""
    where = f"Bundle.entry[{index}]"
    url = str(request.get("url", ""))
    operations = parameters.get("parameter") if isinstance(parameters.get("parameter"), list) else []
    parts = [{p.get("name"): next((v for k, v in p.items() if k.startswith("value")), None) for p in op.get("part", [])
              if isinstance(p, dict)} for op in operations if isinstance(op, dict) and op.get("name") == "operation"]
    expected = {"type": "replace", "path": "DocumentReference.status", "value": "superseded"}
    if not url.startswith("DocumentReference/") or url.count("/") != 1 or len(operations) != 1 or parts != [expected]:
        raise _refuse("a PATCH in a submission sets a replaced DocumentReference's status to superseded "
                      "(replace DocumentReference.status superseded), nothing else", f"{where}.resource")
    return SupersedingPatch(index, url.split("/", 1)[1])


def _attach_binary(item: Submitted, bundle: dict, binaries: dict, max_bytes: int) -> None:
    where = f"Bundle.entry[{item.index}].resource.content[0].attachment"
    content = item.resource.get("content") or [{}]
    attachment = content[0].get("attachment", {})
    url = attachment.get("url")
    if url not in binaries:
        raise _refuse(f"attachment.url {url!r} does not point to a Binary of the Bundle", f"{where}.url")
    item.binary_index = binaries[url]
    binary = bundle["entry"][item.binary_index]["resource"]
    if binary["resourceType"] == "Bundle":
        _attach_fhir_document(item, binary, attachment, where)
        return
    try:
        item.data = base64text.decode(binary.get("data", ""))
    except (binascii.Error, ValueError):
        raise _refuse("Binary.data is not base64", f"Bundle.entry[{item.binary_index}].resource.data") from None
    if not item.data:
        raise _refuse("the Binary has no data", f"Bundle.entry[{item.binary_index}].resource.data")
    if len(item.data) > max_bytes:
        raise _refuse(f"document is {len(item.data)} bytes, above the limit of {max_bytes}",
                      f"Bundle.entry[{item.binary_index}].resource.data", 413, "too-costly")
    item.digests = mapping.Digests.of(item.data)
    if "size" in attachment and attachment["size"] != len(item.data):
        raise _refuse(f"attachment.size {attachment['size']} differs from the {len(item.data)} bytes of the Binary",
                      f"{where}.size")
    if "hash" in attachment and attachment["hash"] != item.digests.sha1_base64:
        try:
            given = base64text.decode(attachment["hash"]) if isinstance(attachment["hash"], str) else None
        except (binascii.Error, ValueError):
            given = None
        raise _refuse(f"attachment.hash {sha1_mismatch(given, item.data)}", f"{where}.hash")


def _attach_fhir_document(item: Submitted, document: dict, attachment: dict, where: str) -> None:
    """A FHIR document sent as a Bundle entry (MHD's FhirDocuments) is kept as its JSON, its type
    first, and read at Bundle/[id] as one sent in a Binary is (PDSM4DMP TD3.2). Its size and hash
    are of that JSON, which its sender cannot know: the gateway gives them, and refuses others."""
    if attachment.get("contentType", "").split(";")[0].strip() != "application/fhir+json":
        raise _refuse("a FHIR document sent as a Bundle entry is kept as JSON: its attachment.contentType is "
                      "application/fhir+json (send any other form in a Binary)", f"{where}.contentType")
    item.data = orjson.dumps({"resourceType": "Bundle", "type": "document", **document})
    item.digests = mapping.Digests.of(item.data)
    for name, value in (("size", len(item.data)), ("hash", item.digests.sha1_base64)):
        if name in attachment and attachment[name] != value:
            raise _refuse(f"attachment.{name} of a FHIR document sent as a Bundle entry is that of its JSON as "
                          f"this gateway keeps it ({value}): leave it out, or send the document in a Binary",
                          f"{where}.{name}")


# Where XML begins: after a UTF-8 byte order mark and whitespace, matched in place (stripping them
# copied a 20 MB document).
XML_START = re.compile(rb"(?:\xef\xbb\xbf)?\s*<")


def _read_document(item: Submitted, max_bytes: int) -> None:
    """A CDA's header is read and cross-checked; any other document keeps its submitted metadata."""
    where = f"Bundle.entry[{item.index}].resource"
    content = item.resource.get("content", [{}])[0]
    content_type = content.get("attachment", {}).get("contentType", "")
    format_code = content.get("format", {}).get("code")
    if declared := dicom_declaration(content_type, content.get("format", {})):
        item.dicom = _read_dicom(item, declared, content.get("format", {}), where)
        return
    if not is_cda(item.data, content_type, format_code):
        return
    if not XML_START.match(item.data):
        # An XDS-SD format is a document (a PDF, a text) wrapped in a CDA: a client that took it for
        # the format of the bare document was told "CDA document: unparseable XML", about a document
        # it never meant as XML (IHE MHD's own example submissions send "Hello World" so).
        declared = f"format {format_code}" if format_code else f"contentType {content_type}"
        bare = "a bare PDF" if item.data.startswith(b"%PDF-") else "not XML"
        as_it_is = f"contentType {content_type}, " if content_type else ""
        raise _refuse(f"{declared} declares a CDA (an XDS-SD format is a document wrapped in a CDA's nonXMLBody), "
                      f"and the data is {bare}: send the CDA that wraps it, or describe the document as it is, "
                      f"{as_it_is}format urn:ihe:iti:xds:2017:mimeTypeSufficient", f"{where}.content[0]")
    # A CDA's DocumentReference is made from its header, not from the one submitted: what PDSm
    # prohibits in the submitted one (a docStatus) was ignored, where a document that is not a CDA
    # is refused for it.
    for path in prohibited(item.resource):
        raise _refuse(f"DocumentReference.{path}: is not allowed: PDSm prohibits it (max 0)", f"{where}.{path}")
    try:
        item.parsed = read_cda(item.data, max_bytes, item.digests)
        item.parsed.checked_reference(_visibility(item.resource))   # here, not under the write lock
    except Refused as refusal:
        raise refusal.at(f"{where} -> {refusal.location}", f"CDA document: {refusal.reason}") from None
    header = item.parsed.header
    system, value = mapping.identifier_key(header.unique_id)
    master = item.resource.get("masterIdentifier", {})
    if master.get("value") not in (value, mapping.root_uri(header.unique_id.root)):
        raise _refuse(f"masterIdentifier {master.get('value')!r} contradicts the CDA id {value}",
                      f"{where}.masterIdentifier")
    submitted_types = [c.get("code") for c in item.resource.get("type", {}).get("coding", [])]
    if submitted_types and header.code.code not in submitted_types:
        raise _refuse(f"type {submitted_types} contradicts the CDA code {header.code.code}", f"{where}.type")


def _read_dicom(item: Submitted, declared: str, format_: dict, where: str) -> DicomObject:
    """A DICOM object is what its metadata says: its format is its SOP class (TRE_A09), and its
    uniqueId its SOP Instance UID, by which XDS-I.b's consumers find it (the DRIMbox asks the DMP
    for the KOS it read so). Either was kept as submitted, and bytes of any kind under them."""
    content, format_code = f"{where}.content[0]", format_.get("code")
    try:
        dicom = read_dicom(item.data, declared)
    except Refused as refusal:
        raise refusal.at(content) from None
    if format_.get("system") == UID_REGISTRY and format_code != dicom.sop_class_uid:
        raise _refuse(f"format {format_code} contradicts the DICOM object's SOP Class UID {dicom.sop_class_uid} (the "
                      f"format of a DICOM object is its SOP class: {KOS_SOP_CLASS} for a KOS)", f"{content}.format")
    master = item.resource.get("masterIdentifier", {})
    if master.get("value") != f"urn:oid:{dicom.sop_instance_uid}":
        raise _refuse(f"masterIdentifier {master.get('value')!r} contradicts the DICOM object's SOP Instance UID: "
                      f"its uniqueId is urn:oid:{dicom.sop_instance_uid} (IHE XDS-I.b)", f"{where}.masterIdentifier")
    return dicom


def _visibility(docref: dict) -> list[str]:
    """The visibility labels (TRE_A07) a submitted DocumentReference asks for its document."""
    return [c["code"] for label in docref.get("securityLabel", []) for c in label.get("coding", [])
            if c.get("system") == codes.VISIBILITY_SYSTEM and c.get("code") in codes.VISIBILITY_DISPLAYS]


def _subject_ins(uow: UnitOfWork, patients: dict[str, dict], subject: dict) -> set[str]:
    """The INS values the submitted subject designates: those it names (`subject_identifiers`, as
    a stored CDA's INS is read, without its spaces), or its stored Patient's."""
    identifiers = subject_identifiers(subject, patients)
    reference = subject.get("reference")
    if isinstance(reference, str) and "Patient/" in reference:
        stored = uow.current("Patient", reference.rsplit("/", 1)[-1])
        if stored:
            identifiers += [(i.get("system", ""), i.get("value")) for i in stored.json().get("identifier", [])]
    return {value for system, value in identifiers if system.removeprefix("urn:oid:") in codes.INS_OIDS and value}


def _check_signature(item: Submitted, documents: list[Submitted], trust_anchors) -> None:
    where = f"Bundle.entry[{item.index}].resource"
    try:
        signed = verify_signature(item.data, trust_anchors)
    except SignatureRefused as exc:
        raise _refuse(str(exc), where, 422, "security") from None
    by_uri = {mapping.document_uri(document.parsed.header.unique_id) if document.parsed
              else document.resource.get("masterIdentifier", {}).get("value"): document for document in documents}
    for uri, value in signed.items():
        document = by_uri.get(uri)
        if document is None:
            raise _refuse(f"the signature covers {uri}, which is not a document of this submission", where, 422, "security")
        if digest(document.data) != value:
            raise _refuse(f"the signed digest of {uri} does not match the submitted document", where, 422, "security")
    item.signs = [by_uri[uri] for uri in signed]


def _write(uow: UnitOfWork, base_url: str, bundle: dict, documents, signatures, lists, patches) -> dict:
    responses: dict[int, tuple[str, str]] = {}
    patients = bundle_patients((e.get("fullUrl"), e["resource"]) for e in bundle["entry"])
    patient_ids, superseded = set(), set()
    for item in (*documents, *signatures, *lists):
        if item.updates is None:
            item.new_id = uow.new_id()   # a unit run again draws them again
    for item in documents:
        where = f"Bundle.entry[{item.index}].resource"
        subject = item.resource.get("subject", {})
        if item.parsed and subject and item.parsed.ins not in _subject_ins(uow, patients, subject):
            raise _refuse("subject does not designate the patient of the CDA (its INS)", f"{where}.subject")
        visibility = _visibility(item.resource)
        if item.parsed:
            try:
                result = register_document(uow, base_url, _with_submitted_parent(uow, item), visibility=visibility,
                                           docref_id=item.new_id)
            except Refused as refusal:   # it names its place in the document (/ClinicalDocument/…)
                raise refusal.at(f"{where} -> {refusal.location}") from None
        else:
            patient_id = resolve_subject(uow, subject, patients)
            if patient_id is None:
                raise _refuse("the subject names no patient whose record this gateway holds (TD2 needs the "
                              "patient's record)", f"{where}.subject", 422, "not-found")
            # Its refusals name their place in the Bundle (`where`).
            result = register_described(uow, base_url, item.resource, item.data, patient_id, where=where,
                                        docref_id=item.new_id, digests=item.digests, dicom=item.dicom)
        stored = item.stored = result.document_reference
        reference = subject.get("reference") if isinstance(subject, dict) else None
        if result.created and isinstance(reference, str) and reference in patients:
            # The Patient entry the subject names, sent for reference, describes the patient too.
            check_identity(uow, stored.patient_id, patients[reference], f"{where}.subject")
        patient_ids.add(stored.patient_id)
        superseded |= {p.split("/", 1)[1] for p in result.produced if p.startswith("DocumentReference/")} - {stored.res_id}
        if not result.created:   # registered before (the submission sent again): what it replaced then
            superseded |= _replaced_ids(stored.json())
        item.new_id = stored.res_id
        status = "201 Created" if result.created else "200 OK"
        responses[item.index] = (status, f"DocumentReference/{stored.res_id}/_history/{stored.version}")
        content_id = binary_ids(stored.json())[0]
        responses[item.binary_index] = (status, f"Bundle/{content_id}" if bundle["entry"][item.binary_index][
            "resource"]["resourceType"] == "Bundle" else f"Binary/{content_id}/_history/1")
    if len(patient_ids) > 1:
        raise _refuse("a submission concerns one patient; its documents name several", "Bundle.entry")
    patient_id = patient_ids.pop()
    for patch in patches:
        if patch.target not in superseded:
            raise _refuse("the PATCH names a document that no document of this submission replaces",
                          f"Bundle.entry[{patch.index}].request.url")
        target = uow.current("DocumentReference", patch.target)
        responses[patch.index] = ("200 OK", f"DocumentReference/{target.res_id}/_history/{target.version}")
    for item in signatures:
        _write_signature(uow, base_url, item, responses)
    # What a List's entries may name: the submission's documents and signatures (the documents
    # written, or the registered ones a copy of the submission found), then its Folders.
    named = {bundle["entry"][i].get("fullUrl"): location.rsplit("/_history", 1)[0]
             for i, (_, location) in responses.items() if location.startswith("DocumentReference/")}
    # The Folders first: the SubmissionSet may list them.
    for item in sorted(lists, key=lambda item: submission.is_submission_set(item.resource)):
        where = f"Bundle.entry[{item.index}].resource"
        subject = item.resource.get("subject")
        if subject and resolve_subject(uow, subject, patients) != patient_id:
            raise _refuse("the List's subject is not the patient its documents are about", f"{where}.subject")
        if submission.is_submission_set(item.resource):
            _write_submission_set(uow, item, named, patient_id, responses)
        else:
            _write_folder(uow, item, named, patient_id, responses)
            named[bundle["entry"][item.index].get("fullUrl")] = responses[item.index][1].rsplit("/_history", 1)[0]
    entries = []
    for index, entry in enumerate(bundle["entry"]):
        if index in responses:
            status, location = responses[index]
            entries.append({"response": {"status": status, "location": location}})
        else:  # a Patient sent for reference: matched to the record, not created
            entries.append({"response": {"status": "200 OK", "location": f"Patient/{patient_id}"}})
    return {"resourceType": "Bundle", "id": new_id(), "type": "transaction-response", "entry": entries}


def _replaced_ids(document: dict) -> set[str]:
    """The ids of the registered documents a stored DocumentReference replaces."""
    references = [r["target"].get("reference", "") for r in document.get("relatesTo", []) if r["code"] == "replaces"]
    return {r.split("/", 1)[1] for r in references if r.startswith("DocumentReference/")}


def _write_submission_set(uow: UnitOfWork, item: Submitted, named: dict[str, str], patient_id: str,
                          responses: dict) -> None:
    where = f"Bundle.entry[{item.index}].resource"
    entries = []
    for index, entry in enumerate(item.resource.get("entry", [])):
        reference = named.get(_item_reference(entry))
        if reference is None:
            raise _refuse("a SubmissionSet lists the DocumentReferences and Folders of its submission, by their "
                          "fullUrl", f"{where}.entry[{index}].item")
        entries.append(dict(entry, item={"reference": reference}))
    if _registered_alike(uow, item, entries, patient_id, responses) or \
            _sent_again(uow, item, entries, patient_id, responses):
        return
    # Never empty: it lists the submission's documents (_check_members).
    _save_list(uow, item, {**item.written, "id": item.new_id, "entry": entries}, patient_id, responses)


def _unlinked_submission_set(access: AccessContext, item: Submitted) -> dict:
    """The submitted SubmissionSet as `_write_submission_set` writes it, completed with what PDSm
    requires and the sender left out, under stand-in ids, validated before the unit of work: there,
    only its id, its subject and its entries' items are set, from the look-ups. It was validated
    under the write lock."""
    resource = submission.completed(dict(item.resource, id=mapping.UNSET_ID), access.name or access.subject,
                                    access.subject)
    resource["entry"] = [dict(entry, item={"reference": f"DocumentReference/{mapping.UNSET_ID}"})
                         for entry in item.resource.get("entry", [])]
    resource["subject"] = {"reference": f"Patient/{mapping.UNSET_ID}"}
    keep_claimed_profiles(resource)
    return _validated(resource, item.index)


def _registered_alike(uow: UnitOfWork, item: Submitted, entries: list[dict], patient_id: str,
                      responses: dict) -> bool:
    """Whether a List of this submission is registered already under one of its identifiers, holding
    what it lists (the submission sent again, a Folder since added to: answered 200, nothing new).
    One registered under it that lacks a document it lists, or is another record's, is another
    List: its identifier names one (409)."""
    existing = _already_registered(uow, "List", item.resource.get("identifier", []))
    if existing is None:
        return False
    listed = {_item_reference(entry) for entry in existing.json().get("entry", [])}
    if existing.patient_id != patient_id or not listed >= {_item_reference(entry) for entry in entries}:
        raise _refuse("a List registered under this identifier lists other documents (a uniqueId names one "
                      "SubmissionSet, or one Folder: a PUT adds to it)", f"Bundle.entry[{item.index}].resource"
                      ".identifier", 409, "duplicate")
    responses[item.index] = ("200 OK", f"List/{existing.res_id}/_history/{existing.version}")
    return True


def _sent_again(uow: UnitOfWork, item: Submitted, entries: list[dict], patient_id: str, responses: dict) -> bool:
    """Whether a List of this submission that its identifiers do not name was registered by this
    submission sent before (an answer lost, a timeout), known by what it lists, none of it new:
    - a SubmissionSet (the guide's have no identifier; ITI-105's is the gateway's, drawn anew):
      one of the record lists it all. A new submission cannot list only what is registered: a
      SubmissionSet lists its own documents (_check_members);
    - a Folder without identifier (PDSm has it 0..1): one of the record without identifier
      either, with its title and exactly its documents. One under a uniqueId the record does not
      hold is a new Folder, which may gather registered documents."""
    listed = {_item_reference(entry) for entry in entries}
    created = {location.rsplit("/_history", 1)[0] for status, location in responses.values() if status == "201 Created"}
    documents = sorted(reference for reference in listed if reference.startswith("DocumentReference/"))
    submission_set = submission.is_submission_set(item.resource)
    if not documents or listed & created or not submission_set and item.resource.get("identifier"):
        return False

    def alike(stored: dict) -> bool:
        held = {_item_reference(entry) for entry in stored.get("entry", [])}
        if submission_set:
            return submission.is_submission_set(stored) and held >= listed
        return submission.is_folder(stored) and not stored.get("identifier") and held == listed \
            and stored.get("title") == item.resource.get("title")
    for existing in uow.live_lists_naming(documents[0], patient_id):
        if alike(existing.json()):
            responses[item.index] = ("200 OK", f"List/{existing.res_id}/_history/{existing.version}")
            return True
    return False


def _write_folder(uow: UnitOfWork, item: Submitted, named: dict[str, str], patient_id: str, responses: dict) -> None:
    """A Folder created, or updated (PUT). An update keeps the Folder's identifiers and every
    document it holds, as in XDS, where a submission adds to a Folder and never takes from it: one
    that leaves out a document its sender reads meant to remove it, and is refused (409, to be read
    again); what its sender does not read (a feeding system reads nothing), it could not name, and
    it stays. Adding to a Folder is feeding the record (gateway/access/writes.py)."""
    where = f"Bundle.entry[{item.index}].resource"
    if item.updates is None:
        resource, held = dict(item.resource, id=item.new_id), []
    else:
        current = uow.folder_to_update(_folder_id(uow, item), patient_id, f"Bundle.entry[{item.index}].request.url")
        stored = current.json()
        held = stored["entry"]
        unknown = [i for i in item.resource.get("identifier", []) if i not in stored.get("identifier", [])]
        if unknown:
            raise _refuse("a Folder keeps its identifiers: an update names those it has, or none",
                          f"{where}.identifier")
        resource = dict(item.resource, id=current.res_id, identifier=stored.get("identifier", []))
        if not resource["identifier"]:
            resource.pop("identifier")
    held_documents = [_item_reference(entry) for entry in held]
    added, seen = [], set()
    for index, entry in enumerate(resource["entry"]):
        reference = _item_reference(entry)
        document = reference if reference in held_documents else named.get(reference)
        if document is not None and not document.startswith("DocumentReference/"):
            document = None   # a Folder of the submission: Folders hold documents only
        if document is None and reference.startswith("DocumentReference/"):
            registered = uow.current("DocumentReference", reference.split("/", 1)[1])
            if registered is not None and not registered.deleted and registered.patient_id == patient_id:
                document = registered.reference
        if document is None:
            raise _refuse("a Folder holds DocumentReferences: those of its submission (by fullUrl) or the "
                          "patient's registered ones", f"{where}.entry[{index}].item")
        if document in seen:
            raise _refuse("a Folder lists a document once", f"{where}.entry[{index}].item")
        seen.add(document)
        if document not in held_documents:
            added.append(dict(entry, item={"reference": document}))
    if item.updates is None and (_registered_alike(uow, item, added, patient_id, responses)
                                 or _sent_again(uow, item, added, patient_id, responses)):
        return
    left_out = [reference for reference in held_documents if reference not in seen and _reads(uow, reference)]
    if left_out:
        raise _refuse(f"the Folder holds {len(left_out)} document(s) you read that this update leaves out: a "
                      "submission adds to a Folder, it removes nothing; read the Folder again and add to it",
                      f"{where}.entry", 409, "conflict")
    resource["entry"] = held + added   # its documents in the order they were added
    _save_list(uow, item, submission.with_designation(resource), patient_id, responses)


def _folder_id(uow: UnitOfWork, item: Submitted) -> str | None:
    """The Folder a PUT names: by the id in its url, or (at List) by the uniqueId it is sent with."""
    if "/" in item.updates:
        return item.updates.split("/", 1)[1]
    unique_ids = [i for i in item.resource.get("identifier", []) if i.get("use") == "usual"]
    return uow.find_by_identifier("List", unique_ids[0]["system"], unique_ids[0]["value"]) if unique_ids else None


def _reads(uow: UnitOfWork, reference: str) -> bool:
    """Whether the requester reads this live document (the read filter, in SQL)."""
    stored = uow.visible_current(*reference.split("/", 1))
    return stored is not None and not stored.deleted


def _item_reference(entry: dict) -> str:
    item = entry.get("item")
    return str(item.get("reference") or "") if isinstance(item, dict) else ""


def _save_list(uow: UnitOfWork, item: Submitted, resource: dict, patient_id: str, responses: dict) -> None:
    resource["subject"] = {"reference": f"Patient/{patient_id}"}
    keep_claimed_profiles(resource)
    # A Folder's update that adds nothing and changes nothing (the submission sent again) is the
    # Folder as it is.
    stored = uow.current_if_unchanged(resource, patient_id) if item.updates is not None else None
    if stored is not None:
        responses[item.index] = ("200 OK", f"List/{stored.res_id}/_history/{stored.version}")
        return
    if item.written is None:   # a Folder: what it holds is known here
        _validated(resource, item.index)
    stored = uow.save(resource, patient_id=patient_id)
    if stored.version == 1:
        for identifier in resource.get("identifier", []):
            if identifier.get("system") and identifier.get("value"):
                uow.claim_identifier("List", identifier["system"], identifier["value"], stored.res_id)
    responses[item.index] = ("201 Created" if stored.version == 1 else "200 OK",
                             f"List/{stored.res_id}/_history/{stored.version}")


def _with_submitted_parent(uow: UnitOfWork, item: Submitted) -> ParsedCda:
    """A CDA without relatedDocument RPLC replaces the document its submitted relatesTo names (as
    TXA-13 does for MDM^T10): its unique id becomes the parent the header would have named."""
    if item.parsed.header.replaced:
        return item.parsed
    parents = []
    for relation in item.resource.get("relatesTo", []):
        target = relation.get("target", {}) if isinstance(relation, dict) and relation.get("code") == "replaces" else {}
        reference = str(target.get("reference", ""))
        stored = uow.current("DocumentReference", reference.rsplit("/", 1)[-1]) if "DocumentReference/" in reference else None
        master = stored.json().get("masterIdentifier", {}) if stored else target.get("identifier") or {}
        if master.get("value"):
            value = master["value"]
            parents.append(II(value.removeprefix("urn:oid:")) if master.get("system") == "urn:ietf:rfc:3986"
                           else II(master.get("system", "").removeprefix("urn:oid:"), value))
        elif reference:
            parents.append(II("unknown", reference))   # refused by the write rules as any unknown parent
    if not parents:
        return item.parsed
    return item.parsed.replacing(parents)


def _already_registered(uow: UnitOfWork, res_type: str, identifiers: list[dict]):
    for identifier in identifiers:
        if identifier.get("system") and identifier.get("value"):
            found = uow.find_by_identifier(res_type, identifier["system"], identifier["value"])
            if found:
                return uow.current(res_type, found)
    return None


def _validated(resource: dict, index: int) -> dict:
    try:
        validate(resource)
    except InvalidResource as exc:
        raise _refuse(str(exc), f"Bundle.entry[{index}].resource.{exc.problems[0][0]}") from None
    return resource


def _write_signature(uow: UnitOfWork, base_url: str, item: Submitted, responses: dict) -> None:
    """The signature is kept as a DocumentReference of its own, linked to what it signs."""
    existing = _already_registered(uow, "DocumentReference", [item.resource.get("masterIdentifier") or {}])
    if existing:
        binary = uow.document_binary(existing)
        if binary.blob_sha256 != item.digests.sha256:
            raise _refuse("a different signature is registered under this masterIdentifier",
                          f"Bundle.entry[{item.index}].resource.masterIdentifier", 409, "duplicate")
        responses[item.index] = ("200 OK", f"DocumentReference/{existing.res_id}/_history/{existing.version}")
        responses[item.binary_index] = ("200 OK", f"Binary/{binary.res_id}/_history/1")
        return
    signed = item.signs[0].stored.json()   # written by this unit, before its signatures
    patient_ref = signed["subject"]["reference"]
    binary_id = uow.new_id()
    submitted = item.resource
    # What a signature shares with the document it signs: patient, custodian, context, and its
    # author (the certificate names the signer; nothing links it to a national id, so the signed
    # document's author stands as the signature's, as the DMP's submissions have it).
    date = submitted.get("date") or signed["date"]
    signed_attachment = signed["content"][0]["attachment"]
    resource = {
        "resourceType": "DocumentReference",
        "id": item.new_id,
        "meta": {"profile": [codes.PDSM_DOCUMENT_REFERENCE]},
        "contained": signed["contained"],
        "status": "current",
        "type": {"coding": [{"system": codes.ASTM_SYSTEM, "code": codes.SIGNATURE_TYPE, "display": "Full Document"}]},
        "category": [{"coding": [{"system": codes.URN_SYSTEM, "code": codes.SIGNATURE_CLASS,
                                  "display": "Digital Signature"}]}],
        "subject": {"reference": patient_ref},
        "date": date,
        "author": signed["author"],
        "custodian": signed["custodian"],
        "relatesTo": [{"code": "signs", "target": {"reference": f"DocumentReference/{doc.new_id}"}} for doc in item.signs],
        "securityLabel": [{"coding": [{"system": codes.CONFIDENTIALITY_SYSTEM, "code": "N", "display": "Normal"}]}],
        "content": [{
            "attachment": {"contentType": "application/xml", "language": signed_attachment.get("language", "fr-FR"),
                           "url": f"{base_url.rstrip('/')}/fhir/Binary/{binary_id}",
                           "size": len(item.data),
                           "hash": item.digests.sha1_base64,
                           "title": "Signature", "creation": date},
            "format": {"system": codes.FORMAT_IHE_SYSTEM, "code": codes.SIGNATURE_FORMAT,
                       "display": "Signature détachée IHE DSG"},
        }],
        "context": {key: value for key, value in signed["context"].items() if key != "event"},
    }
    if "authenticator" in signed:
        resource["authenticator"] = signed["authenticator"]
    if submitted.get("masterIdentifier"):
        resource["masterIdentifier"] = {**submitted["masterIdentifier"], "use": "usual"}
        uow.claim_identifier("DocumentReference", submitted["masterIdentifier"].get("system", ""),
                             submitted["masterIdentifier"]["value"], item.new_id)
    else:
        resource["masterIdentifier"] = {"use": "usual", "system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{new_id()}"}
    stored = uow.save(_validated(resource, item.index), patient_id=patient_ref.split("/")[1])
    uow.save_binary(binary_id, item.new_id, "application/xml", item.data, item.digests.sha256,
                    patient_ref.split("/")[1], lambda binary: _validated(binary, item.binary_index))
    responses[item.index] = ("201 Created", f"DocumentReference/{stored.res_id}/_history/{stored.version}")
    responses[item.binary_index] = ("201 Created", f"Binary/{binary_id}/_history/1")
