"""The DMP's acceptance rules for a CDA document, checked before anything is stored."""
from __future__ import annotations

from gateway.refusal import Refused
from gateway.cda.header import CD, CdaHeader

from . import codes, valuesets
from .dates import InvalidTime, ts_to_fhir
from .document import entity_key, practice_setting
from .identity import check_ins, ins_of


def check_document(header: CdaHeader) -> str:
    """Refuse what the DMP would refuse; return the patient's INS."""
    ins = ins_of(header.patient.ids)
    if ins is None:
        raise Refused(
            "the patient has no INS (recordTarget/patientRole/id with root 1.2.250.1.213.1.4.8, .9, .10 or .11); "
            "the shared record is indexed by INS",
            location=f"{CD}/recordTarget/patientRole/id",
        )
    ins_value = check_ins(ins, f"{CD}/recordTarget/patientRole/id[@root='{ins.root}']")
    if not header.authors:
        raise Refused("the document has no author (author/assignedAuthor with an id or a name)",
                              location=f"{CD}/author")
    if codes.document_type(header.code.system, header.code.code) is None:
        raise Refused(
            f"document type {header.code.code} (code system {header.code.system}) is not in the CI-SIS list of "
            "document types JDV_J07 (LOINC or TRE_A05)", location=f"{CD}/code/@code")
    for location, value_set, code in _coded(header):
        if valuesets.display(value_set, code.system, code.code) is None:
            raise Refused(f"code {code.code} (code system {code.system}) is not in the CI-SIS value set "
                                  f"JDV_{value_set}", location=location)
    # Mandatory in the CI-SIS header, and in every DocumentReference PDSm and MHD describe
    # (attachment.language, context.facilityType, context.practiceSetting): without them the
    # document was registered, and every read of it failed the official check.
    if not header.language:
        raise Refused("the document's language (languageCode/@code, fr-FR) is missing", location=f"{CD}/languageCode")
    if header.facility_type is None:
        raise Refused("the care facility's type (JDV_J02) is missing",
                      location=f"{CD}/componentOf/encompassingEncounter/location/healthCareFacility/code")
    if practice_setting(header) is None:
        raise Refused("the practice setting (JDV_J04) is missing: a service event's performer's organisation's "
                      "standardIndustryClassCode, or the legal authenticator's",
                      location=f"{CD}/documentationOf/serviceEvent/performer/assignedEntity/representedOrganization/"
                      "standardIndustryClassCode")
    # The custodian is found in the directory by an id with its extension (its FINESS): one
    # without was taken, and its registration a 500.
    if header.custodian is None or entity_key(header.custodian.ids) is None:
        raise Refused("the custodian organisation and its identifier (root and extension) are missing",
                      location=f"{CD}/custodian/assignedCustodian/representedCustodianOrganization/id")
    # A period's start is what PDSm requires of DocumentReference.context.period, and the CI-SIS of
    # a service event's time (low 1..1): one given an end alone was registered, and failed the
    # official check. The CI-SIS gives the encounter's low and high 0..1 each, and the ANS's own
    # examples end it without a start: the encounter gives the period only when it starts
    # (document.document_reference).
    for i, event in enumerate(header.service_events, 1):
        if event.high and not event.low:
            raise Refused("the service event's time has an end (high) and no start (low)",
                          location=f"{CD}/documentationOf[{i}]/serviceEvent/effectiveTime/low")
    for location, value in _times(header):
        try:
            ts_to_fhir(value)
        except InvalidTime as exc:
            raise Refused(str(exc), location=location) from None
    if header.patient.death_time and header.patient.deceased is False:
        raise Refused("the patient has a death time (sdtc:deceasedTime) and sdtc:deceasedInd says they are alive",
                      location=f"{CD}/recordTarget/patientRole/patient/deceasedInd/@value")
    if header.body.level == "N1" and header.body.media_type not in codes.N1_FORMATS:
        raise Refused(
            f"unstructured body media type {header.body.media_type} is not one the DMP accepts "
            f"({', '.join(sorted(codes.N1_FORMATS))})",
            location=f"{CD}/component/nonXMLBody/text/@mediaType",
        )
    return ins_value


def _times(header: CdaHeader):
    yield f"{CD}/effectiveTime/@value", header.effective_time
    if header.patient.birth_time:
        yield f"{CD}/recordTarget/patientRole/patient/birthTime/@value", header.patient.birth_time
    if header.patient.death_time:
        yield f"{CD}/recordTarget/patientRole/patient/deceasedTime/@value", header.patient.death_time
    for i, event in enumerate(header.service_events, 1):
        for name, value in (("low", event.low), ("high", event.high)):
            if value:
                yield f"{CD}/documentationOf[{i}]/serviceEvent/effectiveTime/{name}/@value", value
    for name, value in (("low", header.encounter_low), ("high", header.encounter_high)):
        if value:
            yield f"{CD}/componentOf/encompassingEncounter/effectiveTime/{name}/@value", value


def _coded(header: CdaHeader):
    """(location, value set, code) of each metadata code the DMP checks against a CI-SIS value set."""
    if header.confidentiality:
        yield f"{CD}/confidentialityCode", "J08", header.confidentiality
    if header.facility_type:
        yield f"{CD}/componentOf/encompassingEncounter/location/healthCareFacility/code", "J02", header.facility_type
    for i, event in enumerate(header.service_events, 1):
        if event.practice_setting:
            yield (f"{CD}/documentationOf[{i}]/serviceEvent/performer/assignedEntity/representedOrganization/"
                   "standardIndustryClassCode", "J04", event.practice_setting)
    for i, author in enumerate(header.authors, 1):
        if author.specialty:
            yield f"{CD}/author[{i}]/assignedAuthor/code", "J01", author.specialty
