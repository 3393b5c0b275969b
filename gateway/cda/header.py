"""Extraction of the CI-SIS CDA header into plain data (no FHIR here: that is mapping's job)."""
from __future__ import annotations

import io
import re
from dataclasses import dataclass, field

from lxml import etree

from gateway.refusal import Refused
from .parser import HL7_NS, NS

CD = "/ClinicalDocument"


@dataclass(frozen=True)
class II:
    root: str
    extension: str | None = None


@dataclass(frozen=True)
class Code:
    code: str
    system: str | None = None
    display: str | None = None


@dataclass
class Name:
    family: list[str] = field(default_factory=list)
    given: list[str] = field(default_factory=list)
    prefix: list[str] = field(default_factory=list)
    suffix: list[str] = field(default_factory=list)
    use: str | None = None  # "official" (birth names, qualifier BR) or "usual" (CL)
    given_list: str | None = None  # all birth first names, as the civil status lists them


@dataclass
class Organization:
    ids: list[II] = field(default_factory=list)
    name: str | None = None
    industry_class: Code | None = None


@dataclass
class AuthoringDevice:
    software: str | None = None     # softwareName
    model: str | None = None        # manufacturerModelName


@dataclass
class Person:
    ids: list[II] = field(default_factory=list)
    specialty: Code | None = None
    name: Name | None = None
    organization: Organization | None = None
    time: str | None = None
    # An author that is a device (assignedAuthoringDevice: the health insurance's feed, a lab's
    # analyser), not a person.
    device: AuthoringDevice | None = None


@dataclass
class PatientInfo:
    ids: list[II]
    names: list[Name]
    gender: str | None
    birth_time: str | None
    birthplace_code: str | None
    birthplace_city: str | None
    identity_reliability: str | None = None  # PAM-FR PID-32 (VALI, PROV…); the CDA does not carry it
    death_time: str | None = None            # PID-29, sdtc:deceasedTime: as sent (an HL7 TS)
    deceased: bool | None = None             # PID-30 Y or N, sdtc:deceasedInd; None when not said


# LOINC's imaging report, the one type of the DMP's imaging reports (CR-IMG), whatever the modality.
IMAGING_REPORT = "18748-4"


@dataclass
class ServiceEvent:
    codes: list[Code]
    low: str | None
    high: str | None
    practice_setting: Code | None


@dataclass
class Body:
    level: str  # "N1" (nonXMLBody) or "N3" (structuredBody)
    media_type: str | None = None


@dataclass
class CdaHeader:
    unique_id: II
    set_id: II | None
    code: Code
    title: str | None
    effective_time: str
    confidentiality: Code | None
    language: str | None
    template_ids: list[str]
    patient: PatientInfo
    authors: list[Person]
    custodian: Organization | None
    legal_authenticator: Person | None
    service_events: list[ServiceEvent]
    study_uids: list[str]           # an imaging report's studies (DICOM Study Instance UIDs)
    accession_numbers: list[II]     # and their accession numbers
    encounter_low: str | None
    encounter_high: str | None
    facility_type: Code | None
    replaced: list[II]
    body: Body
    wrapped_in_xslt: bool = False


# A header lists a few of each thing. The document's limit (20 MB) would let it list 40,000
# authors, each a contained resource to map, validate and index: 9,000 took 13.6 s and 360 MB,
# 70,000 patient ids 5.5 s. Past this many of one element, the document is refused.
MAX_REPEATED = 100
# CDA R2's uid: an OID, a UUID or an RUID.
UID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+|[0-9A-Fa-f]{8}(-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}|[A-Za-z][A-Za-z0-9-]*")


def _where(el: etree._Element, path: str) -> tuple[str, str]:
    """`path` under `el`, as a refusal names it and as its location."""
    where = etree.QName(el).localname + "/" + path.replace("h:", "")
    return where, f"/{where}" if el.getparent() is None else f"{CD}//{where}"


def _all(el: etree._Element, path: str) -> list[etree._Element]:
    found = el.findall(path, NS)
    if len(found) > MAX_REPEATED:
        where, location = _where(el, path)
        raise Refused(f"{where} is repeated {len(found)} times, over the {MAX_REPEATED} this gateway reads in a "
                      "header", location=location, code="too-costly")
    return found


def _one(el: etree._Element, path: str) -> etree._Element | None:
    """The element at `path`, which a header holds at most once (CDA R2's schema; the CI-SIS for
    recordTarget): only the first of two was read, and a second patient, unique id or
    confidentiality ignored."""
    found = el.findall(path, NS)
    if len(found) > 1:
        where, location = _where(el, path)
        raise Refused(f"{where} is given {len(found)} times, where a CDA header holds one", location=location)
    return found[0] if found else None


def _text(el: etree._Element | None) -> str | None:
    if el is None:
        return None
    value = " ".join("".join(el.itertext()).split())
    return value or None


def _uid(el: etree._Element, attribute: str) -> str | None:
    """`attribute` of `el`, a uid (II.root, CD.codeSystem), refused when it is not one: the gateway
    names it by a URI (urn:oid:…), and one holding a space was registered, and failed the official
    check."""
    value = el.get(attribute)
    if value is None or not value.strip():
        return None
    value = value.strip()
    if not UID.fullmatch(value):
        where = f"/{etree.QName(el.getroottree().getroot()).localname}/" + re.sub(
            r"\{[^}]*\}", "", el.getroottree().getelementpath(el)) + f"/@{attribute}"
        raise Refused(f"{where} is not a uid (an OID, a UUID or an RUID, as CDA R2 has it)", location=where)
    return value


def _ii(el: etree._Element | None) -> II | None:
    root = _uid(el, "root") if el is not None else None
    if root is None:
        return None
    return II(root, (el.get("extension") or "").strip() or None)


def _code(el: etree._Element | None) -> Code | None:
    if el is None or not el.get("code"):
        return None
    return Code(el.get("code").strip(), _uid(el, "codeSystem"), el.get("displayName"))


def _codes_with_translations(el: etree._Element | None) -> list[Code]:
    if el is None:
        return []
    codes = [c for c in [_code(el)] if c]
    codes += [c for c in (_code(t) for t in _all(el, "h:translation")) if c]
    return codes


def _ts(el: etree._Element | None) -> str | None:
    if el is None:
        return None
    value = el.get("value")
    return value.strip() if value else None


def _name(el: etree._Element | None) -> Name | None:
    if el is None:
        return None
    name = Name(
        family=[t for t in (_text(e) for e in _all(el, "h:family")) if t],
        given=[t for t in (_text(e) for e in _all(el, "h:given")) if t],
        prefix=[t for t in (_text(e) for e in _all(el, "h:prefix")) if t],
        suffix=[t for t in (_text(e) for e in _all(el, "h:suffix")) if t],
    )
    if not (name.family or name.given):
        text = _text(el)
        return Name(family=[text]) if text else None
    return name


def _patient_names(el: etree._Element | None) -> list[Name]:
    """CI-SIS patient names: birth names (qualifier BR, or none) and used names (qualifier CL).

    An unqualified <given> carries the whole list of birth first names ("DOMINIQUE MARIE-LOUISE"),
    kept in ``given_list``; the BR one is the first birth first name.
    """
    names: list[Name] = []
    if el is None:
        return names
    for name_el in _all(el, "h:name"):
        parts: dict[tuple[str, str], list[str]] = {}
        for part in _all(name_el, "*"):
            value = _text(part)
            local = etree.QName(part).localname
            if value and local in ("family", "given"):
                parts.setdefault((local, (part.get("qualifier") or "").upper()), []).append(value)
        unqualified_given = parts.get(("given", ""), [])
        birth = Name(
            family=parts.get(("family", "BR")) or parts.get(("family", ""), []),
            given=parts.get(("given", "BR")) or unqualified_given[:1],
            use="official",
            given_list=" ".join(unqualified_given) or None,
        )
        used = Name(family=parts.get(("family", "CL"), []), given=parts.get(("given", "CL"), []), use="usual")
        names += [n for n in (birth, used) if n.family or n.given]
    return names


def _organization(el: etree._Element | None) -> Organization | None:
    if el is None:
        return None
    org = Organization(
        ids=[i for i in (_ii(e) for e in _all(el, "h:id")) if i],
        name=_text(el.find("h:name", NS)),
        industry_class=_code(el.find("h:standardIndustryClassCode", NS)),
    )
    return org if (org.ids or org.name) else None


def _person(entity: etree._Element | None, person_tag: str, org_tag: str, time_el=None) -> Person | None:
    if entity is None:
        return None
    return Person(
        ids=[i for i in (_ii(e) for e in _all(entity, "h:id")) if i],
        specialty=_code(entity.find("h:code", NS)),
        name=_name(entity.find(f"h:{person_tag}/h:name", NS)),
        organization=_organization(entity.find(f"h:{org_tag}", NS)),
        time=_ts(time_el),
        device=_device(entity.find("h:assignedAuthoringDevice", NS)),
    )


def _device(device: etree._Element | None) -> AuthoringDevice | None:
    """An authoring device: its software's and model's names, a name of no letter or digit (".",
    as the ANS's own examples give a model) left out."""
    if device is None:
        return None
    names = []
    for tag in ("softwareName", "manufacturerModelName"):
        found = device.find(f"h:{tag}", NS)
        name = " ".join("".join(found.itertext()).split()) if found is not None else ""
        names.append(name if any(c.isalnum() for c in name) else None)
    return AuthoringDevice(*names)


def _required(value, location: str, what: str):
    if not value:
        raise Refused(f"{what} is missing", location=location)
    return value


def named_patient_ids(data: bytes) -> list[II]:
    """The identifiers of the patient a document names (recordTarget/patientRole/id), read from one
    that may have been refused: not valid, not a CDA, or only its first bytes kept. It is read up
    to its first recordTarget and no further, with the gateway's parser settings (no DTD, no
    entities, no network); the ids are taken as written, at most MAX_REPEATED. Nothing when the
    document has no recordTarget before its end or its first error, or declares a document type
    (libxml2 still substitutes its internal entities in attributes: parse_cda refuses it)."""
    events = etree.iterparse(io.BytesIO(data), events=("end",), tag=f"{{{HL7_NS}}}recordTarget",
                             resolve_entities=False, no_network=True, load_dtd=False, huge_tree=True)
    try:
        for _, target in events:
            docinfo = target.getroottree().docinfo
            if docinfo.doctype or docinfo.internalDTD is not None:
                return []
            return [II(el.get("root", "").strip(), (el.get("extension") or "").strip() or None)
                    for el in target.findall("h:patientRole/h:id", NS)[:MAX_REPEATED] if el.get("root", "").strip()]
    except etree.XMLSyntaxError:
        pass
    return []


def _deceased(patient: etree._Element) -> bool | None:
    """sdtc:deceasedInd, which the CI-SIS takes in the patient: an XML Schema boolean."""
    element = _one(patient, "sdtc:deceasedInd")
    if element is None or element.get("nullFlavor"):
        return None
    value = (element.get("value") or "").strip()
    if value not in ("true", "false", "1", "0"):
        raise Refused(f"sdtc:deceasedInd/@value is true or false, not {value[:20]!r}",
                      location=f"{CD}/recordTarget/patientRole/patient/deceasedInd/@value")
    return value in ("true", "1")


def extract_header(doc: etree._Element, *, wrapped_in_xslt: bool = False) -> CdaHeader:
    """Read the CI-SIS header. Missing mandatory elements refuse the document, naming them."""
    unique_id = _required(_ii(_one(doc, "h:id")), f"{CD}/id", "the document unique id (id/@root)")
    code = _required(_code(_one(doc, "h:code")), f"{CD}/code", "the document type (code/@code)")
    effective_time = _required(_ts(_one(doc, "h:effectiveTime")), f"{CD}/effectiveTime",
                               "the creation date (effectiveTime/@value)")

    role = _one(doc, "h:recordTarget/h:patientRole")
    _required(role is not None, f"{CD}/recordTarget/patientRole", "the patient (recordTarget/patientRole)")
    patient_el = _one(role, "h:patient")
    birthplace = _one(patient_el, "h:birthplace/h:place/h:addr") if patient_el is not None else None
    gender = _code(_one(patient_el, "h:administrativeGenderCode")) if patient_el is not None else None
    patient = PatientInfo(
        ids=[i for i in (_ii(e) for e in _all(role, "h:id")) if i],
        names=_patient_names(patient_el),
        gender=gender.code if gender else None,
        birth_time=_ts(_one(patient_el, "h:birthTime")) if patient_el is not None else None,
        birthplace_code=_text(birthplace.find("h:county", NS)) if birthplace is not None else None,
        birthplace_city=_text(birthplace.find("h:city", NS)) if birthplace is not None else None,
        death_time=_ts(_one(patient_el, "sdtc:deceasedTime")) if patient_el is not None else None,
        deceased=_deceased(patient_el) if patient_el is not None else None,
    )

    authors = []
    for author_el in _all(doc, "h:author"):
        person = _person(author_el.find("h:assignedAuthor", NS), "assignedPerson", "representedOrganization",
                         author_el.find("h:time", NS))
        if person and (person.ids or person.name or person.device):
            authors.append(person)

    legal = _one(doc, "h:legalAuthenticator")
    legal_authenticator = _person(legal.find("h:assignedEntity", NS), "assignedPerson", "representedOrganization",
                                  legal.find("h:time", NS)) if legal is not None else None

    events = []
    for se in _all(doc, "h:documentationOf/h:serviceEvent"):
        events.append(ServiceEvent(
            codes=_codes_with_translations(se.find("h:code", NS)),
            low=_ts(se.find("h:effectiveTime/h:low", NS)) or _ts(se.find("h:effectiveTime", NS)),
            high=_ts(se.find("h:effectiveTime/h:high", NS)),
            practice_setting=_code(se.find(
                "h:performer/h:assignedEntity/h:representedOrganization/h:standardIndustryClassCode", NS)),
        ))

    # An imaging report names the studies it reports on (serviceEvent/id, a DICOM Study Instance UID,
    # as the CI-SIS's CR-IMG and DICOM PS3.20 have it) and their accession numbers: XDS's
    # referenceIdList, by which the report and its images' manifest (a KOS) are found together.
    studies, accessions = [], []
    if code.code == IMAGING_REPORT:
        studies = [ii.root for se in _all(doc, "h:documentationOf/h:serviceEvent")
                   if (ii := _ii(se.find("h:id", NS))) and ii.extension is None]
        accessions = [ii for el in _all(doc, "h:inFulfillmentOf/h:order/dicom:accessionNumber")
                      if (ii := _ii(el)) and ii.extension]

    encounter = _one(doc, "h:componentOf/h:encompassingEncounter")
    component = _one(doc, "h:component")
    body_el = component.find("h:structuredBody", NS) if component is not None else None
    if body_el is not None:
        body = Body("N3")
    else:
        text_el = component.find("h:nonXMLBody/h:text", NS) if component is not None else None
        _required(text_el is not None, f"{CD}/component", "the body (structuredBody or nonXMLBody)")
        body = Body("N1", (text_el.get("mediaType") or "text/plain").strip())

    conf = _one(doc, "h:confidentialityCode")
    lang = _one(doc, "h:languageCode")
    return CdaHeader(
        unique_id=unique_id,
        set_id=_ii(_one(doc, "h:setId")),
        code=code,
        title=_text(_one(doc, "h:title")),
        effective_time=effective_time,
        confidentiality=_code(conf),
        language=lang.get("code") if lang is not None else None,
        template_ids=[t.get("root") for t in _all(doc, "h:templateId") if t.get("root")],
        patient=patient,
        authors=authors,
        custodian=_organization(_one(
            doc, "h:custodian/h:assignedCustodian/h:representedCustodianOrganization")),
        legal_authenticator=legal_authenticator,
        service_events=events,
        study_uids=list(dict.fromkeys(studies)),
        accession_numbers=list(dict.fromkeys(accessions)),
        encounter_low=_ts(encounter.find("h:effectiveTime/h:low", NS)) if encounter is not None else None,
        encounter_high=_ts(encounter.find("h:effectiveTime/h:high", NS)) if encounter is not None else None,
        facility_type=_code(encounter.find("h:location/h:healthCareFacility/h:code", NS))
        if encounter is not None else None,
        replaced=[i for i in (_ii(rd.find("h:parentDocument/h:id", NS))
                              for rd in _all(doc, "h:relatedDocument") if rd.get("typeCode") == "RPLC") if i],
        body=body,
        wrapped_in_xslt=wrapped_in_xslt,
    )
