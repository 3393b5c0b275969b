import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.refusal import Refused
from gateway.cda.header import II
from gateway.mapping.identity import check_ins, ins_key_is_valid


def key(first13: str) -> str:
    return "%02d" % (97 - int(first13) % 97)


def test_the_ans_test_ins_is_valid():
    assert check_ins(II("1.2.250.1.213.1.4.10", "279035121518989"), "/x") == "279035121518989"


def test_a_wrong_key_is_refused_with_its_location():
    with pytest.raises(Refused) as refused:
        check_ins(II("1.2.250.1.213.1.4.10", "279035121518900"), "/ClinicalDocument/recordTarget")
    assert refused.value.location == "/ClinicalDocument/recordTarget"
    assert "key" in refused.value.reason


def test_corsican_departments_use_their_numeric_substitute():
    base = "185062A012345"
    numeric = base.replace("2A", "19")
    assert ins_key_is_valid(base + key(numeric))


@given(st.integers(1, 2), st.integers(0, 99), st.integers(1, 12), st.integers(1, 95),
       st.integers(1, 989), st.integers(1, 999))
def test_computed_keys_are_accepted_and_any_other_key_refused(sex, year, month, dept, commune, order):
    first13 = f"{sex}{year:02d}{month:02d}{dept:02d}{commune:03d}{order:03d}"
    assert ins_key_is_valid(first13 + key(first13))
    wrong = "%02d" % ((int(key(first13)) % 97) + 1)
    assert not ins_key_is_valid(first13 + wrong)
