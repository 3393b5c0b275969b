"""ACKs: mirror the sender, ERR for every issue, original and enhanced modes; hl7apy reads them back."""
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from gateway.hl7v2 import ack
from gateway.hl7v2.ack import Issue, Outcome
from gateway.hl7v2.er7 import Message


def msg(version="2.6", accept="", application="", charset="UNICODE UTF-8"):
    return Message(f"MSH|^~\\&|RIS|CH-X|GW|DMP|20260101||MDM^T02^MDM_T02|C42|P|{version}|||{accept}|{application}|FRA|{charset}\r"
                   "PID|1", charset)


def segments(text):
    return [s.split("|") for s in text.strip("\r").split("\r")]


def test_aa_mirrors_the_sender():
    text = ack.build(msg(), Outcome("AA"))
    msh, msa = segments(text)
    assert msh[2:6] == ["GW", "DMP", "RIS", "CH-X"]
    assert msh[8] == "ACK^T02^ACK" and msh[11] == "2.6" and msh[17] == "UNICODE UTF-8"
    assert msa == ["MSA", "AA", "C42"]


def test_ae_carries_err_with_location_code_severity_and_text():
    text = ack.build(msg(), Outcome("AE", [Issue("INS key | wrong", "PID^1^3", "102")]))
    err = segments(text)[2]
    assert err[0] == "ERR" and err[2] == "PID^1^3" and err[3] == "102^Data type error^HL70357"
    assert err[4] == "E" and err[8] == "INS key \\F\\ wrong"


def test_before_2_5_the_error_goes_in_err_1_and_msa_3():
    text = ack.build(msg("2.3"), Outcome("AR", [Issue("unsupported", "MSH^1^9", "200")]))
    msh, msa, err = segments(text)
    assert msh[8] == "ACK^T02" and msa[3] == "unsupported"
    assert err[1] == "MSH^1^9^200&Unsupported message type&HL70357"


@pytest.mark.parametrize("accept, application, outcome, expected", [
    ("", "", "AA", "AA"), ("", "", "AE", "AE"),
    ("AL", "NE", "AA", "CA"), ("AL", "AL", "AE", "CE"), ("AL", "", "AR", "CR"),
    ("NE", "AL", "AA", "AA"), ("NE", "ER", "AA", None), ("NE", "ER", "AE", "AE"),
    ("ER", "NE", "AA", None), ("ER", "NE", "AR", "CR"), ("SU", "NE", "AA", "CA"), ("NE", "NE", "AE", None),
])
def test_msh_15_and_16_choose_the_acknowledgment(accept, application, outcome, expected):
    assert ack.wanted(msg(accept=accept, application=application), Outcome(outcome)) == expected


@pytest.mark.parametrize("version", ["2.5", "2.6"])
def test_hl7apy_reads_our_acks_strictly(version):
    outcome = Outcome("AE", [Issue("document refused", "OBX^1^5", "207"), Issue("reused id", "MSH^1^10", "205", "W")])
    text = ack.build(msg(version), outcome)
    parsed = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    parsed.validate()
    assert parsed.msa.msa_1.value == "AE" and parsed.msa.msa_2.value == "C42"
    assert len(parsed.children.get("ERR")) == 2


def test_ack_without_readable_header():
    text = ack.build(None, Outcome("AR", [Issue("no MSH", "MSH^1", "100")]))
    msh, msa, _ = segments(text)
    assert msh[11] == "2.5" and msa == ["MSA", "AR", ""]


def test_ack_is_encoded_in_the_message_charset():
    m = msg(charset="8859/15")
    data = ack.encode(ack.build(m, Outcome("AE", [Issue("Œuvre refusée", "PID^1^5")])), m)
    assert "Œuvre refusée".encode("iso8859-15") in data


def test_mllp_framing_bytes_the_message_holds_are_escaped_in_its_ack():
    """Found by the MLLP stream fuzz: a control id holding <FS> before the segment's <CR> ended the
    sender's MLLP frame in the middle of the ACK, after `MSA|AR|`."""
    message = Message("MSH|^~\\&|RIS\x0b|CH-X|GW|DMP|20260101||ADT^A01|C\x1c|P|2.5\rPID|1", "UNICODE UTF-8")
    text = ack.build(message, Outcome("AE", [Issue("value \x1c\x0b refused", "PID^1^3", "102")]))
    assert "\x0b" not in text and "\x1c" not in text
    msh, msa, err = segments(text)
    assert msh[4] == "RIS\\X0B\\" and msa == ["MSA", "AE", "C\\X1C\\"] and err[8] == "value \\X1C\\\\X0B\\ refused"
    parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True).validate()
    assert Message(text, "UNICODE UTF-8").segments[1].get(2) == "C\x1c"   # read back as sent


@pytest.mark.parametrize("separators", ["MSH\x1c^~\\&", "MSH|\x0b~\\&", "MSH|^~\\\x1c"])
def test_mllp_framing_bytes_as_encoding_characters_are_refused(separators):
    from gateway.hl7v2.er7 import MessageRejected

    with pytest.raises(MessageRejected, match="start and end an MLLP frame") as refused:
        Message(separators + "|RIS|CH-X|GW|DMP|20260101||ADT^A01|C1|P|2.5\rPID|1", "UNICODE UTF-8")
    assert refused.value.location == "MSH^1^2"
