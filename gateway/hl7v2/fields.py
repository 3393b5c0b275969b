"""Segments with their fields named after the HL7 definitions hl7apy ships, for the operators'
view of a message (`gateway messages show --fields`). Off the ingest path: hl7apy builds an
object per component, which costs milliseconds per segment.

hl7apy's 2.5 and 2.6 definitions have no PRT (pre-adopted from 2.7 by the CI-SIS document profile):
PRT is read with the 2.7 definition, so no segment is lost. Z-segments (ZFA, ZBE, ZFD…) are kept
with numbered fields; the PAM-FR names of ZFA are added, and a batch's envelope is numbered."""
from __future__ import annotations

import re

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.exceptions import HL7apyException
from hl7apy.parser import parse_segment

from .batch import envelope_name
from .er7 import Message

SUPPORTED = ("2.1", "2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.8", "2.8.1", "2.8.2")
LATER_SEGMENTS = {"PRT": "2.7"}
ZFA_NAMES = {1: "DMP status", 2: "status date", 3: "DMP closing date", 9: "information and opposition to feeding",
             10: "its date", 11: "information and consent to consultation", 12: "its date"}
LONG_VALUE = 120


def _version(message: Message) -> str:
    version = message.version.split(message.encoding.component)[0]
    return version if version in SUPPORTED else "2.5"


def _shown(value: str) -> str:
    return value if len(value) <= LONG_VALUE else f"{value[:LONG_VALUE]}… ({len(value)} characters)"


def described_segments(text: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """Each segment with its fields named; a batch's envelope (FHS, BHS, BTS, FTS) by number, each
    of its messages as one message. Raises MessageRejected for text that is not a message."""
    out: list[tuple[str, list[tuple[str, str]]]] = []
    message: list[str] = []
    for segment in re.split(r"\r\n|\r|\n", text):
        if envelope_name(segment.encode()):
            if message:
                out += _described_message("\r".join(message))
                message = []
            out.append((segment[:3], _envelope_fields(segment)))
        elif segment.strip():
            message.append(segment)
    if message:
        out += _described_message("\r".join(message))
    return out


def _envelope_fields(segment: str) -> list[tuple[str, str]]:
    """A header's fields numbered as MSH's (field 1 its separator), a trailer's from 1."""
    name, fields = segment[:3], segment.split(segment[3]) if len(segment) > 3 else [segment]
    if name in ("FHS", "BHS"):
        numbered = [(1, segment[3:4]), *((n, fields[n - 1]) for n in range(2, len(fields) + 1))]
    else:
        numbered = list(enumerate(fields))[1:]
    return [(f"{name}-{n}", _shown(value)) for n, value in numbered if value]


def _described_message(text: str) -> list[tuple[str, list[tuple[str, str]]]]:
    message = Message(text, "UNICODE UTF-8")
    version = _version(message)
    encoding = {"FIELD": message.encoding.field, "COMPONENT": message.encoding.component,
                "REPETITION": message.encoding.repetition, "ESCAPE": message.encoding.escape,
                "SUBCOMPONENT": message.encoding.subcomponent}
    out = []
    for index, segment in enumerate(message.segments):
        if segment.name == "MSH":
            out.append(("MSH", [(f"MSH-{n}", _shown(segment.raw(n))) for n in range(1, segment.last_field + 1)
                                if segment.raw(n)]))
            continue
        try:
            parsed = parse_segment(segment.text, version=LATER_SEGMENTS.get(segment.name, version),
                                   encoding_chars=encoding, validation_level=VALIDATION_LEVEL.TOLERANT)
        except HL7apyException as exc:
            out.append((segment.name, [("unreadable by hl7apy", str(exc))]))
            continue
        fields = []
        for field in parsed.children:
            number = int(field.name.rsplit("_", 1)[1])
            label = getattr(field, "long_name", None)
            if segment.name == "ZFA":
                label = ZFA_NAMES.get(number)
            fields.append((f"{segment.name}-{number}" + (f" {label.replace('_', ' ').lower()}" if label else ""),
                           _shown(field.to_er7())))
        out.append((f"{segment.name} ({index + 1})", fields))
    return out
