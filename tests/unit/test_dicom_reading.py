"""The header of a DICOM object sent as a document (gateway/dicom.py): what an imaging manifest says
of itself, and a refusal, never another error, for bytes that are not one."""
import pytest
from hypothesis import given, settings, strategies as st

from conftest import imaging_manifest
from gateway.dicom import KOS_SOP_CLASS, read_dicom
from gateway.refusal import Refused

MANIFEST = imaging_manifest()


def test_a_manifest_says_its_class_instance_studies_exam_and_patient():
    read = read_dicom(MANIFEST, "contentType application/dicom")
    assert (read.sop_class_uid, read.sop_instance_uid, read.study_instance_uids) == (
        KOS_SOP_CLASS, "1.2.250.1.999.1.7.1", ("1.2.250.1.999.1.7.2",))
    assert read.patient_ids == (("1.2.250.1.213.1.4.10", "212057501802305"),)
    assert read.accession_numbers == (("1.2.250.1.999.1.7.5", "105234751"),)
    assert read.patient_traits == {"gender": "female", "birthDate": "2012-05-14"}


@pytest.mark.parametrize("birth, sex, traits", [
    ("", "", {}), ("2012", "F", {"gender": "female"}), ("20120514", "U", {"birthDate": "2012-05-14"}),
], ids=["none", "a-year-alone", "sex-unknown"])
def test_a_trait_the_header_leaves_unsaid_or_unknown_is_not_stated(birth, sex, traits):
    assert read_dicom(imaging_manifest(birth=birth, sex=sex), "x").patient_traits == traits


def test_data_without_the_dicom_preamble_is_refused_saying_what_a_dicom_file_begins_with():
    with pytest.raises(Refused, match="begins with a 128-byte preamble and DICM"):
        read_dicom(MANIFEST[132:], "contentType application/dicom")


@settings(max_examples=300)
@given(st.data())
def test_any_change_to_a_manifest_reads_as_a_manifest_or_is_refused(data):
    """A byte range replaced by any bytes, or the file cut short: pydicom's many errors on a broken
    data set are one refusal (the FHIR answer's 422), never an exception of its own (a 500)."""
    start = data.draw(st.integers(0, len(MANIFEST)))
    end = data.draw(st.integers(start, min(len(MANIFEST), start + 16)))
    changed = MANIFEST[:start] + data.draw(st.binary(max_size=16)) + MANIFEST[end:]
    if data.draw(st.booleans()):
        changed = changed[:data.draw(st.integers(0, len(changed)))]
    try:
        read = read_dicom(changed, "x")
    except Refused:
        return
    assert read.sop_class_uid and read.sop_instance_uid
