"""What a refused input names of its patient, read from what may be any bytes or any JSON: the record
it names is looked up with it, in the unit of work that records the refusal, so reading it must
never fail (a refusal answered 500) nor look up without bound."""
import json

from hypothesis import given, settings, strategies as st

from conftest import SAMPLES
from gateway.cda.header import II, named_patient_ids
from gateway.hl7v2.er7 import Message
from gateway.mapping.hl7v2 import cx_ids
from gateway.services.ingest import NAMED_IDENTIFIERS
from gateway.services.provide import _named_patient

DOCUMENT = (SAMPLES / "cda" / "cr-biologie-martin.xml").read_bytes()
MARTIN = [II("1.2.250.1.213.1.4.10", "185067511204554"), II("1.2.250.1.213.1.1.9.1001", "900000001")]
RECORD_TARGET_END = DOCUMENT.index(b"</recordTarget>") + len(b"</recordTarget>")


@given(st.integers(0, len(DOCUMENT)))
def test_a_document_cut_anywhere_names_its_patient_once_its_record_target_is_whole(length):
    """Only its first bytes are kept of a document over the size limit."""
    assert named_patient_ids(DOCUMENT[:length]) == (MARTIN if length >= RECORD_TARGET_END else [])


@given(st.binary(max_size=300) | st.builds(lambda head, tail: head + tail, st.sampled_from([
    b'<?xml version="1.0" encoding="x-unknown"?>', b'<!DOCTYPE d [<!ENTITY e SYSTEM "http://127.0.0.1:9/">]>',
    b"\xff\xfe<\x00", b'<ClinicalDocument xmlns="urn:hl7-org:v3"><recordTarget>']), st.binary(max_size=200)))
def test_any_bytes_name_at_most_a_list_of_identifiers(data):
    ids = named_patient_ids(data)
    assert isinstance(ids, list) and all(isinstance(ii, II) and ii.root for ii in ids)


def test_identifiers_are_read_as_written_and_not_at_all_under_a_document_type():
    """libxml2 substitutes a document type's internal entities in attributes, whatever the parser's
    settings: nothing is read of a document that declares one (parse_cda refuses it)."""
    role = (b'<ClinicalDocument xmlns="urn:hl7-org:v3"><recordTarget><patientRole><id root=" 1.2.250.1.213.1.4.10 " '
            b'extension="%s"/><id extension="no-root"/></patientRole></recordTarget></ClinicalDocument>')
    assert named_patient_ids(role % b" 1850 ") == [II("1.2.250.1.213.1.4.10", "1850")]
    assert named_patient_ids(b'<!DOCTYPE d [<!ENTITY ins "185067511204554">]>' + role % b"&ins;") == []
    assert named_patient_ids(b'<!DOCTYPE ClinicalDocument>' + role % b"1850") == []


MESSAGE = (SAMPLES / "hl7v2" / "mdm-1-t02-cr-imagerie-irm-lefevre.hl7").read_bytes()
PID_END = MESSAGE.index(b"\n", MESSAGE.index(b"\nPID|") + 1)


@given(st.integers(0, len(MESSAGE)), st.sampled_from([b"", b"\x0b", b"\xef\xbb\xbf"]))
def test_the_first_bytes_of_a_message_name_its_patient_once_its_pid_is_whole(length, start):
    """What is kept of a message too large, or of a frame never ended: its last segment may be cut."""
    read = Message.leading_segments(start + MESSAGE[:length])
    assert (read is not None and read.first("PID") is not None) == (length > PID_END)
    if length > PID_END:
        assert cx_ids(read.first("PID"), 3) == cx_ids(Message.from_bytes(MESSAGE).first("PID"), 3) != []


@given(st.binary(max_size=400) | st.builds(lambda tail: b"MSH|^~\\&|" + tail, st.binary(max_size=400)))
def test_any_first_bytes_read_as_a_message_or_none(data):
    assert Message.leading_segments(data) is None or isinstance(Message.leading_segments(data), Message)


class Lookups:
    """A unit of work that knows no patient, and counts what is asked of it."""

    def __init__(self):
        self.asked = []

    def find_by_identifier(self, res_type, system, value):
        assert isinstance(system, str) and isinstance(value, str)
        self.asked.append((system, value))

    def current(self, res_type, res_id):
        assert isinstance(res_id, str)
        self.asked.append(res_id)

    def patient_record(self, patient_id):
        return patient_id


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                        st.sampled_from(["entry", "resource", "subject", "reference", "identifier", "system",
                                         "value", "fullUrl", "resourceType"]), inner, max_size=4), max_leaves=30)


@settings(max_examples=300)
@given(JSON)
def test_any_json_read_as_a_refused_submission_names_no_known_record_and_raises_nothing(bundle):
    named = _named_patient(Lookups(), bundle)
    assert named.record is None and len(named.identifiers) <= NAMED_IDENTIFIERS
    assert all(isinstance(i, str) and "|" in i for i in named.identifiers)


def test_a_submission_s_subject_is_looked_up_by_its_first_identifiers_only():
    """A conditional reference may list thousands of identifiers: each was a look-up under the write lock."""
    reference = "Patient?" + "&".join(f"identifier=urn:oid:1.2.3|{n}" for n in range(5000))
    uow = Lookups()
    bundle = {"entry": [{"resource": {"resourceType": "List", "subject": {"reference": reference}}},
                        {"fullUrl": "urn:uuid:p", "resource": {"resourceType": "Patient", "identifier": [
                            {"system": "urn:oid:1.2.250.1.213.1.4.10", "value": "1850 6751 1204 554"}]}},
                        {"resource": {"resourceType": "DocumentReference", "subject": {"reference": "urn:uuid:p"}}}]}
    named = _named_patient(uow, json.loads(json.dumps(bundle)))
    assert uow.asked == [("urn:oid:1.2.3", str(n)) for n in range(NAMED_IDENTIFIERS)] + [
        ("urn:oid:1.2.250.1.213.1.4.10", "185067511204554")]
    # No record is known: the identifiers are kept, for the record made later (the first ones).
    assert named.record is None and named.identifiers == tuple(f"urn:oid:1.2.3|{n}" for n in range(NAMED_IDENTIFIERS))


def test_an_iti105_document_refused_before_it_is_a_bundle_names_its_subject():
    document = {"resourceType": "DocumentReference", "subject": {"identifier": {
        "system": "urn:oid:1.2.250.1.213.1.4.10", "value": "185067511204554"}}}
    assert _named_patient(Lookups(), document).identifiers == ("urn:oid:1.2.250.1.213.1.4.10|185067511204554",)
