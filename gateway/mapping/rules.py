"""The DMP's acceptance rules for a CDA document, checked before anything is stored."""
from __future__ import annotations

from gateway.cda.errors import DocumentRefused
from gateway.cda.header import CD, CdaHeader

from . import codes
from .dates import InvalidTime, ts_to_fhir
from .identity import check_ins, ins_of


def check_document(header: CdaHeader) -> str:
    """Refuse what the DMP would refuse; return the patient's INS."""
    ins = ins_of(header.patient.ids)
    if ins is None:
        raise DocumentRefused(
            "the patient has no INS (recordTarget/patientRole/id with root 1.2.250.1.213.1.4.8, .9, .10 or .11); "
            "the shared record is indexed by INS",
            location=f"{CD}/recordTarget/patientRole/id",
        )
    ins_value = check_ins(ins, f"{CD}/recordTarget/patientRole/id[@root='{ins.root}']")
    if not header.authors:
        raise DocumentRefused("the document has no author (author/assignedAuthor with an id or a name)",
                              location=f"{CD}/author")
    if header.code.system not in (None, "2.16.840.1.113883.6.1"):
        raise DocumentRefused(
            f"the document type must be a LOINC code (codeSystem 2.16.840.1.113883.6.1), not {header.code.system}",
            location=f"{CD}/code/@codeSystem",
        )
    if header.code.code not in codes.DOCUMENT_TYPES:
        raise DocumentRefused(
            f"document type {header.code.code} is not in the DMP list of document types (JDV_J07/J66)",
            location=f"{CD}/code/@code",
        )
    if header.custodian is None or not header.custodian.ids:
        raise DocumentRefused("the custodian organisation and its identifier are missing",
                              location=f"{CD}/custodian/assignedCustodian/representedCustodianOrganization/id")
    for location, value in _times(header):
        try:
            ts_to_fhir(value)
        except InvalidTime as exc:
            raise DocumentRefused(str(exc), location=location) from None
    if header.body.level == "N1" and header.body.media_type not in codes.N1_FORMATS:
        raise DocumentRefused(
            f"unstructured body media type {header.body.media_type} is not one the DMP accepts "
            f"({', '.join(sorted(codes.N1_FORMATS))})",
            location=f"{CD}/component/nonXMLBody/text/@mediaType",
        )
    return ins_value


def _times(header: CdaHeader):
    yield f"{CD}/effectiveTime/@value", header.effective_time
    if header.patient.birth_time:
        yield f"{CD}/recordTarget/patientRole/patient/birthTime/@value", header.patient.birth_time
    for i, event in enumerate(header.service_events, 1):
        for name, value in (("low", event.low), ("high", event.high)):
            if value:
                yield f"{CD}/documentationOf[{i}]/serviceEvent/effectiveTime/{name}/@value", value
    for name, value in (("low", header.encounter_low), ("high", header.encounter_high)):
        if value:
            yield f"{CD}/componentOf/encompassingEncounter/effectiveTime/{name}/@value", value
