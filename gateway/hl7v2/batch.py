"""HL7 batches (v2.5, section 2.10.3): messages sent together in a file header and trailer (FHS,
FTS) and batch headers and trailers (BHS, BTS), each optional:

    [FHS] { [BHS] { MSH ... } [BTS] } [FTS]

`read` finds the messages, each its bytes as received, and what the envelope says that they do not
hold: a count (BTS-1, FTS-1) that is not theirs, a segment outside any message. `answer` wraps the
acknowledgments of the messages in a batch of the same shape, each header echoing the control id of
the one it answers (BHS-12 from BHS-11, FHS-12 from FHS-11), each trailer counting what it holds."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

from .ack import GATEWAY_APPLICATION, control_id
from .er7 import BOM, MLLP_FRAMING

ENVELOPE = (b"FHS", b"BHS", b"BTS", b"FTS")
# A batch's messages are processed one after the other while its sender waits for the answer.
MAX_MESSAGES = 1000
_LINE = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n)?")


@dataclass
class Group:
    """The messages between a BHS (or the file's start) and its BTS."""
    header: bytes | None
    messages: list[bytes] = field(default_factory=list)


@dataclass
class Batch:
    file_header: bytes | None
    groups: list[Group]
    problems: list[str]

    @property
    def messages(self) -> list[bytes]:
        return [message for group in self.groups for message in group.messages]

    def keys(self) -> tuple[str | None, dict]:
        """What names the batch among received inputs, as a message's MSH-3|MSH-4 and keys name it:
        its outermost header's sender (field 3|field 4), control id (field 11) and name (FHS, BHS)."""
        header = self.file_header or next((group.header for group in self.groups if group.header), None)
        if header is None:
            return None, {}
        fields = header.decode("utf-8", "replace").split(header[3:4].decode("latin-1") or "|") + [""] * 11
        return f"{fields[2]}|{fields[3]}", {"control_id": fields[10][:199] or None, "message_type": fields[0]}


def is_batch(data: bytes | bytearray) -> bool:
    """Whether bytes received as one input open with a file or batch header."""
    return bytes(data[:6]).removeprefix(BOM)[:3] in (b"FHS", b"BHS")


def envelope_name(segment: bytes) -> bytes | None:
    """The name of an envelope segment (a header, a trailer), else None."""
    name = segment[:3]
    return name if name in ENVELOPE and (len(segment) == 3 or not segment[3:4].isalnum()) else None


def _field(segment: bytes, number: int) -> bytes:
    """Field `number` of an envelope segment, in the field separator it is written with."""
    if len(segment) <= 3:
        return b""
    fields = segment.split(segment[3:4])
    return fields[number].strip() if number < len(fields) else b""


def read(data: bytes | bytearray) -> Batch:
    """The messages of a batch (or of messages sent one after another, without an envelope)."""
    data = bytes(data).removeprefix(BOM)
    file_header, groups, problems = None, [], []
    group: Group | None = None
    start: int | None = None   # where the message being read began
    end = 0                    # where its last segment (and the line break after it) ended
    ended = False              # the file trailer was read

    def close_message() -> None:
        nonlocal start
        if start is not None:
            group.messages.append(data[start:end])
            start = None

    def count(segment: bytes, name: bytes, held: int, what: str) -> None:
        stated = _field(segment, 1)
        if stated and (not stated.isdigit() or int(stated) != held):
            problems.append(f"the {'file' if name == b'FTS' else 'batch'} says it holds "
                            f"{stated.decode('ascii', 'replace')[:20]} {what} ({name.decode()}-1); it holds {held}")

    position = 0   # of the segment, blank lines aside
    for line in _LINE.finditer(data):
        at, segment = line.start(), line.group().rstrip(b"\r\n")
        if line.end() == at:
            break
        if not segment.strip():
            continue
        position += 1
        name = envelope_name(segment)
        if ended:
            problems.append("a segment follows the file trailer (FTS)")
            break
        if name or segment.startswith(b"MSH"):
            close_message()
        if name == b"FHS":
            if position > 1:
                problems.append("the file header (FHS) is not the first segment")
            file_header = segment
        elif name == b"BHS":
            group = Group(segment)
            groups.append(group)
        elif name == b"BTS":
            if group is None:
                group = Group(None)
                groups.append(group)
            count(segment, name, len(group.messages), "messages")
            group = None
        elif name == b"FTS":
            count(segment, name, len(groups), "batches")
            group, ended = None, True
        elif segment.startswith(b"MSH"):
            if group is None:
                group = Group(None)
                groups.append(group)
            start = at
        elif start is None:
            problems.append(f"a segment ({segment[:3].decode('ascii', 'replace')}) is outside any message")
            break
        end = line.end()
    close_message()
    return Batch(file_header, groups, problems)


def answer(batch: Batch, acks: list[list[bytes]]) -> bytes:
    """The answer to a batch: the acknowledgments of each of its groups (`acks`, in order), in a
    batch of the same shape."""
    now = datetime.now(timezone.utc).astimezone().strftime("%Y%m%d%H%M%S%z").encode()
    segments: list[bytes] = []
    if batch.file_header is not None:
        segments.append(_answering(batch.file_header, now))
    for group, answered in zip(batch.groups, acks):
        if group.header is not None:
            segments.append(_answering(group.header, now))
        segments.extend(ack.rstrip(b"\r") for ack in answered)
        if group.header is not None:
            segments.append(_separator(group.header).join([b"BTS", b"%d" % len(answered)]))
    if batch.file_header is not None:
        segments.append(_separator(batch.file_header).join([b"FTS", b"%d" % len(batch.groups)]))
    return b"\r".join(segments) + b"\r"


def _separator(header: bytes) -> bytes:
    return header[3:4] or b"|"


def _answering(header: bytes, now: bytes) -> bytes:
    """The header answering one received (FHS or BHS): sender and receiver swapped, a control id
    of its own, and the received one's as its reference (field 12)."""
    sep = _separator(header)
    fields = (header.split(sep) + [b""] * 12)[:12]
    encoding = fields[1] or b"^~\\&"
    sending = [fields[4] or GATEWAY_APPLICATION.encode(), fields[5], fields[2], fields[3]]
    answering = [fields[0], encoding, *sending, now, b"", b"", b"", control_id().encode(), fields[10]]
    while answering[-1] == b"":
        answering.pop()
    text = sep.join(answering)
    # An echoed field holding MLLP's framing bytes would end the sender's frame early: each is
    # written as HL7's hex escape, as an ACK writes them.
    escape = encoding[2:3] or b"\\"
    for byte in MLLP_FRAMING.encode():
        text = text.replace(bytes([byte]), escape + b"X%02X" % byte + escape)
    return text
