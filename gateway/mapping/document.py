"""CDA header -> PDSm DocumentReference, FR Core Patient, Practitioner, Organization (pure)."""
from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass

from gateway.cda.header import II, CdaHeader, Code, Name, Organization, PatientInfo, Person

from . import codes
from .identity import identifier_value
from .dates import ts_to_fhir, ts_to_instant

GENDERS = {"F": "female", "M": "male", "U": "unknown", "UN": "unknown", "I": "other"}


UUID = re.compile(r"[0-9A-Fa-f]{8}(-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}")


def root_uri(root: str) -> str:
    """An II root as a URI: an OID as urn:oid:, a UUID (which CDA allows too) as urn:uuid: in lower
    case (FHIR's rule for both)."""
    return f"urn:uuid:{root.lower()}" if UUID.fullmatch(root) else f"urn:oid:{root}"


def identifier_key(ii: II) -> tuple[str, str]:
    """The (system, value) of an HL7 v3 II: root+extension, or a root alone as a URI."""
    if ii.extension:
        return root_uri(ii.root), ii.extension
    return "urn:ietf:rfc:3986", root_uri(ii.root)


def document_uri(ii: II) -> str:
    """A document unique id as IHE DSG and XDS name it: the root's URI, or the root's URI^extension."""
    return root_uri(ii.root) + (f"^{ii.extension}" if ii.extension else "")


def sha1_base64(data: bytes) -> str:
    """Attachment.hash: the SHA-1 of the bytes, base64."""
    return base64.b64encode(hashlib.sha1(data).digest()).decode()


@dataclass(frozen=True)
class Digests:
    """A document's SHA-256 (its blob's key) and SHA-1 (its Attachment.hash), computed once, where
    it is read: before the transaction, so that no write lock is held while a large one is hashed."""
    sha256: str
    sha1_base64: str

    @classmethod
    def of(cls, data: bytes) -> "Digests":
        return cls(hashlib.sha256(data).hexdigest(), sha1_base64(data))


def coding(code: Code, display: str | None = None) -> dict:
    out = {"system": codes.system_for_oid(code.system), "code": code.code}
    if display or code.display:
        out["display"] = display or code.display
    return {k: v for k, v in out.items() if v}


def _name(name: Name) -> dict:
    out: dict = {}
    if name.use:
        out["use"] = name.use
    if name.family:
        out["family"] = " ".join(name.family)
    if name.given:
        out["given"] = name.given
    if name.prefix:
        out["prefix"] = name.prefix
    if name.suffix:
        out["suffix"] = name.suffix
    if name.given_list:
        out["extension"] = [{"url": codes.FR_CORE_BIRTH_LIST_GIVEN_NAME,
                             "valueString": name.given_list}]
    return out


def _typed(type_system: str, type_code: str) -> dict:
    return {"coding": [{"system": type_system, "code": type_code}]}


def patient_identifiers(ids: list[II]) -> list[dict]:
    out = []
    for ii in ids:
        if ii.root in codes.INS_OIDS:
            type_code, use = codes.INS_OIDS[ii.root]
            out.append({"use": use, "type": _typed(codes.FR_CORE_V2_0203, type_code),
                        "system": f"urn:oid:{ii.root}", "value": identifier_value(ii.root, ii.extension)})
        elif ii.extension:
            # Any other patient id is the establishment's IPP (root = its OID, or already a URI
            # when an HL7v2 assigning authority has no OID).
            system = ii.root if ":" in ii.root else root_uri(ii.root)
            out.append({"use": "usual", "type": _typed(codes.V2_0203, "PI"), "system": system, "value": ii.extension})
    return out


def patient_resource(info: PatientInfo, patient_id: str) -> dict:
    resource: dict = {
        "resourceType": "Patient",
        "id": patient_id,
        "meta": {"profile": [codes.FR_CORE_PATIENT]},
        "identifier": patient_identifiers(info.ids),
    }
    if info.names:
        resource["name"] = [_name(n) for n in info.names]
    if info.gender:
        resource["gender"] = GENDERS.get(info.gender.upper(), "unknown")
    if info.birth_time:
        resource["birthDate"] = ts_to_fhir(info.birth_time)[:10]
    if info.death_time:
        resource["deceasedDateTime"] = ts_to_fhir(info.death_time)
    elif info.deceased is not None:
        resource["deceasedBoolean"] = info.deceased
    if info.birthplace_code or info.birthplace_city:
        address: dict = {}
        if info.birthplace_code:
            address["extension"] = [{
                "url": "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-address-insee-code",
                "valueCoding": {"system": codes.INSEE_COG_SYSTEM, "code": info.birthplace_code},
            }]
        if info.birthplace_city:
            address["city"] = info.birthplace_city
        resource.setdefault("extension", []).append(
            {"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace", "valueAddress": address})
    if info.identity_reliability:
        resource.setdefault("extension", []).append({
            "url": codes.FR_CORE_IDENTITY_RELIABILITY,
            "extension": [{"url": "identityStatus", "valueCoding": {
                "system": codes.FR_CORE_V2_0445, "code": info.identity_reliability}}],
        })
    return resource


def _national_identifiers(ids: list[II], national_oid: str, national_type: str, short_system: str,
                          short_type: str, prefix: str, length: int) -> list[dict]:
    """National ids (IdNatPs, IdNatSt) with their short form (RPPS, FINESS) when the prefix says so."""
    out = []
    for ii in ids:
        if not ii.extension:
            continue
        if ii.root != national_oid:
            out.append({"system": root_uri(ii.root), "value": ii.extension})
            continue
        out.append({"use": "official", "type": _typed(codes.FR_CORE_V2_0203, national_type),
                    "system": f"urn:oid:{ii.root}", "value": ii.extension})
        if ii.extension.startswith(prefix) and len(ii.extension) == length:
            out.append({"use": "official", "type": _typed(codes.FR_CORE_V2_0203, short_type),
                        "system": short_system, "value": ii.extension[len(prefix):]})
    return out


def person_identifiers(ids: list[II]) -> list[dict]:
    # IdNatPs "8" + RPPS number.
    return _national_identifiers(ids, codes.IDNATPS_OID, "IDNPS", codes.RPPS_SYSTEM, "RPPS", "8", 12)


def practitioner_resource(person: Person, practitioner_id: str) -> dict:
    resource: dict = {"resourceType": "Practitioner", "id": practitioner_id,
                      "meta": {"profile": [codes.FR_CORE_PRACTITIONER]}}
    identifiers = person_identifiers(person.ids)
    if identifiers:
        resource["identifier"] = identifiers
    if person.name:
        resource["name"] = [_name(person.name)]
    if person.specialty:
        resource["qualification"] = [{"code": {"coding": [coding(person.specialty)]}}]
    return resource


def organization_identifiers(ids: list[II]) -> list[dict]:
    # IdNatSt "1" + FINESS number.
    return _national_identifiers(ids, codes.IDNATST_OID, "IDNST", codes.FINESS_SYSTEM, "FINEG", "1", 10)


def organization_resource(org: Organization, organization_id: str) -> dict:
    resource: dict = {"resourceType": "Organization", "id": organization_id,
                      "meta": {"profile": [codes.FR_CORE_ORGANIZATION]}}
    identifiers = organization_identifiers(org.ids)
    if identifiers:
        resource["identifier"] = identifiers
    if org.name:
        resource["name"] = org.name
    return resource


def entity_key(ids: list[II]) -> tuple[str, str] | None:
    """The identifier an entity is matched on: its first id with an extension."""
    for ii in ids:
        if ii.extension:
            return identifier_key(ii)
    return None


@dataclass(frozen=True)
class Attachment:
    url: str
    content_type: str
    size: int
    sha1_base64: str


@dataclass(frozen=True)
class Links:
    """Ids the persistence layer resolved for the entities of the header."""
    patient: str
    custodian: str
    replaces: list[dict]          # relatesTo targets: {"reference": ...} or {"identifier": ...}


def author_role(person: Person, contained_id: str) -> list[dict]:
    """A document's author (or legal authenticator) as the PDSm wants it: a contained
    PractitionerRole carrying the specialty, pointing to a contained Practitioner (the person as
    this document names them) and to the organisation they acted for. The copy is the document's
    own: a shared Practitioner would show another document's name or specialty. An author that is
    a device is a contained Device (authoring_device)."""
    if person.device is not None:
        return authoring_device(person, contained_id)
    practitioner: dict = {"resourceType": "Practitioner", "id": f"{contained_id}-person"}
    identifiers = person_identifiers(person.ids)
    if identifiers:
        practitioner["identifier"] = identifiers
    if person.name:
        practitioner["name"] = [_name(person.name)]
    role: dict = {"resourceType": "PractitionerRole", "id": contained_id,
                  "practitioner": {"reference": f"#{contained_id}-person"}}
    resources = [role, practitioner]
    if person.organization:
        organization = organization_resource(person.organization, f"{contained_id}-organization")
        organization.pop("meta")
        role["organization"] = {"reference": f"#{contained_id}-organization"}
        resources.append(organization)
    if person.specialty:
        role["specialty"] = [{"coding": [coding(person.specialty)]}]
    return resources


def authoring_device(person: Person, contained_id: str) -> list[dict]:
    """An author that is a device (assignedAuthoringDevice: the health insurance's feed of
    reimbursements, a lab's analyser) as a contained Device, which PDSm's author allows: the id its
    header gives, its software's and model's names, its kind (the author's code, such as TRE_A00's
    ALIM_AM) and the organisation it acts for. It was a Practitioner with no name, and the directory
    learnt the health insurance's software as a professional."""
    device: dict = {"resourceType": "Device", "id": contained_id}
    if person.ids:
        device["identifier"] = [dict(zip(("system", "value"), identifier_key(ii))) for ii in person.ids]
    names = [{"name": name, "type": kind} for name, kind in ((person.device.software, "user-friendly-name"),
                                                             (person.device.model, "model-name")) if name]
    if names:
        device["deviceName"] = names
    if person.specialty:
        device["type"] = {"coding": [coding(person.specialty)]}
    resources = [device]
    if person.organization:
        organization = organization_resource(person.organization, f"{contained_id}-organization")
        organization.pop("meta")
        device["owner"] = {"reference": f"#{contained_id}-organization"}
        resources.append(organization)
    return resources


def contained_references(resource: dict) -> set[str]:
    """The local references (`#id`) that name a resource's contained resources, compared whole (a
    reference taken without its first character matched any one-character prefix). One without an
    id, or not an object (a submission not yet checked), is named by none."""
    return {f"#{c['id']}" for c in resource.get("contained", []) if isinstance(c, dict) and c.get("id")}


def author_idnatps(docref: dict) -> list[str]:
    """The national ids (IdNatPs) of a DocumentReference's contained authors."""
    authors = _author_ids(docref)
    return _contained_idnatps(docref, {f"{author}-person" for author in authors} | authors, "Practitioner")


def producer_ids(docref: dict) -> list[str]:
    """Who produced a DocumentReference's document, by the ids under the IdNatPs root of its contained
    authors: the professionals (author_idnatps) and the devices (authoring_device: a feed), who may
    replace or delete it."""
    return author_idnatps(docref) + _contained_idnatps(docref, _author_ids(docref), "Device")


def _author_ids(docref: dict) -> set[str]:
    return {ref.get("reference", "")[1:] for ref in docref.get("author", [])}


def _contained_idnatps(docref: dict, ids: set[str], resource_type: str) -> list[str]:
    """The identifiers under the IdNatPs root of the contained resources of this type and these ids."""
    return [identifier["value"] for resource in docref.get("contained", []) if resource.get("id") in ids
            and resource.get("resourceType") == resource_type for identifier in resource.get("identifier", [])
            if identifier.get("system") == f"urn:oid:{codes.IDNATPS_OID}" and identifier.get("value")]


def document_format(header: CdaHeader) -> dict:
    if header.body.level == "N1":
        code, display = codes.N1_FORMATS[header.body.media_type]
    else:
        code, display = next((codes.N3_FORMATS[t] for t in header.template_ids if t in codes.N3_FORMATS),
                             codes.N3_GENERIC_FORMAT)
    return {"system": codes.format_system(code), "code": code, "display": display}


def security_labels(header: CdaHeader, visibility: list[str] = ()) -> list[dict]:
    """The visibility labels (TRE_A07) first, then the confidentiality as authored: PDSM4DMP masks and
    unmasks by replacing `securityLabel/0` (gateway/services/labels.py)."""
    labels = [{"coding": [{"system": codes.VISIBILITY_SYSTEM, "code": code, "display": codes.VISIBILITY_DISPLAYS[code]}]}
              for code in sorted(set(visibility))]
    conf = header.confidentiality.code if header.confidentiality else "N"
    labels.append({"coding": [{"system": codes.CONFIDENTIALITY_SYSTEM, "code": conf,
                               "display": codes.CONFIDENTIALITY_DISPLAYS.get(conf, conf)}]})
    return labels


def _period(low: str | None, high: str | None) -> dict | None:
    period = {}
    if low:
        period["start"] = ts_to_fhir(low)
    if high:
        period["end"] = ts_to_fhir(high)
    return period or None


def practice_setting(header: CdaHeader) -> Code | None:
    """The practice setting (JDV_J04): a service event's performer's sector, else the legal
    authenticator's organisation's."""
    return next((e.practice_setting for e in header.service_events if e.practice_setting), None) or (
        header.legal_authenticator.organization.industry_class
        if header.legal_authenticator and header.legal_authenticator.organization else None)


def reference_id(kind: str, value: str, system: str | None = None) -> dict:
    """A referenceIdList entry (PDSm's context.related): a study's UID has no assigning authority."""
    identifier = {"type": {"coding": [{"system": codes.REFERENCE_ID_TYPE, "code": kind}]}, "value": value}
    return {"identifier": {**identifier, "system": system} if system else identifier}


def document_reference(header: CdaHeader, docref_id: str, links: Links, attachment: Attachment,
                       visibility: list[str] = ()) -> dict:
    type_system, type_display, class_code = codes.document_type(header.code.system, header.code.code)
    master_system, master_value = identifier_key(header.unique_id)
    creation = ts_to_fhir(header.effective_time)

    context: dict = {}
    events = [coding(c) for e in header.service_events for c in e.codes
              if c.system != "2.16.840.1.113883.5.4"]  # ActCode here is the encounter class, not an act
    if events:
        context["event"] = [{"coding": [c]} for c in events]
    event = header.service_events[0] if header.service_events else None
    encounter = _period(header.encounter_low, header.encounter_high) if header.encounter_low else None
    period = (_period(event.low, event.high) if event else None) or encounter or {"start": creation}
    context["period"] = period
    if header.facility_type:
        context["facilityType"] = {"coding": [coding(header.facility_type)]}
    setting = practice_setting(header)
    if setting:
        context["practiceSetting"] = {"coding": [coding(setting)]}
    context["sourcePatientInfo"] = {"reference": "#source-patient"}
    related = [reference_id(codes.STUDY_INSTANCE_UID, study) for study in header.study_uids] + [
        reference_id(codes.ACCESSION_NUMBER, number.extension, f"urn:oid:{number.root}")
        for number in header.accession_numbers]
    if related:
        context["related"] = related

    source_patient = patient_resource(header.patient, "source-patient")
    source_patient.pop("meta")
    contained = [source_patient]
    authors = []
    for index, person in enumerate(header.authors, 1):
        contained += author_role(person, f"author{index}")
        authors.append({"reference": f"#author{index}"})
    attachment_dict = {
        "contentType": attachment.content_type,
        "url": attachment.url,
        "size": attachment.size,
        "hash": attachment.sha1_base64,
        "title": header.title or type_display,
        "creation": creation,
    }
    if header.language:
        attachment_dict["language"] = header.language
    resource: dict = {
        "resourceType": "DocumentReference",
        "id": docref_id,
        "meta": {"profile": [codes.PDSM_DOCUMENT_REFERENCE]},
        "contained": contained,
        "masterIdentifier": {"use": "usual", "system": master_system, "value": master_value},
        "identifier": [{"use": "official", "system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{docref_id}"}],
        "status": "current",
        "type": {"coding": [{"system": type_system, "code": header.code.code, "display": type_display}]},
        "category": [{"coding": [{"system": codes.CLASS_SYSTEM, "code": class_code,
                                  "display": codes.CLASS_DISPLAYS[class_code]}]}],
        "subject": {"reference": f"Patient/{links.patient}"},
        "date": ts_to_instant(header.effective_time),
        "author": authors,
        "custodian": {"reference": links.custodian},
        "securityLabel": security_labels(header, visibility),
        "content": [{"attachment": attachment_dict, "format": document_format(header)}],
        "context": context,
    }
    if header.legal_authenticator:
        contained += author_role(header.legal_authenticator, "authenticator")
        resource["authenticator"] = {"reference": "#authenticator"}
    if links.replaces:
        resource["relatesTo"] = [{"code": "replaces", "target": target} for target in links.replaces]
    if header.set_id:
        # setId has no element of its own in PDSm: kept as a secondary identifier, so that
        # `identifier=` finds every version of the document.
        system, value = identifier_key(header.set_id)
        resource["identifier"].append({"use": "secondary", "system": system, "value": value,
                                       "type": {"text": "setId"}})
    return resource


# The id a resource built before its transaction is validated under; the unit of work gives it its own.
UNSET_ID = "unset"


def stand_in_links(header: CdaHeader) -> Links:
    """Links of the right shape for a DocumentReference built before its transaction: each parent
    the header replaces by its identifier, as a parent registered elsewhere is linked."""
    return Links(patient=UNSET_ID, custodian=f"Organization/{UNSET_ID}",
                 replaces=[{"identifier": dict(zip(("system", "value"), identifier_key(parent)))}
                           for parent in header.replaced])


def linked(resource: dict, docref_id: str, links: Links, url: str) -> dict:
    """A DocumentReference built by `document_reference` under other ids and links, with these: what
    the document states is kept (shared, not copied), what the database gave is replaced in place."""
    identifier = [{**resource["identifier"][0], "value": f"urn:uuid:{docref_id}"}, *resource["identifier"][1:]]
    content = [{**resource["content"][0], "attachment": {**resource["content"][0]["attachment"], "url": url}}]
    relinked = {**resource, "id": docref_id, "identifier": identifier,
                "subject": {"reference": f"Patient/{links.patient}"}, "custodian": {"reference": links.custodian},
                "content": content}
    if links.replaces:
        relinked["relatesTo"] = [{"code": "replaces", "target": target} for target in links.replaces]
    else:
        relinked.pop("relatesTo", None)
    return relinked
