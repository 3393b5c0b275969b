"""The write policy (gateway/access/writes.py): which requester may open a unit of work for which
`Write`, role by role, as the DMP's access matrix and L1111-17 give it."""
import pytest

from gateway.access import AccessContext, AccessRefused
from gateway.access.context import EMERGENCY
from gateway.access.writes import Write, changeable_labels, may, reprocessing, require

F, C, P, H, A, R, X = (Write.FEED, Write.CONSENT, Write.PERSONAL, Write.CHANGE, Write.ARCHIVE, Write.REPROCESS,
                       Write.RECORD)
PERMITTED = {
    "system": {X, F, H, R},
    "doctor": {X, F, H, A},
    "nurse": {X, F, H, A},
    "patient": {X, C, P, H, A},
    "representative": {X, C, P, H, A},
    "doctor, emergency": {X},
    "occupational-doctor": {X},
    "regulator": {X},
    "insurer": {X},
    "admin": {X, R},
}


def requester(name: str) -> AccessContext:
    role, _, purpose = name.partition(", ")
    return AccessContext(role=role, subject="899900000012", purpose=EMERGENCY if purpose else "care",
                         patient_ins="185067511204554" if role in ("patient", "representative") or purpose else None)


@pytest.mark.parametrize("name", PERMITTED)
def test_each_role_may_open_exactly_its_writes(name):
    access = requester(name)
    assert {write for write in Write if may(access, write)} == PERMITTED[name]
    for write in set(Write) - PERMITTED[name]:
        with pytest.raises(AccessRefused) as refused:
            require(access, write)
        assert refused.value.status == 403 and refused.value.code == "forbidden"
        assert refused.value.reason == f"the role {access.role} may not {write.value}"


@pytest.mark.parametrize("name", PERMITTED)
def test_a_reprocessed_message_runs_as_a_feeding_system_named_after_its_operator(name):
    access = requester(name)
    if R not in PERMITTED[name]:
        with pytest.raises(AccessRefused):
            reprocessing(access)
        return
    feeder = reprocessing(access)
    assert (feeder.role, feeder.subject) == ("system", "reprocessed by 899900000012")
    assert may(feeder, Write.REPROCESS) and may(feeder, Write.FEED)


LABELS = {   # (producer, masked by the patient) -> the visibility labels each role may change
    "system": {(False, False): set(), (True, False): {"MASQUE_PS"}, (True, True): set()},
    "doctor": {(False, False): {"INVISIBLE_PATIENT"}, (True, False): {"INVISIBLE_PATIENT", "MASQUE_PS"},
               (True, True): {"INVISIBLE_PATIENT"}},
    "patient": {key: {"MASQUE_PS", "INVISIBLE_REPRESENTANTS_LEGAUX"} for key in ((False, False), (True, True))},
    "representative": {key: {"MASQUE_PS"} for key in ((False, False), (True, True))},
    "doctor, emergency": {(True, False): set()},
    "insurer": {(True, False): set()},
}


@pytest.mark.parametrize("name", LABELS)
def test_each_role_changes_exactly_its_visibility_labels(name):
    """A feeding system lifts its own MASQUE_PS (MODIF_CONF_CODE), as its professionals may with a
    PATCH, and never the patient's."""
    for (producer, masked_by_patient), labels in LABELS[name].items():
        assert changeable_labels(requester(name), producer, masked_by_patient) == labels, (producer, masked_by_patient)
