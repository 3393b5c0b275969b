"""How the trail names who asked: a professional by their IdNatPs and name, a patient by their
record only (the trail outlives a destroyed record), and how the history tells the reader's own
actions from those of others, in entries written either way."""
import json

from gateway.access.audit import audit_event
from gateway.access.context import AccessContext
from gateway.space.views.history import describe

MARTIN = "185067511204554"
PATIENT = AccessContext(role="patient", subject=MARTIN, patient_ins=MARTIN, name="Paul MARTIN", address="10.0.0.7")


def event(access: AccessContext, requester_patient: str | None = "p-1") -> dict:
    return audit_event("e-1", "2026-12-05T10:00:00Z", "read", access, patient_id="p-1",
                       entity="DocumentReference/d-1", requester_patient=requester_patient)


def test_a_patient_is_named_by_their_record_and_by_nothing_of_their_identity():
    requester = event(PATIENT)["agent"][0]
    assert requester["who"] == {"reference": "Patient/p-1"} and requester["requestor"] is True
    assert requester["role"][0]["coding"][0]["code"] == "patient"
    assert MARTIN not in json.dumps(event(PATIENT)) and "MARTIN" not in json.dumps(event(PATIENT))


def test_a_patient_whose_record_is_not_found_is_not_named_by_their_ins_either():
    requester = event(PATIENT, requester_patient=None)["agent"][0]
    assert requester["who"] == {"display": "a patient whose record was not found"}
    assert MARTIN not in json.dumps(event(PATIENT, requester_patient=None))


def test_a_professional_is_named_by_their_idnatps_and_name():
    doctor = AccessContext(role="doctor", subject="899900000053", name="Dr Camille NOEL")
    requester = event(doctor, requester_patient=None)["agent"][0]
    assert requester["altId"] == "899900000053" and requester["name"] == "Dr Camille NOEL"
    assert requester["who"]["identifier"]["value"] == "899900000053"


def test_the_history_tells_the_readers_own_actions_in_entries_written_either_way():
    written_before = event(PATIENT)
    written_before["agent"][0] |= {"who": {"display": "Paul MARTIN"}, "altId": MARTIN, "name": "Paul MARTIN"}
    patient_reads = {MARTIN, "Patient/p-1"}
    assert describe(event(PATIENT), {}, patient_reads)["who"] == "Vous"
    assert describe(written_before, {}, patient_reads)["who"] == "Vous"
    # A representative reading the record: the patient's own actions are the patient's.
    assert describe(event(PATIENT), {}, {"representative:sophie"})["who"] == "Le patient"
    # Another patient's attempt on this record (named by their own record) is not the reader's.
    assert describe(event(PATIENT, requester_patient="p-2"), {}, patient_reads)["who"] == "Le patient"
