"""The text a resource is stored as (repository.dumps): orjson's where it can, the standard
library's where orjson refuses. Stored texts are served as they are, hashed into the audit chain and
read back for each change, so they must read back as the very values written."""
import json

from hypothesis import given, settings, strategies as st

from gateway.storage.repository import dumps


def standard(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


KEYS = st.text(max_size=8)
TEXT = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=20)   # no lone surrogate
INTEGERS = st.integers(min_value=-(2 ** 63), max_value=2 ** 64 - 1)
BEYOND_64_BITS = st.one_of(st.integers(min_value=2 ** 64), st.integers(max_value=-(2 ** 63) - 1))
FLOATS = st.floats(allow_nan=False, allow_infinity=False)


def values(scalars):
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
                        max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(values(st.none() | st.booleans() | INTEGERS | TEXT))
def test_without_floats_the_text_is_the_standard_library_s(value):
    """Characters beyond ASCII as they are, control characters escaped, integers as written."""
    assert dumps({"resourceType": "Basic", "x": value}) == standard({"resourceType": "Basic", "x": value})


@settings(max_examples=300, deadline=None)
@given(values(st.none() | INTEGERS | FLOATS | TEXT))
def test_floats_read_back_as_the_same_numbers(value):
    resource = {"resourceType": "Basic", "x": value}
    assert json.loads(dumps(resource)) == resource


@settings(max_examples=100, deadline=None)
@given(BEYOND_64_BITS, FLOATS)
def test_an_integer_beyond_64_bits_is_written_exactly(big, number):
    """orjson refuses it: the whole resource is then the standard library's text."""
    resource = {"resourceType": "Observation", "valueQuantity": {"value": big}, "component": [{"value": number}]}
    text = dumps(resource)
    assert text == standard(resource)
    assert json.loads(text)["valueQuantity"]["value"] == big


def test_a_small_float_s_exponent_is_the_one_difference():
    text = dumps({"resourceType": "Observation", "valueQuantity": {"value": 1e-07}})
    assert text == '{"resourceType":"Observation","valueQuantity":{"value":1e-7}}'
    assert json.loads(text)["valueQuantity"]["value"] == 1e-07
