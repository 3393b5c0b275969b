"""Acknowledgements that mirror the sender: MSH-5/6 from its MSH-3/4, its version and character set,
MSA-2 = its MSH-10, and an ERR segment for every refusal or warning.

Built as text: an hl7apy-built ACK costs about 4 ms, more than the rest of an ADT's processing
(see `bench/`); the tests parse every ACK kind back with hl7apy to keep them conformant.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone

from .er7 import CHARSETS, MLLP_FRAMING, Encoding, Message

# HL7 table 0357, message error condition codes.
ERROR_TEXTS = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "104": "Value too long",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}

# Enhanced mode: the accept acknowledgment that stands for each application outcome.
ACCEPT_CODES = {"AA": "CA", "AE": "CE", "AR": "CR"}

GATEWAY_APPLICATION = "DMP-GATEWAY"
_sequence = itertools.count(1)


@dataclass
class Issue:
    text: str
    location: str = ""
    code: str = "207"
    severity: str = "E"  # E error, W warning, I information


@dataclass
class Outcome:
    """What the gateway concluded about a message: the ACK code and why."""
    code: str  # AA, AE or AR
    issues: list[Issue] = field(default_factory=list)


def escape(value: str, enc: Encoding) -> str:
    out = value.replace(enc.escape, f"{enc.escape}E{enc.escape}")
    for char, name in ((enc.field, "F"), (enc.component, "S"), (enc.subcomponent, "T"), (enc.repetition, "R")):
        out = out.replace(char, f"{enc.escape}{name}{enc.escape}")
    return out.replace("\r", " ").replace("\n", f"{enc.escape}.br{enc.escape}")


def _version_at_least(version: str, minimum: tuple[int, ...]) -> bool:
    try:
        parts = tuple(int(p) for p in version.split("^")[0].split("."))
    except ValueError:
        return True
    return parts >= minimum


ACK_CONDITIONS = {"", "AL", "NE", "ER", "SU"}   # HL7 table 0155


def wanted(message: Message, outcome: Outcome) -> str | None:
    """The acknowledgment code to send, or None when the sender asked for none (MSH-15/16).

    Original mode (MSH-15 and MSH-16 empty): always AA, AE or AR. Enhanced mode: the accept ACK when
    MSH-15 asks for it (CA, or CE/CR carrying the reason: the message is processed before answering);
    otherwise the application ACK when MSH-16 asks for it; otherwise nothing."""
    accept, application = message.msh.get(15).strip().upper(), message.msh.get(16).strip().upper()
    if not accept and not application or not {accept, application} <= ACK_CONDITIONS:
        # Original mode, and the answer to MSH-15/16 values HL7 does not define (their AR).
        return outcome.code
    success = outcome.code == "AA"

    def asks(condition: str) -> bool:
        return condition == "AL" or (condition == "ER" and not success) or (condition == "SU" and success)

    if asks(accept):
        return ACCEPT_CODES[outcome.code]
    if asks(application):
        return outcome.code
    return None


def control_id() -> str:
    """An id of the gateway's own for what it sends (an ACK, a batch answering one), unique
    across its processes."""
    return f"{os.getpid()}{next(_sequence):09d}"


def build(message: Message | None, outcome: Outcome, code: str | None = None, *,
          application: str = GATEWAY_APPLICATION, received: bytes | None = None) -> str:
    """The ACK text. Without a readable MSH (`message` None) it answers in 2.5, ASCII, MSA-2 empty."""
    enc = message.encoding if message else Encoding()
    code = code or outcome.code
    now = datetime.now(timezone.utc).astimezone().strftime("%Y%m%d%H%M%S%z")
    if message is not None:
        msh = message.msh
        version_field = msh.raw(12)
        version = msh.get(12)
        event = msh.get(9, 2)
        sending = [msh.raw(5) or application, msh.raw(6), msh.raw(3), msh.raw(4)]
        processing, country, charset = msh.raw(11) or "P", msh.raw(17), msh.raw(18)
        acked = msh.raw(10)
    else:
        version_field = version = "2.5"
        event, sending, processing, country, charset, acked = "", [application, "", "", ""], "P", "", "", ""
    c = enc.component
    msg_type = f"ACK{c}{event}{c}ACK" if _version_at_least(version, (2, 3, 1)) else (f"ACK{c}{event}" if event else "ACK")
    msh_fields = ["MSH", enc.msh2, *sending, now, "", msg_type, control_id(), processing, version_field,
                  "", "", "", "", country, charset]
    while msh_fields and msh_fields[-1] == "":
        msh_fields.pop()
    segments = [enc.field.join(msh_fields)]
    modern = _version_at_least(version, (2, 5))
    msa = ["MSA", code, acked]
    if not modern and outcome.issues:
        msa.append(escape(outcome.issues[0].text, enc)[:80])
    segments.append(enc.field.join(msa))
    for issue in outcome.issues:
        error_code = f"{issue.code}{c}{ERROR_TEXTS.get(issue.code, '')}{c}HL70357"
        text = escape(issue.text, enc)
        if modern:
            segments.append(enc.field.join(["ERR", "", issue.location, error_code, issue.severity,
                                            "", "", "", text]))
        else:
            # Before 2.5, ERR-1 (ELD) alone: segment^sequence^field^code&text&table.
            location = (issue.location.split(c) + ["", "", ""])[:3]
            eld = c.join(location + [f"{issue.code}{enc.subcomponent}{ERROR_TEXTS.get(issue.code, '')}"
                                     f"{enc.subcomponent}HL70357"])
            segments.append(enc.field.join(["ERR", eld]))
    # A value echoed from the message (MSA-2, MSH-5/6, an issue's text) may hold MLLP's framing
    # bytes: a control id holding <FS><CR> ended the sender's frame in the middle of the ACK. Each is
    # written as HL7's hex escape, which reads back as the byte sent.
    text = "\r".join(segments) + "\r"
    if not any(byte in text for byte in MLLP_FRAMING):
        return text
    return text.translate({ord(byte): f"{enc.escape}X{ord(byte):02X}{enc.escape}" for byte in MLLP_FRAMING})


def encode(ack: str, message: Message | None) -> bytes:
    """The ACK in the character set of the message it answers."""
    codec = CHARSETS.get(message.charset.upper(), "utf-8") if message else "ascii"
    return ack.encode(codec, errors="replace")
