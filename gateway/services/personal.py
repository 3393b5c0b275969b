"""The patient's personal space: documents the patient adds (PDF or text, advance directives
among them) and emergency contacts (RelatedPerson).

An added document is kept raw first, like every input, then registered as a DocumentReference of
class 90 ("Autres documents déposés par le patient") whose author is the patient, with its
Binary; professionals with access to the record see it like any other document.
"""
from __future__ import annotations

from gateway.access.context import PATIENT
from gateway.access.writes import Write
from gateway.refusal import Refused
from gateway.fhir.validation import InvalidResource, validate, with_plain_spaces
from gateway.mapping import codes, submission
from gateway.mapping.dates import fhir_now
from gateway.mapping.document import Digests
from gateway.storage.repository import Repository, StoredResource, UnitOfWork, new_id

from .consents import own_patient, own_record
from .ingest import NamedPatient, Received, Written, ingest

# The JDV_J07 types (TRE_A05) of what a patient deposits, with their display in the value set.
OTHER_DOCUMENT, ADVANCE_DIRECTIVES = "EXPPAT_2", "EXPPAT_3"
PATIENT_DOCUMENT_TYPES = {OTHER_DOCUMENT: "Autre document du patient", ADVANCE_DIRECTIVES: "Directives anticipées"}
# What a patient deposits is produced by the patient (J02's and J04's code): the deposits are known by it.
PATIENT_PRODUCER = "EXP_PATIENT"
# The custodian of what patients deposit: the shared record itself, as held by this gateway.
CUSTODIAN_KEY = ("urn:dmp-gateway:organization", "shared-record")
MEDIA_TYPES = ("application/pdf", "text/plain")
# Emergency contacts: HL7 v2 table 0131 "C" (emergency contact) plus the person's relation (v3 RoleCode).
EMERGENCY_CONTACT = {"system": "http://terminology.hl7.org/CodeSystem/v2-0131", "code": "C",
                     "display": "Emergency Contact"}
RELATIONS = {"SPS": "Conjoint(e)", "PRN": "Parent", "CHILD": "Enfant", "SIB": "Frère ou sœur",
             "FAMMEMB": "Autre membre de la famille", "FRND": "Ami(e)", "NBOR": "Voisin(e)"}
ROLE_CODE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"


def _refuse(reason: str, where: str, patient_text: str) -> Refused:
    return Refused(reason, location=where, status=422, code="invalid", patient_text=patient_text)


def _checked(resource: dict) -> dict:
    resource = with_plain_spaces(resource)
    try:
        validate(resource)
    except InvalidResource as exc:
        raise _refuse(str(exc), resource["resourceType"], "les informations saisies ne sont pas valides.") from None
    return resource


def _content_checked(data: bytes, media_type: str, max_bytes: int) -> None:
    if media_type not in MEDIA_TYPES:
        raise _refuse("a personal document is a PDF or a text file", "content.attachment.contentType",
                      "un document personnel est un fichier PDF ou un fichier texte.")
    if not data:
        raise _refuse("the file is empty", "content.attachment", "le fichier choisi est vide.")
    if len(data) > max_bytes:
        raise Refused(f"the file is {len(data)} bytes, above the limit of {max_bytes} bytes",
                              location="content.attachment", status=413, code="too-costly",
                              patient_text=f"le fichier dépasse la taille maximale de {max_bytes // 1_000_000} Mo.")
    if media_type == "application/pdf" and not data.startswith(b"%PDF-"):
        raise _refuse("the file is not a PDF", "content.attachment", "le fichier n'est pas un PDF valide.")
    if media_type == "text/plain":
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            raise _refuse("a text document is written in UTF-8", "content.attachment",
                          "ce fichier n'est ni un PDF ni un texte lisible : enregistrez-le en PDF et "
                          "recommencez.") from None


def add_document(repo: Repository, *, title: str, type_code: str, media_type: str, data: bytes,
                 max_bytes: int, file_name: str | None = None) -> tuple[StoredResource, bool]:
    """Register a document the patient (or representative) adds to the record. Returns it, and
    whether it is new: the same file deposited again under the same type and title, while the
    one deposited is current (a form sent twice, a page reloaded), is that document."""
    # Hashed once, for its raw copy and its Binary, before any write lock is taken.
    digests = Digests.of(data)

    def check() -> str:
        """The title with its spaces normalised."""
        named = " ".join(title.split())
        if not named:
            raise _refuse("a document needs a title", "content.attachment.title", "donnez un titre au document.")
        if type_code not in PATIENT_DOCUMENT_TYPES:
            raise _refuse(f"the type is one of {', '.join(PATIENT_DOCUMENT_TYPES)}", "type",
                          "choisissez la nature du document dans la liste.")
        _content_checked(data, media_type, max_bytes)
        own_patient(repo)
        return named

    def write(uow: UnitOfWork, named: str) -> Written[StoredResource]:
        patient_id = own_record(uow)
        if uow.record_closed(patient_id):
            raise Refused("the record is closed: it accepts no new document", location="subject",
                          status=422, code="business-rule",
                          patient_text="le dossier est fermé : il n'accepte aucun nouveau document. "
                                       "Rouvrez-le depuis la page « Mon dossier » pour en ajouter.")
        uow.look_at_record_alone(patient_id)
        deposited = _deposited_alike(uow, patient_id, digests.sha256, type_code, named)
        if deposited is not None:
            return Written(deposited, status="duplicate", produced=[deposited.reference])
        stored = _register(uow, repo, patient_id, named, type_code, media_type, data, digests, file_name)
        return Written(stored, produced=[stored.reference])

    received = Received("patient-space", data, media_type, repo.access.subject, sha256=digests.sha256)
    # A refused upload is the record's whatever the reason: its own patient's (or representative's).
    written = ingest(repo, received, Write.PERSONAL, check, write,
                     named_patient=lambda uow: NamedPatient(uow.own_patient_id()))[1]
    return written.value, written.status != "duplicate"


def _deposited_alike(uow: UnitOfWork, patient_id: str, sha256: str, type_code: str,
                     title: str) -> StoredResource | None:
    """A current document of the record deposited through the space holding these bytes, under
    this type and title, which the requester reads: one the minor hid from her representatives
    is not one for them, and the answer does not tell them it exists. A hospital's document may
    hold the bytes too (a CDA the patient downloaded, deposited as text): it is not one."""
    for document in uow.readable_documents_holding(patient_id, sha256):
        docref = document.json()
        producer = docref.get("context", {}).get("facilityType", {}).get("coding", [{}])[0].get("code")
        if producer != PATIENT_PRODUCER or docref["status"] != "current":
            continue
        if docref["type"]["coding"][0]["code"] == type_code and docref["content"][0]["attachment"]["title"] == title:
            return document
    return None


def _register(uow: UnitOfWork, repo: Repository, patient_id: str, title: str, type_code: str, media_type: str,
              data: bytes, digests: Digests, file_name: str | None) -> StoredResource:
    docref_id, binary_id = uow.new_id(), uow.new_id()
    now = fhir_now()
    format_code, format_display = codes.N1_FORMATS[media_type]
    holder = uow.current("Patient", patient_id).json()
    source_patient = {k: v for k, v in holder.items() if k not in ("id", "meta")}
    contained = [{**source_patient, "id": "source-patient"}]
    if repo.access.role == PATIENT:
        contained.append({**source_patient, "id": "author1"})
    else:
        # A representative is none of the author types PDSm allows (a person's role, a device, the
        # patient): the document is authored through the patient space, which names them.
        contained.append(submission.device_source(f"Espace patient, {repo.access.name or 'représentant légal'}")
                         | {"id": "author1"})
    type_system, type_display, class_code = codes.document_type("1.2.250.1.213.1.1.4.12", type_code)
    attachment = {"contentType": media_type, "language": "fr-FR",
                  "url": f"{(repo.base_url or '').rstrip('/')}/fhir/Binary/{binary_id}",
                  "size": len(data), "hash": digests.sha1_base64, "title": title, "creation": now}
    docref = {
        "resourceType": "DocumentReference", "id": docref_id,
        "meta": {"profile": [codes.PDSM_DOCUMENT_REFERENCE]},
        "contained": contained,
        "masterIdentifier": {"use": "usual", "system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{new_id()}"},
        "identifier": [{"use": "official", "system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{docref_id}"}],
        "status": "current",
        "type": {"coding": [{"system": type_system, "code": type_code, "display": type_display}]},
        "category": [{"coding": [{"system": codes.CLASS_SYSTEM, "code": class_code,
                                  "display": codes.CLASS_DISPLAYS[class_code]}]}],
        "subject": {"reference": f"Patient/{patient_id}"},
        "date": now, "author": [{"reference": "#author1"}],
        "custodian": {"reference": shared_record_custodian(uow)},
        "description": file_name[:200] if file_name else None,
        "securityLabel": [{"coding": [{"system": codes.CONFIDENTIALITY_SYSTEM, "code": "N", "display": "Normal"}]}],
        "content": [{"attachment": attachment,
                     "format": {"system": codes.format_system(format_code), "code": format_code,
                                "display": format_display}}],
        "context": {"period": {"start": now},
                    "facilityType": {"coding": [{"system": codes.NON_PS_PRODUCER_SYSTEM, "code": PATIENT_PRODUCER,
                                                 "display": "Expression personnelle du patient"}]},
                    "practiceSetting": {"coding": [{"system": codes.NON_PS_PRODUCER_SYSTEM, "code": PATIENT_PRODUCER,
                                                    "display": "Expression personnelle du patient"}]},
                    "sourcePatientInfo": {"reference": "#source-patient"}},
    }
    docref = {k: v for k, v in docref.items() if v is not None}
    stored = uow.save(_checked(docref), patient_id=patient_id)
    uow.claim_identifier("DocumentReference", "urn:ietf:rfc:3986", docref["masterIdentifier"]["value"], docref_id)
    uow.save_binary(binary_id, docref_id, media_type, data, digests.sha256, patient_id, _checked)
    return stored


def shared_record_custodian(uow: UnitOfWork) -> str:
    """The Organization that keeps what patients deposit: the shared record this gateway serves."""
    organization_id = uow.find_by_identifier("Organization", *CUSTODIAN_KEY)
    if organization_id is None:
        organization_id = uow.new_id()
        uow.save(_checked({"resourceType": "Organization", "id": organization_id,
                           "meta": {"profile": [codes.FR_CORE_ORGANIZATION]},
                           "identifier": [{"system": CUSTODIAN_KEY[0], "value": CUSTODIAN_KEY[1]}],
                           "name": "Dossier médical partagé"}))
        uow.claim_identifier("Organization", *CUSTODIAN_KEY, organization_id)
    return f"Organization/{organization_id}"


def add_contact(repo: Repository, *, family: str, given: str, relation: str, phone: str) -> tuple[StoredResource, bool]:
    """An emergency contact (RelatedPerson of the patient), and whether it is new: an active
    contact of the record with this name, relation and number is that one (a form sent twice)."""
    repo.require(Write.PERSONAL)
    family, given, phone = " ".join(family.split()), " ".join(given.split()), " ".join(phone.split())
    if not family or not phone:
        raise _refuse("an emergency contact has a name and a telephone number", "RelatedPerson",
                      "un contact d'urgence a un nom et un numéro de téléphone.")
    if relation not in RELATIONS:
        raise _refuse(f"the relation is one of {', '.join(RELATIONS)}", "RelatedPerson.relationship",
                      "choisissez le lien avec ce contact dans la liste.")
    contact = _checked({
        "resourceType": "RelatedPerson", "id": new_id(), "active": True,
        "patient": {"reference": f"Patient/{own_patient(repo)}"},
        "relationship": [{"coding": [EMERGENCY_CONTACT]},
                         {"coding": [{"system": ROLE_CODE, "code": relation, "display": RELATIONS[relation]}]}],
        "name": [{"family": family, **({"given": [given]} if given else {})}],
        "telecom": [{"system": "phone", "value": phone, "use": "mobile"}],
    })
    said = {k: contact[k] for k in ("relationship", "name", "telecom")}
    with repo.unit_of_work(Write.PERSONAL) as uow:
        patient_id = own_record(uow, contact)
        for stored in uow.live_of_record("RelatedPerson", patient_id):
            known = stored.json()
            if known["active"] and {k: known[k] for k in said} == said:
                return stored, False
        return uow.save(contact, patient_id=patient_id), True


def remove_contact(repo: Repository, contact_id: str) -> StoredResource:
    """The contact stops being one (active false); the history keeps it. One removed already (a
    form sent twice) stays as it is."""
    repo.require(Write.PERSONAL)
    current = repo.read("RelatedPerson", contact_id)   # 404 unless it belongs to the requester's record
    contact = current.json()
    contact["active"] = False
    contact.pop("meta", None)
    contact = _checked(contact)
    with repo.unit_of_work(Write.PERSONAL) as uow:
        patient_id = own_record(uow, contact)
        return uow.current_if_unchanged(contact, patient_id) or uow.save(contact, patient_id=patient_id, method="PUT")
