"""Reading HL7v2 ER7 (pipe-delimited) messages on the ingest path.

The bytes are decoded with the character set MSH-18 declares (over HTTP with MSH-18 empty, the one
Content-Type names), segments may end with CR, LF or CRLF,
and nothing is split further than a handler asks for: a 300 KB base64 document in OBX-5 is sliced
out once, never walked character by character. Values come back unescaped (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\
\\X..\\ \\.br\\). `bench/` compares this with a full hl7apy parse (milliseconds per message).
"""
from __future__ import annotations

import codecs
import hashlib
import re
import uuid
from dataclasses import dataclass
from typing import Callable

BOM = b"\xef\xbb\xbf"
# A run of base64 at least LONG characters (a document in OBX-5) is not decoded into the message's
# text: the message holds a stand-in for it, and a reader takes it as the received bytes. A 20 MB
# document is 27 MB of base64: as text beside the frame, then sliced out of its field, then decoded,
# it took the listener's peak memory to 5.3x the document.
LONG = 65536
BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
LONG_RUN = re.compile(rb"[A-Za-z0-9+/=]{%d,}" % LONG)

MLLP_START = "\x0b"   # <VT>, which begins an MLLP frame and no message
MLLP_FRAMING = MLLP_START + "\x1c"   # and <FS>, which (before a <CR>) ends one

# MSH-18 values and the Python codec for each; an empty MSH-18 means ASCII (HL7 2.x, 2.15.9.18).
CHARSETS = {
    "": "ascii",
    "ASCII": "ascii",
    "UNICODE UTF-8": "utf-8",
    "UNICODE": "utf-8",
    "UTF-8": "utf-8",
    "8859/1": "iso8859-1",
    "8859/15": "iso8859-15",
}
# The MSH-18 name of each codec, for a character set HTTP names.
HL7_NAMES = {"ascii": "ASCII", "utf-8": "UNICODE UTF-8", "iso8859-1": "8859/1", "iso8859-15": "8859/15"}


# Bounds on the work one message may cause, far above what PAM-FR and CI-SIS messages carry (an
# MDM^T02 has about 20 segments, an ORU a few dozen): past them a message is refused (AR) before
# anything is done with it.
MAX_SEGMENTS = 300
MAX_REPETITIONS = 200        # per segment
MAX_CONTROL_ID = 199         # MSH-10 (ST, 199 characters in HL7 2.5 and later)
SEGMENT_NAME = re.compile(r"[A-Z][A-Z0-9]{2}")   # HL7's segment ids, Z-segments included


class MessageRejected(Exception):
    """The message cannot be read or does not say what the gateway needs to answer it.

    `location` is an HL7 location (segment^sequence^field), `code` an HL7 table 0357 code."""

    def __init__(self, message: str, location: str = "MSH^1", code: str = "207", ack_code: str = "AR"):
        super().__init__(message)
        self.location, self.code, self.ack_code = location, code, ack_code


@dataclass(frozen=True)
class Encoding:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @property
    def msh2(self) -> str:
        return self.component + self.repetition + self.escape + self.subcomponent


def split_segments(text: str) -> list[str]:
    return [s for s in re.split(r"\r\n|\r|\n", text) if s.strip()]


def declared_charset(data: bytes) -> str:
    """MSH-18 read from the raw bytes: every supported charset is ASCII-compatible up to MSH-18."""
    head = data[len(BOM):] if data.startswith(BOM) else data
    first = re.split(rb"\r|\n", head[:4096], maxsplit=1)[0]
    if not first.startswith(b"MSH") or len(first) < 4:
        return ""
    fields = first.split(first[3:4])
    return fields[17].split(b"^")[0].decode("ascii", "replace").strip() if len(fields) > 17 else ""


def transport_charset(name: str | None) -> str:
    """The HL7 name (MSH-18's) of the character set an HTTP Content-Type's `charset` names, "" for none."""
    if not name:
        return ""
    try:
        codec = codecs.lookup(name).name
    except LookupError:
        codec = None
    if codec not in HL7_NAMES:
        raise MessageRejected(f"charset={name} in Content-Type is not supported (supported: utf-8, iso-8859-1, "
                              "iso-8859-15, us-ascii)", "MSH^1^18", "203")
    return HL7_NAMES[codec]


def decode(data: bytes | bytearray, offset_in_received: Callable[[int], int] = lambda offset: offset,
           transport: str = "") -> tuple[str, str]:
    """(text, its character set, as MSH-18 names it). A UTF-8 byte-order mark is tolerated and means
    UTF-8. `offset_in_received` says where a byte of `data` stood in what was received. `transport`
    is the character set HTTP's Content-Type named (transport_charset): with MSH-18 empty, the
    message is in it, as HL7 over HTTP has it; naming another set than MSH-18, the message is
    refused, where one of the two would have been trusted and the other's bytes misread (a Latin-1
    message sent as UTF-8 read as Latin-1, its names garbled without a word)."""
    declared = declared_charset(data)
    codec = CHARSETS.get(declared.upper())
    if codec is None:
        raise MessageRejected(f"character set {declared!r} in MSH-18 is not supported "
                              f"(supported: UNICODE UTF-8, 8859/1, 8859/15, ASCII)", "MSH^1^18", "203")
    if transport and declared and codec not in ("ascii", CHARSETS[transport]):
        if data.isascii():   # read alike in either (an HTTP client labels all it sends UTF-8)
            transport = ""
        else:
            raise MessageRejected(f"Content-Type's charset names {transport}, MSH-18 {declared}: the message's bytes "
                                  "are in one of them, which both should name", "MSH^1^18", "203")
    charset = transport or declared
    codec = CHARSETS[charset.upper()]
    if data.startswith(BOM):
        data, codec = data[len(BOM):], "utf-8"
    try:
        return data.decode(codec), charset
    except UnicodeDecodeError as exc:
        if codec == "ascii":
            # Many senders leave MSH-18 empty and send UTF-8; anything else would be a guess.
            try:
                return data.decode("utf-8"), charset
            except UnicodeDecodeError:
                pass
        where = f"bytes at offset {offset_in_received(exc.start)}"
        if not charset:
            raise MessageRejected(f"{where} are neither ASCII, HL7's character set when MSH-18 is empty, nor UTF-8: "
                                  "MSH-18 names the character set the message is in (8859/1, 8859/15…)",
                                  "MSH^1^18", "102") from None
        said = "MSH-18 declares" if charset == declared else "Content-Type's charset declares"
        raise MessageRejected(f"{where} are not valid {charset} as {said}", "MSH^1^18", "102") from None


_ESCAPE_NAMES = {"F": "field", "S": "component", "T": "subcomponent", "R": "repetition", "E": "escape"}


def _part(value: str, separator: str, number: int) -> str:
    """The number-th (from 1) part of value between separators, or "": found without splitting
    the rest, which copied a field's 20 MB of base64 to read the component before it."""
    start = 0
    for _ in range(number - 1):
        start = value.find(separator, start) + 1
        if start == 0:
            return ""
    end = value.find(separator, start)
    return value[start:] if end < 0 else value[start:end]


class Segment:
    """One segment; fields are numbered as in the standard (MSH-1 is the field separator)."""

    __slots__ = ("name", "repetition_marks", "_fields", "_enc", "_charset", "_runs")

    def __init__(self, text: str, enc: Encoding, charset_codec: str, runs: "LongRuns | None" = None):
        self._enc = enc
        self._charset = charset_codec
        self._runs = runs
        self.repetition_marks = text.count(enc.repetition)
        raw = text.split(enc.field)
        self.name = raw[0]
        if self.name == "MSH":
            self._fields = ["MSH", enc.field, *raw[1:]]
        else:
            self._fields = raw

    @property
    def text(self) -> str:
        """The segment as received. Built when asked rather than kept beside its fields: an OBX
        carrying a 20 MB document in base64 was otherwise held twice."""
        return self._expanded(self._joined())

    def received(self) -> list[str | memoryview]:
        """The segment as received, in parts: its text, and each long run of base64 in it as the
        bytes that carried it."""
        return self._runs.parts(self._joined()) if self._runs else [self._joined()]

    def _joined(self) -> str:
        fields = self._fields[:1] + self._fields[2:] if self.name == "MSH" else self._fields
        return self._enc.field.join(fields)

    def _expanded(self, value: str) -> str:
        return self._runs.expanded(value) if self._runs else value

    @property
    def last_field(self) -> int:
        return len(self._fields) - 1

    def raw(self, number: int) -> str:
        return self._expanded(self._field(number))

    def _field(self, number: int) -> str:
        """A field with its long runs' stand-ins: what is split, so that a run is never copied."""
        return self._fields[number] if number < len(self._fields) else ""

    def repetitions(self, number: int) -> list[str]:
        return [self._expanded(value) for value in self._repetitions(number)]

    def _repetitions(self, number: int) -> list[str]:
        value = self._field(number)
        if self.name == "MSH" and number in (1, 2):
            return [value]
        return value.split(self._enc.repetition) if value else []

    def get(self, number: int, component: int = 1, subcomponent: int = 1, repetition: int = 0) -> str:
        reps = self._repetitions(number)
        if repetition >= len(reps):
            return ""
        # A stand-in holds no escape character: unescaped, it stays whole, then is expanded.
        return self._expanded(self.component(reps[repetition], component, subcomponent))

    def component(self, value: str, component: int = 1, subcomponent: int = 1) -> str:
        """Component/subcomponent of one field repetition, unescaped."""
        if self.name == "MSH" and value in (self._enc.field, self._enc.msh2):
            return value
        subs = _part(value, self._enc.component, component).split(self._enc.subcomponent)
        return self.unescape(subs[subcomponent - 1]) if subcomponent <= len(subs) else ""

    def raw_component(self, number: int, component: int) -> str:
        """A component left escaped and unsplit: base64 data, which never contains escapes."""
        return _part(self.raw(number), self._enc.component, component)

    def received_component(self, number: int, component: int) -> str | memoryview:
        """raw_component, but a component that is one long run of base64 comes as the received
        bytes that carried it, not as text."""
        value = _part(self._field(number), self._enc.component, component)
        run = self._runs.run(value) if self._runs else None
        return run if run is not None else self._expanded(value)

    def received_run(self, number: int, component: int) -> tuple[LongRuns, tuple[int, int]] | None:
        """The received bytes' runs, and where in those bytes a component that is one long run of
        base64 lies; None for any other component."""
        value = _part(self._field(number), self._enc.component, component)
        span = self._runs.span(value) if self._runs else None
        return (self._runs, span) if span is not None else None

    def unescape(self, value: str) -> str:
        esc = self._enc.escape
        if esc not in value:
            return value
        out: list[str] = []
        i = 0
        while i < len(value):
            ch = value[i]
            end = value.find(esc, i + 1) if ch == esc else -1
            if end == -1:
                out.append(ch)
                i += 1
                continue
            seq = value[i + 1:end]
            if seq in _ESCAPE_NAMES:
                out.append(getattr(self._enc, _ESCAPE_NAMES[seq]))
            elif seq == ".br":
                out.append("\n")
            elif seq.startswith("X") and len(seq) > 1 and len(seq) % 2 == 1:
                try:
                    out.append(bytes.fromhex(seq[1:]).decode(self._charset))
                except (ValueError, UnicodeDecodeError):
                    out.append(value[i:end + 1])
            elif seq.startswith((".", "H", "N", "C", "M", "Z")):
                pass  # formatting (.sp, .in…), highlighting and charset switches carry no data
            else:
                out.append(value[i:end + 1])
            i = end + 1
        return "".join(out)


class LongRuns:
    """The long runs of base64 of a received message (LONG_RUN), each standing in its text as a
    marker no sender can write: a NUL, a random token, its number, a NUL."""

    def __init__(self, data: bytes | bytearray, spans: list[tuple[int, int]]):
        token = uuid.uuid4().hex
        view = memoryview(data)
        self.by_stand_in = {f"\0{token}{number}\0": view[begin:end] for number, (begin, end) in enumerate(spans)}
        self.stand_ins = re.compile(f"(\0{token}[0-9]+\0)")
        self.spans = spans
        self.received = data
        self._received_sha256: str | None = None

    @classmethod
    def of(cls, data: bytes | bytearray) -> "LongRuns | None":
        """The runs of `data`; none when a delimiter the message declares (MSH-1, MSH-2) is a base64
        character, which a run could then swallow."""
        start = len(BOM) if data.startswith(BOM) else 0
        delimiters = bytes(data[start + 3:start + 8])
        if len(data) <= LONG or any(byte in BASE64_ALPHABET for byte in delimiters):
            return None
        spans = [found.span() for found in LONG_RUN.finditer(data)]
        return cls(data, spans) if spans else None

    def skeleton(self, data: bytes | bytearray) -> bytes:
        """The bytes with each run replaced by its stand-in (ASCII, as every supported charset is)."""
        view, parts, start = memoryview(data), [], 0
        for stand_in, (begin, end) in zip(self.by_stand_in, self.spans):
            parts += [view[start:begin], stand_in.encode("ascii")]
            start = end
        parts.append(view[start:])
        return b"".join(parts)

    def offset_in_received(self, offset: int) -> int:
        """Where a byte of the skeleton stood in the received bytes."""
        for stand_in, (begin, end) in zip(self.by_stand_in, self.spans):
            if offset < begin:
                break
            offset += (end - begin) - len(stand_in)
        return offset

    def run(self, value: str) -> memoryview | None:
        return self.by_stand_in.get(value)

    def span(self, value: str) -> tuple[int, int] | None:
        """Where the run a stand-in stands for lies in the received bytes."""
        for stand_in, span in zip(self.by_stand_in, self.spans):
            if stand_in == value:
                return span
        return None

    def received_sha256(self) -> str:
        """The received bytes' SHA-256 (their raw copy's key), computed once."""
        if self._received_sha256 is None:
            self._received_sha256 = hashlib.sha256(self.received).hexdigest()
        return self._received_sha256

    def expanded(self, value: str) -> str:
        if "\0" not in value:
            return value
        return self.stand_ins.sub(lambda found: str(self.by_stand_in[found.group()], "ascii"), value)

    def parts(self, value: str) -> list[str | memoryview]:
        return [self.by_stand_in.get(part, part) for part in self.stand_ins.split(value) if part]


def _unframed(data: bytes | bytearray) -> bytes:
    """Bytes kept of a message, without a byte order mark or MLLP's start byte, its segments ended by CR."""
    return bytes(data).removeprefix(BOM).removeprefix(MLLP_START.encode()).replace(b"\n", b"\r")


class Message:
    """A decoded message: its segments in order, MSH first."""

    def __init__(self, text: str, charset: str, runs: LongRuns | None = None):
        pieces = re.split(r"(\r\n|\r|\n)", text)
        # Each segment with the line break before it, to tell a segment of no name sent as one (its
        # break the message's own) from a field cut by a line break sent as is (another break).
        segments, breaks = [], []
        for piece, before in zip(pieces[::2], [""] + pieces[1::2]):
            if piece.strip():
                segments.append(piece)
                breaks.append(before)
        self._breaks = breaks
        if segments and segments[0].startswith(MLLP_START + "MSH"):
            # Invisible in most tools: the sender saw its message begin with MSH, and was told it did not.
            raise MessageRejected("the message begins with <VT> (0x0B), the start of an MLLP frame, not with MSH: "
                                  "over HTTP a message is sent without MLLP's framing (<VT> message <FS><CR>)",
                                  "MSH^1", "100")
        if segments and segments[0][:3] in ("FHS", "BHS"):
            # A batch is taken as it is received (services/feeds.py), not again as one message.
            raise MessageRejected("an HL7 batch (FHS, BHS ... BTS, FTS) is not one message: the gateway takes a "
                                  "batch when it is received, each of its messages in turn; send it again",
                                  "MSH^1", "100")
        if not segments or not segments[0].startswith("MSH") or len(segments[0]) < 8:
            raise MessageRejected("the message does not start with an MSH segment and its encoding characters",
                                  "MSH^1", "100")
        first = segments[0]
        seps = first[4:8]
        if len(set(first[3] + seps)) != 5:
            raise MessageRejected("MSH-1/MSH-2 encoding characters are missing or repeated", "MSH^1^2", "102")
        if set(first[3] + seps) & set(MLLP_FRAMING):
            # The ACK is written with the message's own encoding characters: with one of these, its
            # fields would end the sender's MLLP frame early.
            raise MessageRejected("an MSH-1/MSH-2 encoding character is <VT> (0x0B) or <FS> (0x1C), which start and "
                                  "end an MLLP frame", "MSH^1^2", "102")
        # No HL7v2 field holds a NUL (0x00), and PostgreSQL's text cannot: neither as received (the
        # runs' stand-ins hold the only ones) nor as a hex escape that unescapes to one (\X00\, or
        # 00 among its bytes; every supported charset writes NUL as the byte 00). In MSH, the
        # message is not read; elsewhere, require_header refuses it with an ACK that names it.
        escape = re.escape(seps[2])
        escaped_nul = re.compile(f"{escape}X(?:[0-9A-Fa-f]{{2}})*?00(?:[0-9A-Fa-f]{{2}})*{escape}")

        def holds_nul(text: str) -> bool:
            return (("\x00" in text and (runs is None or "\x00" in runs.stand_ins.sub("", text)))
                    or (seps[2] + "X" in text and escaped_nul.search(text) is not None))

        self._holds_nul = holds_nul
        self._nul_in = next((n for n, segment in enumerate(segments, start=1) if holds_nul(segment)), None)
        if self._nul_in == 1:
            raise MessageRejected("MSH holds a NUL character (0x00), which no HL7v2 field holds", "MSH^1", "102")
        self.encoding = Encoding(first[3], seps[0], seps[1], seps[2], seps[3])
        self.charset = charset
        codec = CHARSETS.get(charset.upper(), "utf-8")
        self.segments = [Segment(s, self.encoding, codec, runs) for s in segments]
        self.msh = self.segments[0]

    @classmethod
    def from_bytes(cls, data: bytes | bytearray, transport: str = "") -> "Message":
        """The message of received bytes; its long runs of base64 stay in them (LongRuns). `transport`:
        the character set HTTP named (decode)."""
        runs = LongRuns.of(data)
        text, charset = decode(runs.skeleton(data), runs.offset_in_received, transport) if runs \
            else decode(data, transport=transport)
        return cls(text, charset, runs)

    @classmethod
    def header_of(cls, data: bytes | bytearray) -> "Message | None":
        """The MSH alone, read leniently (a byte its character set does not have is replaced), or
        None when there is none: to answer a message that cannot be read whole (its bytes are not of
        its character set, that set is not supported, it is too large) with an ACK its sender can
        match, MSA-2 its control id. That ACK left MSA-2 empty."""
        return cls._leniently(_unframed(data[:4096]).split(b"\r", 1)[0])

    @classmethod
    def leading_segments(cls, data: bytes | bytearray) -> "Message | None":
        """The segments whole at the start of bytes that are not a whole message (the first bytes
        kept of one too large, or of a frame never ended), read leniently as header_of reads MSH;
        the last one, which may be cut, is left out. None when they do not read as a message."""
        head = _unframed(data)
        end = head.rfind(b"\r")
        return cls._leniently(head[:end]) if end >= 0 else None

    @classmethod
    def _leniently(cls, segments: bytes) -> "Message | None":
        """Segments read in the character set their MSH-18 names, a byte it does not have replaced;
        None when they are not a message."""
        charset = declared_charset(segments)
        try:
            return cls(segments.decode(CHARSETS.get(charset.upper(), "latin-1"), "replace"), charset)
        except MessageRejected:
            return None

    def _occurrence(self, position: int) -> int:
        """The segment at `position` (from 1) is the how-manyth of its name: ERR-2's segment sequence
        (ERL-2), which counts a segment's occurrences, not its place in the message."""
        name = self.segments[position - 1].name
        return sum(1 for segment in self.segments[:position] if segment.name == name)

    def all(self, name: str) -> list[Segment]:
        return [s for s in self.segments if s.name == name]

    def first(self, name: str) -> Segment | None:
        return next((s for s in self.segments if s.name == name), None)

    @property
    def message_type(self) -> tuple[str, str, str]:
        """(MSH-9.1, MSH-9.2, MSH-9.3): message code, trigger event, structure."""
        return self.msh.get(9, 1), self.msh.get(9, 2), self.msh.get(9, 3)

    @property
    def control_id(self) -> str:
        return self.msh.get(10)

    @property
    def version(self) -> str:
        return self.msh.get(12)

    @property
    def sender(self) -> str:
        """MSH-3^MSH-4 (application, facility): whom a control id is unique for."""
        return f"{self.msh.raw(3)}|{self.msh.raw(4)}"

    def require_header(self) -> None:
        """What an ACK needs and the gateway routes on; missing, the message is rejected (AR)."""
        if not self.message_type[0]:
            raise MessageRejected("MSH-9 (message type) is empty", "MSH^1^9", "101")
        if not self.control_id:
            raise MessageRejected("MSH-10 (message control id) is empty", "MSH^1^10", "101")
        if not self.version:
            raise MessageRejected("MSH-12 (version id) is empty", "MSH^1^12", "101")
        if len(self.control_id) > MAX_CONTROL_ID:
            raise MessageRejected(f"MSH-10 (message control id) is longer than {MAX_CONTROL_ID} characters",
                                  "MSH^1^10", "104")
        if self._nul_in:
            segment = self.segments[self._nul_in - 1]
            field = next(n for n in range(segment.last_field + 1) if self._holds_nul(segment._field(n)))
            if field == 0:   # its name, which the ACK cannot echo
                raise MessageRejected(f"the name of segment {self._nul_in} holds a NUL character (0x00), which no "
                                      "HL7v2 segment name holds", "", "102")
            raise MessageRejected(f"{segment.name}-{field} (segment {self._nul_in}) holds a NUL character (0x00), as "
                                  "received or escaped (\\X00\\), which no HL7v2 field holds",
                                  f"{segment.name}^{self._occurrence(self._nul_in)}^{field}", "102")
        if len(self.segments) > MAX_SEGMENTS:
            raise MessageRejected(f"the message has {len(self.segments)} segments, over the {MAX_SEGMENTS} this "
                                  "gateway takes", "MSH^1", "100")
        for position, segment in enumerate(self.segments, start=1):
            if not SEGMENT_NAME.fullmatch(segment.name):
                named = f"segment {position} does not begin with a segment name (three capital letters or digits)"
                if self._breaks[position - 1] == self._breaks[1]:
                    # Ended as MSH is (a name misspelt, in lower case): ERR-2 cannot name it, and
                    # the text, which may be a patient's, is not echoed.
                    raise MessageRejected(named, "", "100")
                # A line break sent as is inside a field: what follows it was a segment of no
                # known name, ignored, and the field cut short (a family name, a base64 document
                # wrapped at 76 characters). ERR-2 names the field that was cut.
                cut = self.segments[position - 2]
                e = self.encoding.escape
                raise MessageRejected(
                    f"{named}: {cut.name}-{cut.last_field} holds a line break, which a field carries escaped "
                    f"({e}.br{e} or {e}X0A{e}), not as is",
                    f"{cut.name}^{self._occurrence(position - 1)}^{cut.last_field}", "100")
            if segment.repetition_marks > MAX_REPETITIONS:
                raise MessageRejected(f"segment {position} ({segment.name}) repeats a field more than "
                                      f"{MAX_REPETITIONS} times", f"{segment.name}^{self._occurrence(position)}", "100")
