"""A DICOM object sent as a document: the imaging manifest (a Key Object Selection, KOS) that an
imaging centre publishes beside its report, as IHE XDS-I.b and the DMP's imaging project (DRIM-M)
have it. pydicom reads what the gateway checks of it, and no further."""
from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass

from pydicom import config
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial

from gateway.refusal import Refused

# The DICOM UID registry, the code system of a DICOM object's format code (TRE_A09): the SOP
# class of the object (a KOS: 1.2.840.10008.5.1.4.1.1.88.59).
UID_REGISTRY = "urn:oid:1.2.840.10008.2.6.1"
MEDIA_TYPE = "application/dicom"
KOS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"
SEXES = {"M": "male", "F": "female", "O": "other"}
# The last element read, the Current Requested Procedure Evidence Sequence (the studies it
# references): a manifest's Content Sequence, one item per image, comes after it, and the pixel data
# of any object. Read whole, a manifest of 2,000 images (891 KB) took 211 ms; read to there, 47 ms.
LAST_READ = 0x0040A375
# pydicom warns, and logs, about what it finds odd in a header, and may quote it (a value its VR
# does not allow: a birth date, a name): a value is read as it is, and its warnings are not kept. The
# sender is told what matters, in the refusal.
config.settings.reading_validation_mode = config.IGNORE
logging.getLogger("pydicom").setLevel(logging.CRITICAL)
warnings.filterwarnings("ignore", module="pydicom")


@dataclass(frozen=True)
class DicomObject:
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uids: tuple[str, ...]
    # (issuer's OID or None, number): the accession numbers of the exams it was made for.
    accession_numbers: tuple[tuple[str | None, str], ...]
    # (assigning authority's OID, identifier): Patient ID and Other Patient IDs, when an ISO
    # Universal Entity ID names their issuer.
    patient_ids: tuple[tuple[str, str], ...]
    # The patient's traits as a FHIR Patient states them (gender, birthDate), for the identity check.
    patient_traits: dict


def dicom_declaration(content_type: str, format_: dict) -> str | None:
    """What declares a document a DICOM object, its media type or its format, as a refusal names it;
    None when nothing does."""
    if content_type.split(";")[0].strip().lower() == MEDIA_TYPE:
        return f"contentType {content_type}"
    return f"format {format_.get('code')}" if format_.get("system") == UID_REGISTRY else None


def read_dicom(data: bytes, declared: str) -> DicomObject:
    """What a DICOM file (PS3.10: a 128-byte preamble, DICM, then its data set) says of itself: its
    class and instance, its studies and exams, its patient. `declared` says what announced it as
    DICOM, for the refusal of data that is not."""
    try:
        dataset = read_partial(io.BytesIO(data), stop_when=lambda tag, vr, length: tag > LAST_READ)
        sop_class = str(dataset.get("SOPClassUID") or dataset.file_meta.get("MediaStorageSOPClassUID") or "")
        sop_instance = str(dataset.get("SOPInstanceUID") or dataset.file_meta.get("MediaStorageSOPInstanceUID") or "")
        studies = [str(dataset.get("StudyInstanceUID") or "")]
        for evidence in dataset.get("CurrentRequestedProcedureEvidenceSequence") or []:
            studies.append(str(evidence.get("StudyInstanceUID") or ""))
        accessions = [_accession_number(item) for item in [dataset, *(dataset.get("ReferencedRequestSequence") or [])]]
        identifiers = [_patient_id(dataset)] + [_patient_id(other) for other in
                                                 dataset.get("OtherPatientIDsSequence") or []]
        traits = {"gender": SEXES.get(str(dataset.get("PatientSex") or "").strip().upper()),
                  "birthDate": _date(str(dataset.get("PatientBirthDate") or ""))}
    except InvalidDicomError:
        raise Refused(f"{declared} declares a DICOM object, and the data is not DICOM: a DICOM file (PS3.10) "
                      "begins with a 128-byte preamble and DICM") from None
    except Exception as exc:   # pydicom's errors on a malformed data set are of many types
        raise Refused(f"the DICOM object cannot be read ({type(exc).__name__})") from None
    if not sop_class or not sop_instance:
        raise Refused("the DICOM object has no SOP Class UID or no SOP Instance UID (0008,0016 and 0008,0018)")
    return DicomObject(sop_class, sop_instance, tuple(dict.fromkeys(s for s in studies if s)),
                       tuple(dict.fromkeys(a for a in accessions if a)),
                       tuple(dict.fromkeys(i for i in identifiers if i)),
                       {k: v for k, v in traits.items() if v})


def _iso_issuer(issuers) -> str:
    """The OID among a DICOM issuer's Universal Entity IDs (type ISO); empty when none is."""
    return next((str(q.get("UniversalEntityID") or "").strip() for q in issuers or []
                 if str(q.get("UniversalEntityIDType") or "").strip() == "ISO"), "")


def _patient_id(item) -> tuple[str, str] | None:
    value = str(item.get("PatientID") or "").strip()
    issuer = _iso_issuer(item.get("IssuerOfPatientIDQualifiersSequence"))
    return (issuer, value) if value and issuer else None


def _accession_number(item) -> tuple[str | None, str] | None:
    value = str(item.get("AccessionNumber") or "").strip()
    return (_iso_issuer(item.get("IssuerOfAccessionNumberSequence")) or None, value) if value else None


def _date(value: str) -> str | None:
    """A DA (YYYYMMDD) as a FHIR date; None when it is not one."""
    value = value.strip()
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) == 8 and value.isdigit() else None
