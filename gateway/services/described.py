"""Documents described by their FHIR metadata (ITI-65, ITI-105) rather than by a CDA header: a
PDF, a FHIR document, any content PDSm admits. The submitted DocumentReference is the source of
the metadata; the gateway checks it, completes what PDSm requires and the sender may leave out,
and keeps the bytes as received. A CDA (a ClinicalDocument with a header) never takes this path:
its header stays the source of truth (services/documents.py)."""
from __future__ import annotations

import binascii
from urllib.parse import parse_qsl

from lxml import etree

from gateway import base64text
from gateway.access.rules import with_replaced_masking
from gateway.access.writes import Producers, finess
from gateway.refusal import Refused
from gateway.cda.parser import CLINICAL_DOCUMENT, shallow_root
from gateway.dicom import DicomObject
from gateway.fhir.validation import InvalidResource, validate
from gateway.mapping import codes
from gateway.mapping import document as mapping
from gateway.mapping.identity import identifier_value
from gateway.mapping.dates import fhir_now
from gateway.storage.repository import UnitOfWork

from .documents import Ingested, check_identity, check_record_open, refuse_if_deleted, replaced_already
from .ingest import NAMED_IDENTIFIERS
from .personal import shared_record_custodian

# IHE format code of a document whose MIME type says all (the PDSM4DMP examples use it).
MIME_SUFFICIENT = {"system": "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode",
                   "code": "urn:ihe:iti:xds:2017:mimeTypeSufficient", "display": "mimeType Sufficient"}
# A PDSm context element the sender did not give: its value is unknown, and said so.
UNKNOWN = {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}]}
CDA_FORMATS = {code for code, _ in codes.N1_FORMATS.values()} | {code for code, _ in codes.N3_FORMATS.values()} | {
    codes.N3_GENERIC_FORMAT[0]}


def is_cda(data: bytes, content_type: str, format_code: str | None) -> bool:
    """A CDA is a ClinicalDocument with a header, or what the sender declares one by its format or
    type; an empty ClinicalDocument element (as in the PDSM4DMP examples) is just XML."""
    if format_code in CDA_FORMATS or content_type.split(";")[0].strip() == "application/hl7-cda+xml":
        return True
    if b"ClinicalDocument" not in data[:4096]:
        return False
    try:
        root = shallow_root(data)
    except etree.XMLSyntaxError:
        return True   # declared by its name: the CDA reader says what is wrong with it
    return root.tag == CLINICAL_DOCUMENT and len(root) > 0


def attachment_data(attachment: dict, where: str, max_bytes: int) -> bytes:
    """The bytes of an ITI-105 attachment (`data`, base64), checked against its size and hash."""
    try:
        data = base64text.decode(attachment.get("data") or "")
    except (binascii.Error, ValueError, TypeError):
        raise Refused("attachment.data is not base64", location=f"{where}.data") from None
    if not data:
        raise Refused("attachment.data is empty: ITI-105 carries the document in it", location=f"{where}.data")
    if len(data) > max_bytes:
        raise Refused(f"document is {len(data)} bytes, above the limit of {max_bytes}",
                              location=f"{where}.data", status=413, code="too-costly")
    return data


def bundle_patients(resources) -> dict[str, dict]:
    """The Patient entries of a Bundle, (fullUrl, resource) pairs, by the fullUrl a subject names."""
    return {url: resource for url, resource in resources
            if isinstance(url, str) and url and resource.get("resourceType") == "Patient"}


def subject_identifiers(subject, bundle_patients: dict[str, dict] | None = None) -> list[tuple[str, str]]:
    """The identifiers a submitted subject names its patient by, as sent (an INS without its spaces):
    its identifier, a conditional reference's (`Patient?identifier=system|value`), or its Patient
    entry's in the Bundle. A subject names one patient, by an INS or an IPP or two: those past the
    first few are left (a reference could list thousands, each a look-up under the write lock).
    Read of a refused submission too (provide._named_patient), checked by nothing before."""
    reference = subject.get("reference") if isinstance(subject, dict) else None
    reference = reference if isinstance(reference, str) else ""
    identifiers = []
    if isinstance(subject, dict) and isinstance(subject.get("identifier"), dict):
        identifiers.append(subject["identifier"])
    if reference.startswith("Patient?"):
        for name, value in parse_qsl(reference.split("?", 1)[1]):
            if name == "identifier" and "|" in value:
                system, code = value.split("|", 1)
                identifiers.append({"system": system, "value": code})
    elif reference in (bundle_patients or {}):
        listed = bundle_patients[reference].get("identifier")
        identifiers += listed if isinstance(listed, list) else []
    return [(identifier["system"], identifier_value(identifier["system"], identifier["value"]))
            for identifier in identifiers[:NAMED_IDENTIFIERS]
            if isinstance(identifier, dict) and isinstance(identifier.get("system"), str) and identifier["system"]
            and isinstance(identifier.get("value"), str) and identifier["value"]]


def resolve_subject(uow: UnitOfWork, subject: dict, bundle_patients: dict[str, dict] | None = None) -> str | None:
    """The Patient a submitted subject designates, among the records this gateway holds (the
    survivor, for a Patient merged into another): a local reference, or the identifiers it names
    (`subject_identifiers`). None when no record matches."""
    reference = subject.get("reference") if isinstance(subject, dict) else None
    if isinstance(reference, str) and reference.startswith("Patient/") and reference.count("/") == 1 \
            and reference not in (bundle_patients or {}):
        found = uow.current("Patient", reference.split("/", 1)[1])
        # The record it belongs to: a Patient merged into another (A40) is the survivor's, where
        # a client that kept its id before the merge means its documents to go.
        return uow.patient_record(found.patient_id) if found is not None and not found.deleted else None
    for system, value in subject_identifiers(subject, bundle_patients):
        found = uow.find_by_identifier("Patient", system, value)
        if found:
            return uow.patient_record(found)
    return None


def _checked(resource: dict, where: str) -> dict:
    try:
        validate(resource)
    except InvalidResource as exc:
        raise Refused(f"the DocumentReference is not valid FHIR: {exc}", location=where) from None
    return resource


def _submitted_producers(submitted: dict) -> Producers:
    people = set(mapping.producer_ids(submitted))
    organizations = {f for c in submitted.get("contained", []) if c.get("resourceType") == "Organization"
                     for i in c.get("identifier", []) if (f := finess(i.get("system", ""), i.get("value", "")))}
    return Producers(frozenset(people), frozenset(organizations))


def register_described(uow: UnitOfWork, base_url: str, submitted: dict, data: bytes, patient_id: str, *,
                       where: str, digests: mapping.Digests, docref_id: str | None = None,
                       dicom: DicomObject | None = None) -> Ingested:
    """Register a document whose metadata the sender gave as a DocumentReference: its bytes `data`,
    their digests computed, and the submitted size and hash checked against them, before the
    transaction (provide._attach_binary). `dicom`: its header, when it is a DICOM object."""
    master = submitted.get("masterIdentifier")
    if not isinstance(master, dict) or not master.get("value"):
        raise Refused("masterIdentifier (the document's uniqueId) is required", location=f"{where}.masterIdentifier")
    # MHD's profiles, which PDSm's build on: a uniqueId has its system (UniqueIdIdentifier), and a
    # document one class. Either was kept as submitted, and failed the official check.
    if not master.get("system"):
        raise Refused("masterIdentifier has its system (MHD), urn:ietf:rfc:3986 for a urn:oid: or urn:uuid: uniqueId",
                      location=f"{where}.masterIdentifier.system")
    if len(submitted.get("category") or []) > 1:
        raise Refused("category holds the document's one class (MHD: at most one)", location=f"{where}.category")
    key = (master["system"], master["value"])
    existing_id = uow.find_by_identifier("DocumentReference", *key)
    if existing_id is not None:
        existing = uow.current("DocumentReference", existing_id)
        refuse_if_deleted(existing, master["value"], f"{where}.masterIdentifier")
        binary = uow.document_binary(existing)
        if existing.patient_id != patient_id or binary is None or binary.blob_sha256 != digests.sha256:
            raise Refused("a different document is already registered under this masterIdentifier",
                                  location=f"{where}.masterIdentifier", status=409, code="duplicate")
        return Ingested(False, existing, [f"DocumentReference/{existing_id}"])
    check_record_open(uow, patient_id, f"{where}.subject")
    source = (submitted.get("context") or {}).get("sourcePatientInfo") or {}
    stated = next((c for c in submitted.get("contained", []) if isinstance(c, dict)
                   and c.get("resourceType") == "Patient" and f"#{c.get('id')}" == source.get("reference")), None)
    if stated:
        check_identity(uow, patient_id, stated, f"{where}.context.sourcePatientInfo")
    if dicom is not None:
        _check_dicom_patient(uow, patient_id, dicom, f"{where}.content[0]")
    if submitted.get("status", "current") != "current":
        raise Refused("a new document is current", location=f"{where}.status")
    type_codings = [c for c in submitted.get("type", {}).get("coding", []) if isinstance(c, dict)]
    known = next((found for c in type_codings if (found := _j07(c))), None)
    if known is None:
        raise Refused("the document type must be one of the CI-SIS list JDV_J07 (LOINC or TRE_A05)",
                              location=f"{where}.type")
    # PDSm and MHD aggregate the authors and the authenticator `contained`: named by `#id`.
    contained_ids = mapping.contained_references(submitted)
    authors = [a for a in submitted.get("author", []) if isinstance(a, dict)]
    if not authors or any(a.get("reference") not in contained_ids for a in authors):
        raise Refused("the authors are given, as resources contained in the DocumentReference (PDSm)",
                      location=f"{where}.author")
    if "authenticator" in submitted and submitted["authenticator"].get("reference") not in contained_ids:
        raise Refused("the authenticator is given as a resource contained in the DocumentReference (PDSm)",
                      location=f"{where}.authenticator")

    docref_id = docref_id or uow.new_id()
    binary_id = uow.new_id()
    content = (submitted.get("content") or [{}])[0]
    attachment = content.get("attachment", {})
    content_type = attachment.get("contentType") or "application/octet-stream"
    date = submitted.get("date") or fhir_now()
    holder = uow.current("Patient", patient_id).json()
    source_patient = {**{k: v for k, v in holder.items() if k not in ("id", "meta", "link", "active")},
                      "id": "source-patient"}
    type_system, type_display, class_code = known
    context = dict(submitted.get("context") or {})
    context.setdefault("period", {"start": date})
    context["period"].setdefault("start", date)
    context.setdefault("facilityType", UNKNOWN)
    context.setdefault("practiceSetting", UNKNOWN)
    context["sourcePatientInfo"] = {"reference": "#source-patient"}
    if dicom is not None:
        context["related"] = _with_references(context.get("related") or [], dicom, f"{where}.context.related")
    resource = {
        **{k: v for k, v in submitted.items() if k not in ("id", "meta", "text", "contained", "context")},
        "resourceType": "DocumentReference", "id": docref_id,
        "meta": {"profile": [codes.PDSM_DOCUMENT_REFERENCE]},
        "contained": [source_patient] + [c for c in submitted.get("contained", []) if c.get("id") != "source-patient"],
        "masterIdentifier": {**master, "use": "usual"},
        "identifier": [i for i in submitted.get("identifier", []) if i.get("use") != "official"]
        + [{"use": "official", "system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{docref_id}"}],
        "status": "current",
        "type": {"coding": [{"system": type_system, "code": next(c["code"] for c in type_codings if _j07(c)),
                             "display": type_display}]},
        "category": submitted.get("category") or [{"coding": [{"system": codes.CLASS_SYSTEM, "code": class_code,
                                                               "display": codes.CLASS_DISPLAYS.get(class_code, class_code)}]}],
        "subject": {"reference": f"Patient/{patient_id}"},
        "date": date,
        "custodian": _custodian(uow, submitted),
        "securityLabel": submitted.get("securityLabel") or [
            {"coding": [{"system": codes.CONFIDENTIALITY_SYSTEM, "code": "N", "display": "Normal"}]}],
        "content": [{
            "attachment": {"contentType": content_type, "language": attachment.get("language") or "fr-FR",
                           "url": f"{base_url.rstrip('/')}/fhir/{'Bundle' if _fhir_document(data, content_type) else 'Binary'}/{binary_id}",
                           "size": len(data), "hash": digests.sha1_base64,
                           "title": attachment.get("title") or type_display, "creation": attachment.get("creation") or date},
            "format": content.get("format") or MIME_SUFFICIENT}],
        "context": context,
    }
    resource.pop("relatesTo", None)
    resource["contained"] = _referenced(resource)
    replaced = _replaced(uow, submitted, patient_id, where)
    replaces = [f"DocumentReference/{previous['id']}" for previous in replaced]
    if replaces:
        resource["relatesTo"] = [{"code": "replaces", "target": {"reference": ref}} for ref in replaces]
        resource = with_replaced_masking(resource, replaced)
    if replaced_already(uow, *key, patient_id):
        resource["status"] = "superseded"
    stored = uow.save(_checked(resource, where), patient_id=patient_id)
    uow.claim_identifier("DocumentReference", *key, docref_id)
    uow.save_binary(binary_id, docref_id, content_type, data, digests.sha256, patient_id,
                    lambda binary: _checked(binary, where))
    return Ingested(True, stored, [*replaces, f"Binary/{binary_id}", f"DocumentReference/{docref_id}"])


def _check_dicom_patient(uow: UnitOfWork, patient_id: str, dicom: DicomObject, where: str) -> None:
    """A DICOM object names its patient in its own header, where its viewers read them (the DRIMbox
    reads the INS there): an object of another patient was filed in this one's record. An identifier
    it gives that this gateway holds for another record, or an INS other than the record's, is
    refused; its patient's sex and birth date agree with the registered ones (check_identity)."""
    record = uow.current("Patient", patient_id).json()
    record_ins = {identifier_value(i.get("system", ""), i.get("value", "")) for i in record.get("identifier", [])
                  if i.get("system", "").removeprefix("urn:oid:") in codes.INS_OIDS}
    for oid, value in dicom.patient_ids:
        system = f"urn:oid:{oid}"
        value = identifier_value(system, value)
        found = uow.find_by_identifier("Patient", system, value)
        another = (found is not None and uow.patient_record(found) != patient_id) or (
            oid in codes.INS_OIDS and value not in record_ins)
        if another:
            raise Refused(f"the DICOM object's patient, {'INS' if oid in codes.INS_OIDS else 'Patient ID'} under "
                          f"{oid}, is not the subject's: is it this patient's? (its Patient ID or Other Patient IDs)",
                          location=where, code="business-rule", hl7_code="205", record=patient_id)
    check_identity(uow, patient_id, dicom.patient_traits, where)


def _with_references(related: list, dicom: DicomObject, where: str) -> list:
    """The referenceIdList with the studies the DICOM object references (its Study Instance UIDs),
    by which a report's reader finds its images, and the accession numbers of its exams: those the
    sender left out added; a study it names that the object does not reference refused."""
    identifiers = [r["identifier"] for r in related if isinstance(r, dict) and isinstance(r.get("identifier"), dict)]

    def given(kind: str) -> list[tuple[str | None, str]]:
        return [(i.get("system"), i.get("value")) for i in identifiers
                if any(c.get("code") == kind for c in i.get("type", {}).get("coding", []))]
    studies = [value for _, value in given(codes.STUDY_INSTANCE_UID)]
    for value in studies:
        if value not in dicom.study_instance_uids:
            raise Refused(f"referenceIdList names the study {value}, which the DICOM object does not reference "
                          f"(its studies: {', '.join(dicom.study_instance_uids)})", location=where)
    sent = given(codes.ACCESSION_NUMBER)
    accessions = [(f"urn:oid:{issuer}" if issuer else None, number) for issuer, number in dicom.accession_numbers]
    return related + [mapping.reference_id(codes.STUDY_INSTANCE_UID, study)
                      for study in dicom.study_instance_uids if study not in studies] + [
        mapping.reference_id(codes.ACCESSION_NUMBER, number, system)
        for system, number in accessions if (system, number) not in sent]


def _references(value) -> set[str]:
    if isinstance(value, dict):
        found = {value["reference"][1:]} if str(value.get("reference", "")).startswith("#") else set()
        return found.union(*(_references(v) for k, v in value.items() if k != "contained"))
    if isinstance(value, list):
        return set().union(*(_references(v) for v in value))
    return set()


def _referenced(resource: dict) -> list[dict]:
    """The contained resources something refers to (FHIR dom-3: no orphan), following references
    from one contained resource to another."""
    contained = {c.get("id"): c for c in resource.get("contained", []) if isinstance(c, dict)}
    wanted, todo = set(), _references(resource)
    while todo:
        found = todo.pop()
        if found in contained and found not in wanted:
            wanted.add(found)
            todo |= _references(contained[found])
    return [c for key, c in contained.items() if key in wanted]


def _j07(coding: dict):
    system = coding.get("system", "")
    oid = next((oid for oid, url in codes.TYPE_SYSTEMS.items() if url == system), None)
    return codes.document_type(oid, coding.get("code", "")) if oid else None


def _fhir_document(data: bytes, content_type: str) -> bool:
    """A FHIR document (a Bundle of type document) is read at [base]/Bundle/[id] (PDSM4DMP TD3.2)."""
    return content_type.split(";")[0].strip() in ("application/fhir+json", "application/json") and b'"document"' in data[:4096]


def _custodian(uow: UnitOfWork, submitted: dict) -> dict:
    """The submitted custodian when it is an Organization this gateway holds; else the requester's
    organisation (by FINESS) when their token names one; else the shared record itself."""
    reference = submitted.get("custodian", {}).get("reference", "") if isinstance(submitted.get("custodian"), dict) else ""
    if reference.startswith("Organization/") and uow.current("Organization", reference.split("/", 1)[1]):
        return {"reference": reference}
    organization = uow.repository.access.organization
    if organization:
        found = uow.find_by_identifier("Organization", codes.FINESS_SYSTEM, organization)
        if found:
            return {"reference": f"Organization/{found}"}
    return {"reference": shared_record_custodian(uow)}


def _replaced(uow: UnitOfWork, submitted: dict, patient_id: str, where: str) -> list[dict]:
    """The documents this one replaces (relatesTo replaces), now superseded."""
    out = []
    for index, relation in enumerate(submitted.get("relatesTo", [])):
        if not isinstance(relation, dict) or relation.get("code") != "replaces":
            continue
        target = relation.get("target", {})
        reference = target.get("reference", "") if isinstance(target, dict) else ""
        docref_id = reference.rsplit("/", 1)[-1] if reference.startswith("DocumentReference/") or "/DocumentReference/" in reference else None
        identifier = target.get("identifier") if isinstance(target, dict) else None
        if docref_id is None and isinstance(identifier, dict) and identifier.get("value"):
            docref_id = uow.find_by_identifier("DocumentReference", identifier.get("system", ""), identifier["value"])
        stored = uow.document_to_change(docref_id, patient_id, _submitted_producers(submitted),
                                        f"{where}.relatesTo[{index}]")
        previous = stored.json()
        if previous["status"] != "current":
            raise Refused("the replaced document is no longer current", location=f"{where}.relatesTo[{index}]",
                                  status=409, code="conflict")
        previous["status"] = "superseded"
        uow.save(previous, patient_id=patient_id, method="PUT")
        out.append(previous)
    return out
