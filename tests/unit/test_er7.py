"""Reading ER7: character sets, segment terminators, escapes, components."""
import re

import pytest
from hypothesis import given, strategies as st

from gateway.hl7v2.ack import escape
from gateway.hl7v2.er7 import MAX_REPETITIONS, Encoding, Message, MessageRejected, transport_charset

PID = "PID|1||123^^^HOSP&1.2.3&ISO^PI~456^^^OTHER&&^PI||ŒUVRAY^HÉLÈNE^HÉLÈNE ZOÉ^^^^L"


def message(charset: str, *segments: str, sep: str = "\r") -> str:
    return sep.join([f"MSH|^~\\&|APP|FAC|GW|DMP|20260101||ADT^A28^ADT_A05|1|P|2.5|||||FRA|{charset}", *segments])


@pytest.mark.parametrize("charset, codec", [("UNICODE UTF-8", "utf-8"), ("8859/15", "iso8859-15")])
def test_accented_names_read_the_same_in_each_declared_charset(charset, codec):
    m = Message.from_bytes(message(charset, PID).encode(codec))
    assert m.first("PID").get(5, 1) == "ŒUVRAY"
    assert m.first("PID").get(5, 3) == "HÉLÈNE ZOÉ"


def test_latin1_and_utf8_bom():
    latin1 = Message.from_bytes(message("8859/1", "PID|1||1^^^A&1.2&ISO||HÉLÈNE").encode("iso8859-1"))
    assert latin1.first("PID").get(5) == "HÉLÈNE"
    bom = Message.from_bytes(b"\xef\xbb\xbf" + message("", "PID|1||1^^^A&1.2&ISO||H\u00c9L\u00c8NE").encode("utf-8"))
    assert bom.first("PID").get(5) == "HÉLÈNE"


def test_undeclared_bytes_that_are_not_utf8_are_refused_not_guessed():
    """The refusal said "not valid ASCII as MSH-18 declares" of an MSH-18 left empty."""
    with pytest.raises(MessageRejected) as refused:
        Message.from_bytes(message("", "PID|1||1||HÉLÈNE").encode("iso8859-1"))
    assert refused.value.location == "MSH^1^18"
    assert str(refused.value).endswith("are neither ASCII, HL7's character set when MSH-18 is empty, nor UTF-8: "
                                       "MSH-18 names the character set the message is in (8859/1, 8859/15…)")


def test_unknown_charset_is_refused():
    with pytest.raises(MessageRejected) as refused:
        Message.from_bytes(message("ISO IR87", "PID|1").encode())
    assert refused.value.code == "203"


@pytest.mark.parametrize("sep", ["\r", "\n", "\r\n"])
def test_segment_terminators(sep):
    m = Message(message("", "EVN||20260101", "PID|1||1^^^A&1.2&ISO", sep=sep), "")
    assert [s.name for s in m.segments] == ["MSH", "EVN", "PID"]
    assert m.control_id == "1" and m.message_type == ("ADT", "A28", "ADT_A05")


def test_fields_components_repetitions():
    pid = Message(message("", PID), "").first("PID")
    assert pid.get(3, 1, repetition=1) == "456"
    assert pid.get(3, 4, 2) == "1.2.3"
    assert pid.get(3, 4, 3, repetition=1) == ""
    assert pid.get(40) == ""
    assert len(pid.repetitions(3)) == 2


def test_escapes():
    seg = Message(message("", r"NTE|1||a\F\b\S\c\T\d\R\e\E\f\X41\g\.br\h\H\bold\N\i"), "").first("NTE")
    assert seg.get(3) == "a|b^c&d~e\\fAg\nhboldi"


@pytest.mark.parametrize("value, nul", [("\\X00\\", True), ("\\X4100\\", True), ("\\X41\\", False),
                                        ("\\X1001\\", False), ("\\X100\\", False), ("\\X00", False)])
def test_a_hex_escape_of_a_nul_is_refused_as_a_nul(value, nul):
    """Aligned on the escape's bytes: 10 01 holds no 00; an escape must be closed to be one."""
    parsed = Message(message("", f"NTE|1||a{value}b"), "")
    if nul:
        with pytest.raises(MessageRejected, match="NUL"):
            parsed.require_header()
    else:
        parsed.require_header()


@pytest.mark.parametrize("envelope", [["FHS|^~\\&|GAM|CH", "BHS|^~\\&|GAM|CH"], ["BHS|^~\\&|GAM|CH"]])
def test_a_batch_read_as_one_message_is_refused_saying_how_it_is_taken(envelope):
    """A batch is taken when it is received (services/feeds.py); one kept refused (not whole) and
    processed again by an operator is read as a message, and refused."""
    batch = "\r".join([*envelope, message("", "EVN||20260101").strip("\r"), "BTS|1", "FTS|1"])
    with pytest.raises(MessageRejected, match="the gateway takes a batch when it is received") as refused:
        Message(batch, "")
    assert refused.value.location == "MSH^1"


def test_a_refusal_names_the_segment_by_its_occurrence_and_the_field():
    """ERR-2 (ERL): segment, its occurrence among segments of that name, field; not its place."""
    with pytest.raises(MessageRejected) as nul:
        Message(message("", "NTE|1||a", "NTE|2||b\\X00\\c"), "").require_header()
    assert nul.value.location == "NTE^2^3" and str(nul.value).startswith("NTE-3 (segment 3)")
    with pytest.raises(MessageRejected) as repeated:
        Message(message("", "NTE|1", "PID|1||" + "~" * (MAX_REPETITIONS + 1)), "").require_header()
    assert repeated.value.location == "PID^1"
    with pytest.raises(MessageRejected) as named:
        Message(message("", "NTE|1", "PI\x00D|1"), "").require_header()
    assert named.value.location == "" and "\x00" not in str(named.value)


@pytest.mark.parametrize("segments, location", [
    (["PID|1||123^^^HOSP&1.2.3&ISO^PI||DU\nPONT^PAUL||19850612|M"], "PID^1^5"),     # a lone LF in CR-ended segments
    (["NTE|1||a", "NTE|2||une ligne\r\nla suivante"], "NTE^2^3"),
    (["OBX|1|ED|x||^TEXT^XML^Base64^" + "QUJD" * 19 + "\r\n" + "QUJD" * 5], "OBX^1^5"),   # base64 wrapped at 76
])
def test_a_line_that_begins_no_segment_is_refused_at_the_field_it_cut(segments, location):
    """Read as a segment of no known name, it was ignored, and the field before it cut short: the
    family name DU, the patient's birth date and sex lost, and an AA."""
    with pytest.raises(MessageRejected) as cut:
        Message(message("", *segments), "").require_header()
    assert cut.value.location == location and cut.value.code == "100"
    assert "PONT" not in str(cut.value) and "suivante" not in str(cut.value)


@pytest.mark.parametrize("terminator", ["\r", "\n", "\r\n"])
def test_a_segment_misnamed_is_refused_as_one_not_as_a_field_cut(terminator):
    """A name in lower case or misspelt, on a line ended as the others are: the refusal blamed a
    line break sent inside the field before it, which the sender looked for in vain."""
    with pytest.raises(MessageRejected) as misnamed:
        Message(message("", "PID|1", "pid|2", sep=terminator), "").require_header()
    assert str(misnamed.value) == "segment 3 does not begin with a segment name (three capital letters or digits)"
    assert misnamed.value.location == "" and misnamed.value.code == "100"


@pytest.mark.parametrize("name", ["ZFA", "ZBE", "Z01", "PV1", "IN1", "OBX"])
def test_segment_names_of_capitals_and_digits_are_read(name):
    Message(message("", f"{name}|1", name), "").require_header()


def test_msh_without_encoding_characters():
    with pytest.raises(MessageRejected):
        Message("MSH|", "")


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=60))
def test_escape_then_unescape_gives_back_the_value(value):
    enc = Encoding()
    seg = Message(message("", "NTE|1||" + escape(value, enc)), "").first("NTE")
    assert seg.unescape(seg.raw(3)) == value


def fingerprint_as_first_defined(text: str) -> str:
    """The fingerprint stored with every message received so far: SHA-256 of the segments, MSH-7
    left out, joined by CR, as UTF-8. A retransmission is recognised by it."""
    import hashlib
    segments = Message(text, "UNICODE UTF-8").segments
    msh = segments[0].text.split("|")
    msh[6] = ""
    return hashlib.sha256("\r".join(["|".join(msh)] + [s.text for s in segments[1:]]).encode()).hexdigest()


@given(st.text(alphabet="ABé€|^~&\\ 1", max_size=40), st.integers(0, 3))
def test_fingerprint_is_the_one_already_stored_whatever_the_field_sizes(value, repeat):
    from gateway.services import feeds

    long_value = "é" * (feeds.FINGERPRINT_CHUNK - 1) + value * repeat   # a character across a chunk's edge
    text = message("UNICODE UTF-8", PID, f"OBX|1|ED|11490-0||^text^XML^Base64^{long_value}|{value}|", "ZZZ||")
    m = Message(text, "UNICODE UTF-8")
    assert feeds.fingerprint(m) == fingerprint_as_first_defined(text)
    assert m.segments[2].text == f"OBX|1|ED|11490-0||^text^XML^Base64^{long_value}|{value}|"


@given(st.text(alphabet="ab^&\\", max_size=12), st.integers(1, 5), st.integers(1, 3))
def test_a_component_is_read_as_splitting_the_field_would(value, component, subcomponent):
    segment = Message(message("", "NTE|1"), "").first("NTE")
    parts = value.split("^")
    subs = parts[component - 1].split("&") if component <= len(parts) else [""]
    assert segment.component(value, component, subcomponent) == (
        segment.unescape(subs[subcomponent - 1]) if subcomponent <= len(subs) else "")
    assert segment.raw_component(1, component) == ("1" if component == 1 else "")


RUN = "QUJD" * 20_000          # 80,000 characters of base64: a long run (er7.LONG_RUN)


@given(st.sampled_from(["", "A", "é", "=="]), st.sampled_from(["", "QQ==", "|x"]), st.sampled_from(["\r", "\n"]))
def test_a_long_run_of_base64_reads_as_the_text_that_carried_it(before, after, sep):
    """Kept as the received bytes, not as text, a run still reads as text everywhere but where a
    document is read from it; and the fingerprint stays the one already stored for the message."""
    obx = f"OBX|1|ED|11490-0||^text^XML^Base64^{before}{RUN}{after}|F"
    nte = f"NTE|1||{RUN}~{RUN}"
    text = message("UNICODE UTF-8", obx, nte, sep=sep)
    received = Message.from_bytes(text.encode())
    as_text = Message(text, "UNICODE UTF-8")
    from gateway.services import feeds

    assert feeds.fingerprint(received) == feeds.fingerprint(as_text) == fingerprint_as_first_defined(text)
    for got, expected in zip(received.segments, as_text.segments):
        assert got.text == expected.text
        assert [got.raw(n) for n in range(8)] == [expected.raw(n) for n in range(8)]
        assert [got.get(n, c) for n in range(8) for c in range(1, 6)] == \
            [expected.get(n, c) for n in range(8) for c in range(1, 6)]
    document = received.first("OBX").received_component(5, 5)
    data = as_text.first("OBX").raw_component(5, 5)
    if re.fullmatch("[A-Za-z0-9+/=]+", data):
        assert isinstance(document, memoryview) and bytes(document) == data.encode()
    else:
        assert document == data     # more than one run: text
    assert received.first("NTE").repetitions(3) == [RUN, RUN]


def test_a_byte_that_is_not_the_declared_charset_is_located_in_what_was_received():
    body = message("UNICODE UTF-8", f"OBX|1|ED|11490-0||^text^XML^Base64^{RUN}|F", "NTE|1||").encode() + b"\xff"
    with pytest.raises(MessageRejected, match=f"offset {len(body) - 1} "):
        Message.from_bytes(body)


def test_a_message_whose_delimiters_are_base64_characters_is_read_as_text():
    """A run could swallow such a delimiter: the message is read as it was before runs stood apart."""
    text = ("MSH+^~\\&+APP+FAC+GW+DMP+20260101++MDM^T02^MDM_T02+1+P+2.6+++++FRA+UNICODE UTF-8\r"
            f"OBX+1+ED+11490-0++^text^XML^Base64^{RUN}+F")
    received = Message.from_bytes(text.encode())
    assert received.first("OBX").raw(6) == "F"
    assert received.first("OBX").received_component(5, 5) == RUN


@pytest.mark.parametrize("name, hl7", [("ISO-8859-1", "8859/1"), ("latin1", "8859/1"), ("utf8", "UNICODE UTF-8"),
                                       ("US-ASCII", "ASCII"), ("iso-8859-15", "8859/15"), (None, "")])
def test_a_charset_http_names_is_read_as_msh_18_names_it(name, hl7):
    assert transport_charset(name) == hl7


def test_the_charset_http_names_reads_a_message_of_empty_msh_18_and_must_agree_with_one_given():
    latin = message("", "PID|1||1||HÉLÈNE").encode("iso8859-1")
    assert Message.from_bytes(latin, "8859/1").first("PID").get(5) == "HÉLÈNE"
    ascii_declared = message("ASCII", "PID|1||1||HÉLÈNE").encode()
    assert Message.from_bytes(ascii_declared, "UNICODE UTF-8").charset == "UNICODE UTF-8"
    with pytest.raises(MessageRejected) as disagreeing:
        Message.from_bytes(message("8859/1", "PID|1||1||HÉLÈNE").encode(), "UNICODE UTF-8")
    assert (disagreeing.value.location, disagreeing.value.code) == ("MSH^1^18", "203")
    # Bytes all ASCII read alike in both: an HTTP client that labels all it sends UTF-8 is answered.
    assert Message.from_bytes(message("8859/1", "PID|1||1||HELENE").encode(), "UNICODE UTF-8").charset == "8859/1"
    with pytest.raises(MessageRejected, match="charset=windows-1252 in Content-Type is not supported"):
        transport_charset("windows-1252")
