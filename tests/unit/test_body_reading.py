"""Request bodies read with their long base64 strings (a Bundle's document, in JSON or in FHIR XML)
taken apart from the parser, and base64 checked a part at a time: the same data, and the same
refusals, as reading them whole."""
import base64
import binascii
import codecs
import json
import os
import re

import orjson
import pytest
from hypothesis import given, settings, strategies as st

from gateway import base64text
from gateway.fhir import formats, xml_writer
from gateway.refusal import Refused

LONG = base64.b64encode(os.urandom(formats.LONG_DATA)).decode()   # over LONG_DATA characters
OTHER = base64.b64encode(os.urandom(formats.LONG_DATA + 3)).decode()


def same_as_the_parser(data) -> None:
    body = json.dumps(data).encode()
    assert formats._apart(body, orjson.loads) == orjson.loads(body) == data
    assert formats.load_json(bytearray(codecs.BOM_UTF8 + body)) == data


def test_long_strings_are_put_back_where_they_stood():
    same_as_the_parser({"resourceType": "Bundle", "entry": [
        {"resource": {"resourceType": "Binary", "data": LONG}}, {"resource": {"resourceType": "Binary", "data": OTHER}},
        {"resource": {"resourceType": "Binary", "data": LONG}}], "list": [LONG, [OTHER]]})


@pytest.mark.parametrize("data", [
    {"text": f'before "{LONG}" after'},        # inside another string, between escaped quotes
    {"text": f'{LONG}"', "data": OTHER},       # a quote after it, escaped
    {"text": f'"{LONG}', "data": OTHER},       # a quote before it, escaped
    {LONG: "a key, not a value"},
    {"slashes": LONG.replace("/", "\\/")},     # escaped in the JSON text only where json.dumps does
])
def test_a_run_of_base64_that_is_not_a_whole_string_value_is_left_to_the_parser(data):
    same_as_the_parser(data)


@settings(max_examples=60, deadline=None)
@given(st.recursive(st.booleans() | st.integers(-10, 10) | st.sampled_from([LONG, OTHER, '"', "\\", "x"]),
                    lambda inner: st.lists(inner, min_size=1, max_size=3)
                    | st.dictionaries(st.sampled_from(["data", "a", LONG]), inner, min_size=1, max_size=3),
                    max_leaves=8))
def test_any_json_reads_as_the_parser_reads_it(data):
    same_as_the_parser({"value": data})


def _at(data, location: str):
    for step in location.strip("/").split("/"):
        key = step.replace("~1", "/").replace("~0", "~")
        data = data[int(key)] if isinstance(data, list) else next(v for k, v in data.items() if k[:64] == key)
    return data


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.integers(0, 3) | st.sampled_from([LONG, "x"]),
                    lambda inner: st.dictionaries(st.sampled_from(["given", "_given", "a", LONG]),
                                                  inner | st.lists(inner.filter(lambda v: not isinstance(v, list)),
                                                                   max_size=3), max_size=3),
                    max_leaves=10))
def test_json_is_refused_exactly_where_it_holds_a_null_or_an_empty_object_or_array(data):
    """What FHIR's JSON does not allow, and the FHIR models took for an element left out. (An
    array is an element's value: FHIR has no array of arrays, and its models refuse one.)"""
    def allowed(value, aligned: bool = False) -> bool:
        if isinstance(value, dict):
            return bool(value) and all(
                v is not None and allowed(v, (k[1:] if k.startswith("_") else "_" + k) in value)
                for k, v in value.items())
        if isinstance(value, list):
            return bool(value) and all((v is None and aligned) or (v is not None and allowed(v)) for v in value)
        return True
    body = json.dumps({"value": data}).encode()
    try:
        read = formats.load_json(body)
    except Refused as refused:
        assert not allowed({"value": data})
        assert _at({"value": data}, refused.location) in (None, [], {}), refused.location
    else:
        assert allowed({"value": data}) and read == {"value": data}


def test_long_xml_values_are_put_back_where_they_stood():
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Binary", "contentType": "application/pdf", "data": LONG}},
        {"resource": {"resourceType": "Binary", "contentType": "application/pdf", "data": OTHER}},
        {"resource": {"resourceType": "Patient", "photo": [{"contentType": "image/png", "data": LONG}]}}]}
    written = xml_writer.to_xml(bundle)
    assert formats.from_xml(written) == formats.from_xml(bytearray(written)) == bundle
    single_quoted = written.replace(f'value="{LONG}"'.encode(), f"value='{LONG}'".encode())
    assert single_quoted != written and formats.from_xml(single_quoted) == bundle


@pytest.mark.parametrize("narrative", [f'<p title="{LONG}">x</p>', f"<p>{LONG}</p>"])
def test_a_run_in_a_narrative_is_left_to_the_parser(narrative):
    patient = {"resourceType": "Patient", "text": {"status": "generated", "div":
               f'<div xmlns="http://www.w3.org/1999/xhtml">{narrative}</div>'}, "name": [{"text": LONG}]}
    assert formats.from_xml(xml_writer.to_xml(patient)) == patient


def test_what_the_parser_refuses_is_said_of_the_body_as_sent():
    with pytest.raises(Refused, match=re.escape(f"not a decimal: '{LONG[:40]}'")):
        formats.from_xml(f'<Observation xmlns="http://hl7.org/fhir"><valueQuantity><value value="{LONG}"/>'
                         '</valueQuantity></Observation>'.encode())


@pytest.mark.parametrize("body, told", [
    ('{"a": "é"}'.encode("utf-16"), "the body is in UTF-16 (its byte order mark says so)"),
    ('{"a": "é"}'.encode("utf-32"), "the body is in UTF-32 (its byte order mark says so)"),
    ('{"a": "é"}'.encode("cp1252"), "byte 0xE9 at offset 7 is not UTF-8"),
    ('{"a": "é"}'.encode("utf-16-be"), "the body is in UTF-16 or UTF-32 (NUL bytes begin it)"),
    ('{"a": "é"}'.encode("utf-32-le"), "the body is in UTF-16 or UTF-32 (NUL bytes begin it)")])
def test_json_that_is_not_utf8_is_refused_naming_its_first_byte_outside_it(body, told):
    """orjson said "str is not valid UTF-8: surrogates not allowed: line 1 column 1 (char 0)" of
    each, wherever its first wrong byte was."""
    with pytest.raises(Refused, match=re.escape(told)):
        formats.load_json(body)


def test_json_too_deep_or_not_json_is_refused():
    with pytest.raises(Refused, match="nests deeper"):
        formats.load_json(b"[" * 60 + b"]" * 60)
    with pytest.raises(Refused, match="the body is not JSON"):
        formats.load_json('{"a": é}'.encode())


@pytest.mark.parametrize("body, where", [
    ('{"resourceType": "Patient", "gender": "male", "gender": "female"}', "/gender"),
    ('{"name": [{"family": "A"}, {"family": "A", "given": ["P"], "family": "B"}]}', "/name/1/family"),
    # Its values long runs of base64, read apart from the parser: still found.
    (f'{{"entry": [{{"resource": {{"data": "{LONG}", "data": "{OTHER}"}}}}]}}', "/entry/0/resource/data"),
    (f'{{"{LONG}": 1, "{LONG}": 2}}', "/" + LONG[:64].replace("/", "~1")),
], ids=["top", "nested", "long-values", "long-keys"])
def test_a_key_given_twice_in_an_object_is_refused_at_its_path(body, where):
    """orjson keeps the last of them, silently: a subject or a securityLabel sent twice lost one."""
    for sent in (body.encode(), codecs.BOM_UTF8 + body.encode()):
        with pytest.raises(Refused) as twice:
            formats.load_json(sent)
        assert twice.value.location == where and twice.value.status == 400
    # The same key in two objects is two keys.
    assert formats.load_json(b'[{"a": 1}, {"a": 2, "b": {"a": 3}}]') == [{"a": 1}, {"a": 2, "b": {"a": 3}}]


VALID = "QUJD" * (3 * base64text.CHECKED // 4)   # three parts of valid base64


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet="ABCabc019+/=\n !é", max_size=8), st.integers(0, len(VALID) // 4),
       st.text(alphabet="ABCabc019+/=\n !é", max_size=8))
def test_base64_is_checked_a_part_at_a_time_as_decode_refuses_it(inserted, group, tail):
    text = VALID[:4 * group] + inserted + VALID[4 * group:] + tail
    try:
        base64text.decode(text)
        refused_whole = False
    except (binascii.Error, ValueError):
        refused_whole = True
    try:
        base64text.check(text)
        refused_in_parts = False
    except (binascii.Error, ValueError):
        refused_in_parts = True
    assert refused_in_parts == refused_whole


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=40), st.booleans())
def test_base64_whose_final_padding_is_left_out_reads_as_the_bytes_it_encodes(data, received):
    """OBX-5 (`padded=False`): five of the ANS's example messages leave the final `=` out; what it
    stood for is certain. As text or as the received bytes of a long run, the same."""
    encoded = base64.b64encode(data)
    unpadded = encoded.rstrip(b"=")
    as_read = memoryview(unpadded) if received else unpadded.decode()
    assert base64text.decode(as_read, padded=False) == data
    assert base64text.decode(memoryview(encoded) if received else encoded.decode(), padded=False) == data
    if unpadded != encoded:
        with pytest.raises(binascii.Error):
            base64text.decode(as_read)


@pytest.mark.parametrize("text", ["QUJDQQ=", "QUJD=QQ", "QQ==QQ", "QUJDQ", "QU=JDQQ", "QUJDQ é"])
def test_base64_short_of_a_group_is_refused_where_padding_or_a_group_is_wrong(text):
    """Padding given in part or inside, or a last group of one character (which stands for no whole
    byte), is no base64 left unpadded."""
    with pytest.raises((binascii.Error, ValueError)):
        base64text.decode(text, padded=False)
