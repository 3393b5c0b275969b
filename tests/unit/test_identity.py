import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.refusal import Refused
from gateway.cda.header import II
from gateway.mapping.identity import check_ins, contradicted_traits, identifier_value, ins_key_is_valid


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


@given(st.lists(st.sampled_from(["", " ", "."]), min_size=14, max_size=14))
def test_an_ins_as_printed_is_stored_as_its_15_characters_and_an_ipp_as_written(separators):
    """Whatever spaces or dots group it ("1 85 06 75 112 045 54", "2.92.08…"), an INS is matched and
    kept as the 15 characters its key is checked on; a hospital's IPP is its own, kept as written."""
    ins = "185067511204554"
    printed = "".join(digit + separator for digit, separator in zip(ins, separators)) + ins[-1]
    assert identifier_value("urn:oid:1.2.250.1.213.1.4.10", printed) == ins
    assert identifier_value("1.2.250.1.213.1.4.8", printed) == ins
    assert ins_key_is_valid(identifier_value("1.2.250.1.213.1.4.8", printed))
    assert identifier_value("urn:oid:1.2.250.1.71.4.2.7.1", printed) == printed


@pytest.mark.parametrize("registered, stated, contradicted", [
    ({"gender": "male", "birthDate": "1985-06-12"}, {"gender": "female", "birthDate": "1990-01-01"},
     ["sex", "birth date"]),
    ({"gender": "male", "birthDate": "1985-06-12"}, {"gender": "male", "birthDate": "1985-06-13"}, ["birth date"]),
    ({"gender": "male", "birthDate": "1985-06-12"}, {"gender": "female", "birthDate": "1985-06-12"}, ["sex"]),
    # To the precision both give; a trait unsaid, or unknown, or other, contradicts nothing.
    ({"gender": "male", "birthDate": "1985-06-12"}, {"birthDate": "1985"}, []),
    ({"gender": "male", "birthDate": "1985"}, {"birthDate": "1986-06"}, ["birth date"]),
    ({"gender": "male", "birthDate": "1985-06-12"}, {"gender": "unknown"}, []),
    ({"gender": "other"}, {"gender": "female"}, []),
    ({}, {"gender": "female", "birthDate": "1990-01-01"}, []),
    # Names are not compared: spelt otherwise by right.
    ({"name": [{"family": "MARTIN"}]}, {"name": [{"family": "MARTIN-DURAND"}]}, []),
])
def test_the_traits_that_contradict_the_registered_identity(registered, stated, contradicted):
    assert contradicted_traits(registered, stated) == contradicted
