"""ITI-65 Provide Document Bundle: a transaction of SubmissionSet, DocumentReferences and Binaries.

All or nothing: every document is checked, and only then is everything written in one
transaction. A CDA's header is the source of truth: submitted metadata that contradicts it is
refused. An IHE DSG signature is verified, and its digests must match the signed documents.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass, field

from gateway.cda.errors import DocumentRefused
from gateway.fhir.validation import InvalidResource, validate
from gateway.mapping import codes
from gateway.mapping import document as mapping
from gateway.mapping.dates import ts_to_instant
from gateway.signature import SignatureRefused, digest, verify_signature
from gateway.storage.repository import Repository, UnitOfWork, new_id, store_raw

from .documents import CDA_CONTENT_TYPES, ParsedCda, read_cda, register_document
from .recording import in_one_transaction, recorded


@dataclass
class Submitted:
    index: int                  # position in Bundle.entry
    resource: dict
    binary_index: int | None = None
    data: bytes = b""
    parsed: ParsedCda | None = None
    new_id: str = field(default_factory=new_id)
    signs: list["Submitted"] = field(default_factory=list)  # for a signature: the documents it signs


def _refuse(reason: str, expression: str, status: int = 422, code: str = "invalid") -> DocumentRefused:
    return DocumentRefused(reason, location=expression, status=status, code=code)


def _is_signature(resource: dict) -> bool:
    formats = [c.get("format", {}).get("code") for c in resource.get("content", [])]
    classes = [c.get("code") for cc in resource.get("category", []) for c in cc.get("coding", [])]
    return codes.SIGNATURE_FORMAT in formats or codes.SIGNATURE_CLASS in classes


def provide(repo: Repository, body: bytes, trust_anchors, max_bytes: int, sender: str | None = None) -> dict:
    raw_id = store_raw(repo.engine, "iti65", body, "application/fhir+json", sender)
    with recorded(repo, "iti65", raw_id) as done:
        bundle = _load(body)
        documents, signatures, lists, binaries = _classify(bundle)
        for item in documents + signatures:
            _attach_binary(item, bundle, binaries, max_bytes)
        for item in documents:
            _read_document(item, max_bytes)
        patients = {item.parsed.ins for item in documents}
        if len(patients) > 1:
            raise _refuse(f"a submission concerns one patient; its documents name {len(patients)} INS", "Bundle.entry")
        for item in signatures:
            _check_signature(item, documents, trust_anchors)

        def write(uow: UnitOfWork) -> dict:
            response = _write(uow, repo.base_url, bundle, documents, signatures, lists)
            uow.record_outcome(raw_id, "processed", produced=[e["response"]["location"] for e in response["entry"]
                                                              if "location" in e["response"]])
            return response

        response = in_one_transaction(repo, write)
        done("created")
    return response


def _load(body: bytes) -> dict:
    try:
        bundle = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _refuse(f"the body is not JSON: {exc}", "Bundle", 400, "structure") from None
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise _refuse("ITI-65 expects a Bundle", "Bundle", 400, "structure")
    if bundle.get("type") != "transaction":
        raise _refuse(f"Bundle.type must be transaction, not {bundle.get('type')!r}", "Bundle.type")
    if not bundle.get("entry"):
        raise _refuse("the Bundle has no entry", "Bundle.entry")
    return bundle


def _classify(bundle: dict):
    documents, signatures, lists, binaries = [], [], [], {}
    for index, entry in enumerate(bundle["entry"]):
        resource = entry.get("resource")
        where = f"Bundle.entry[{index}]"
        if not isinstance(resource, dict):
            raise _refuse("entry without resource", where)
        if entry.get("request", {}).get("method") not in ("POST", "PUT"):
            raise _refuse("ITI-65 entries are created with request.method POST", f"{where}.request.method")
        kind = resource.get("resourceType")
        if kind == "DocumentReference":
            (signatures if _is_signature(resource) else documents).append(Submitted(index, resource))
        elif kind == "Binary":
            for key in (entry.get("fullUrl"), f"Binary/{resource.get('id')}"):
                if key:
                    binaries[key] = index
        elif kind == "List":
            lists.append(Submitted(index, resource))
        elif kind != "Patient":
            raise _refuse(f"{kind} is not part of an ITI-65 submission", f"{where}.resource.resourceType")
    if not documents:
        raise _refuse("the submission has no DocumentReference", "Bundle.entry")
    if not any(_is_submission_set(s.resource) for s in lists):
        raise _refuse("the submission has no SubmissionSet List", "Bundle.entry")
    return documents, signatures, lists, binaries


def _is_submission_set(resource: dict) -> bool:
    codings = [c.get("code") for c in resource.get("code", {}).get("coding", [])]
    return "submissionset" in codings or codes.PDSM_SUBMISSION_SET in resource.get("meta", {}).get("profile", [])


def _attach_binary(item: Submitted, bundle: dict, binaries: dict, max_bytes: int) -> None:
    where = f"Bundle.entry[{item.index}].resource.content[0].attachment"
    content = item.resource.get("content") or [{}]
    attachment = content[0].get("attachment", {})
    url = attachment.get("url")
    if url not in binaries:
        raise _refuse(f"attachment.url {url!r} does not point to a Binary of the Bundle", f"{where}.url")
    item.binary_index = binaries[url]
    binary = bundle["entry"][item.binary_index]["resource"]
    try:
        item.data = base64.b64decode(binary.get("data", ""), validate=True)
    except (binascii.Error, ValueError):
        raise _refuse("Binary.data is not base64", f"Bundle.entry[{item.binary_index}].resource.data") from None
    if not item.data:
        raise _refuse("the Binary has no data", f"Bundle.entry[{item.binary_index}].resource.data")
    if len(item.data) > max_bytes:
        raise _refuse(f"document is {len(item.data)} bytes, above the limit of {max_bytes}",
                      f"Bundle.entry[{item.binary_index}].resource.data", 413, "too-costly")
    if "size" in attachment and attachment["size"] != len(item.data):
        raise _refuse(f"attachment.size {attachment['size']} differs from the {len(item.data)} bytes of the Binary",
                      f"{where}.size")
    if "hash" in attachment and attachment["hash"] != mapping.sha1_base64(item.data):
        raise _refuse("attachment.hash is not the SHA-1 of the Binary", f"{where}.hash")


def _read_document(item: Submitted, max_bytes: int) -> None:
    where = f"Bundle.entry[{item.index}].resource"
    content_type = item.resource.get("content", [{}])[0].get("attachment", {}).get("contentType", "")
    if content_type.split(";")[0] not in CDA_CONTENT_TYPES and b"ClinicalDocument" not in item.data[:4096]:
        raise _refuse(f"document content type {content_type!r} is not a CDA document; the gateway registers "
                      "CDA R2 documents (N1 wraps a PDF)", f"{where}.content[0].attachment.contentType", 415,
                      "not-supported")
    try:
        item.parsed = read_cda(item.data, max_bytes)
    except DocumentRefused as refusal:
        raise _refuse(f"CDA document: {refusal.reason}", f"{where} -> {refusal.location}", refusal.status,
                      refusal.code) from None
    header = item.parsed.header
    system, value = mapping.identifier_key(header.unique_id)
    master = item.resource.get("masterIdentifier", {})
    if master.get("value") not in (value, f"urn:oid:{header.unique_id.root}"):
        raise _refuse(f"masterIdentifier {master.get('value')!r} contradicts the CDA id {value}",
                      f"{where}.masterIdentifier")
    submitted_types = [c.get("code") for c in item.resource.get("type", {}).get("coding", [])]
    if submitted_types and header.code.code not in submitted_types:
        raise _refuse(f"type {submitted_types} contradicts the CDA code {header.code.code}", f"{where}.type")


def _subject_ins(uow: UnitOfWork, bundle: dict, subject: dict) -> set[str]:
    """The INS values the submitted subject designates (reference to a stored Patient, an entry, or identifier)."""
    identifiers = []
    if subject.get("identifier"):
        identifiers.append(subject["identifier"])
    ref = subject.get("reference", "")
    for entry in bundle["entry"]:
        if entry.get("fullUrl") == ref and entry["resource"].get("resourceType") == "Patient":
            identifiers += entry["resource"].get("identifier", [])
    if "Patient/" in ref:
        stored = uow.current("Patient", ref.rsplit("/", 1)[-1])
        if stored:
            identifiers += stored.json().get("identifier", [])
    return {i.get("value") for i in identifiers
            if i.get("system", "").removeprefix("urn:oid:") in codes.INS_OIDS and i.get("value")}


def _check_signature(item: Submitted, documents: list[Submitted], trust_anchors) -> None:
    where = f"Bundle.entry[{item.index}].resource"
    try:
        signed = verify_signature(item.data, trust_anchors)
    except SignatureRefused as exc:
        raise _refuse(str(exc), where, 422, "security") from None
    by_uri = {mapping.document_uri(document.parsed.header.unique_id): document for document in documents}
    for uri, value in signed.items():
        document = by_uri.get(uri)
        if document is None:
            raise _refuse(f"the signature covers {uri}, which is not a document of this submission", where, 422, "security")
        if digest(document.data) != value:
            raise _refuse(f"the signed digest of {uri} does not match the submitted document", where, 422, "security")
    item.signs = [by_uri[uri] for uri in signed]


def _write(uow: UnitOfWork, base_url: str, bundle: dict, documents, signatures, lists) -> dict:
    responses: dict[int, tuple[str, str]] = {}
    for item in documents:
        subject = item.resource.get("subject", {})
        if subject and item.parsed.ins not in _subject_ins(uow, bundle, subject):
            raise _refuse(f"subject does not designate the patient of the CDA (INS {item.parsed.ins})",
                          f"Bundle.entry[{item.index}].resource.subject")
        visibility = [c["code"] for label in item.resource.get("securityLabel", []) for c in label.get("coding", [])
                      if c.get("system") == codes.VISIBILITY_SYSTEM and c.get("code") in codes.VISIBILITY_DISPLAYS]
        try:
            result = register_document(uow, base_url, item.parsed, visibility=visibility, docref_id=item.new_id)
        except DocumentRefused as refusal:
            raise _refuse(refusal.reason, f"Bundle.entry[{item.index}].resource -> {refusal.location}",
                          refusal.status, refusal.code) from None
        stored = result.document_reference
        item.new_id = stored.res_id
        status = "201 Created" if result.created else "200 OK"
        responses[item.index] = (status, f"DocumentReference/{stored.res_id}/_history/{stored.version}")
        binary_ref = stored.json()["content"][0]["attachment"]["url"].split("/fhir/", 1)[1]
        responses[item.binary_index] = (status, f"{binary_ref}/_history/1")
    for item in signatures:
        _write_signature(uow, base_url, item, responses)
    references = {bundle["entry"][i].get("fullUrl"): loc.rsplit("/_history", 1)[0] for i, (_, loc) in responses.items()}
    patient_id = uow.find_by_identifier("Patient", *documents[0].parsed.patient_key)
    for item in lists:
        existing = _already_registered(uow, "List", item.resource.get("identifier", []))
        if existing:
            responses[item.index] = ("200 OK", f"List/{existing.res_id}/_history/{existing.version}")
            continue
        resource = dict(item.resource, id=item.new_id)
        resource["entry"] = [dict(e, item={"reference": references.get(e.get("item", {}).get("reference"),
                                                                        e.get("item", {}).get("reference"))})
                             for e in resource.get("entry", [])]
        resource["subject"] = {"reference": f"Patient/{patient_id}"}
        profiles = resource.get("meta", {}).get("profile")
        resource["meta"] = {"profile": profiles} if profiles else {}
        _validated(resource, item.index)
        stored = uow.save(resource, patient_id=patient_id)
        for identifier in resource.get("identifier", []):
            if identifier.get("system") and identifier.get("value"):
                uow.claim_identifier("List", identifier["system"], identifier["value"], stored.res_id)
        responses[item.index] = ("201 Created", f"List/{stored.res_id}/_history/{stored.version}")
    entries = []
    for index, entry in enumerate(bundle["entry"]):
        if index in responses:
            status, location = responses[index]
            entries.append({"response": {"status": status, "location": location}})
        else:  # a Patient sent for reference: matched, not created
            entries.append({"response": {"status": "200 OK"}})
    return {"resourceType": "Bundle", "id": new_id(), "type": "transaction-response", "entry": entries}


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
        raise _refuse(str(exc), f"Bundle.entry[{index}].resource") from None
    return resource


def _write_signature(uow: UnitOfWork, base_url: str, item: Submitted, responses: dict) -> None:
    """The signature is kept as a DocumentReference of its own, linked to what it signs."""
    existing = _already_registered(uow, "DocumentReference", [item.resource.get("masterIdentifier") or {}])
    if existing:
        binary_id = existing.json()["content"][0]["attachment"]["url"].rsplit("/", 1)[1]
        if uow.current("Binary", binary_id).blob_sha256 != hashlib.sha256(item.data).hexdigest():
            raise _refuse("a different signature is registered under this masterIdentifier",
                          f"Bundle.entry[{item.index}].resource.masterIdentifier", 409, "duplicate")
        responses[item.index] = ("200 OK", f"DocumentReference/{existing.res_id}/_history/{existing.version}")
        responses[item.binary_index] = ("200 OK", f"Binary/{binary_id}/_history/1")
        return
    first = item.signs[0]
    patient_ref = f"Patient/{uow.find_by_identifier('Patient', *first.parsed.patient_key)}"
    binary_id = new_id()
    sha256 = uow.store_blob(item.data)
    uow.save(_validated({"resourceType": "Binary", "id": binary_id, "contentType": "application/xml",
                         "securityContext": {"reference": f"DocumentReference/{item.new_id}"}}, item.binary_index),
             patient_id=patient_ref.split("/")[1], blob_sha256=sha256)
    submitted = item.resource
    resource = {
        "resourceType": "DocumentReference",
        "id": item.new_id,
        "meta": {"profile": [codes.PDSM_DOCUMENT_REFERENCE]},
        "status": "current",
        "type": {"coding": [{"system": codes.ASTM_SYSTEM, "code": codes.SIGNATURE_TYPE, "display": "Full Document"}]},
        "category": [{"coding": [{"system": codes.URN_SYSTEM, "code": codes.SIGNATURE_CLASS,
                                  "display": "Digital Signature"}]}],
        "subject": {"reference": patient_ref},
        "date": submitted.get("date") or ts_to_instant(first.parsed.header.effective_time),
        "relatesTo": [{"code": "signs", "target": {"reference": f"DocumentReference/{doc.new_id}"}} for doc in item.signs],
        "securityLabel": [{"coding": [{"system": codes.CONFIDENTIALITY_SYSTEM, "code": "N", "display": "Normal"}]}],
        "content": [{
            "attachment": {"contentType": "application/xml", "url": f"{base_url.rstrip('/')}/fhir/Binary/{binary_id}",
                           "size": len(item.data),
                           "hash": mapping.sha1_base64(item.data),
                           "title": "Signature"},
            "format": {"system": codes.FORMAT_IHE_SYSTEM, "code": codes.SIGNATURE_FORMAT,
                       "display": "Signature détachée IHE DSG"},
        }],
    }
    if submitted.get("masterIdentifier"):
        resource["masterIdentifier"] = submitted["masterIdentifier"]
        uow.claim_identifier("DocumentReference", submitted["masterIdentifier"].get("system", ""),
                             submitted["masterIdentifier"]["value"], item.new_id)
    if submitted.get("author"):
        resource["author"] = [a for a in submitted["author"] if a.get("reference", "").count("/") == 1
                              and not a["reference"].startswith("urn:")]
    stored = uow.save(_validated(resource, item.index), patient_id=patient_ref.split("/")[1])
    responses[item.index] = ("201 Created", f"DocumentReference/{stored.res_id}/_history/{stored.version}")
    responses[item.binary_index] = ("201 Created", f"Binary/{binary_id}/_history/1")
