"""Base64 text, as FHIR's base64Binary, HL7v2's ED data and a CDA's B64 text carry it."""
from __future__ import annotations

import binascii
import re

WHITESPACE = re.compile(r"\s")


def decode(text: str | memoryview, padded: bool = True) -> bytes:
    """The bytes of base64 text (or of received bytes of it). Whitespace (the line breaks of a
    wrapped encoding, which base64Binary allows) is left out; any other character outside the
    alphabet, or misplaced padding, is refused with binascii.Error (ValueError for a str that is not
    ASCII). Read in place, without the copy b64decode makes: a 20 MB document is 27 MB of text.

    Not `padded`: the final padding may be left out, as RFC 4648 (3.2) lets a specification
    have it, what it stands for being certain (a last group of 2 or 3 characters)."""
    if isinstance(text, str) and WHITESPACE.search(text):
        text = "".join(text.split())
    rest = len(text) % 4
    if padded or rest not in (2, 3):
        return binascii.a2b_base64(text, strict_mode=True)   # a memoryview: a run of the alphabet (er7.LONG_RUN)
    whole = len(text) - rest
    edge = _ascii(text[max(whole - 1, 0):])   # the last character of the whole groups, and the rest
    if b"=" in edge:
        raise binascii.Error("padding where the text ends short of a group")
    return binascii.a2b_base64(text[:whole], strict_mode=True) + \
        binascii.a2b_base64(edge[-rest:] + b"=" * (4 - rest), strict_mode=True)


def _ascii(text: str | memoryview) -> bytes:
    return bytes(text) if isinstance(text, memoryview) else text.encode("ascii")


CHECKED = 1 << 20   # characters decoded at a time by check (a multiple of 4)


def check(text: str) -> None:
    """Refuse, as decode does, text that is not base64, without holding its bytes: a part at a
    time. A Bundle's 27 MB of a document's base64 is checked when the body is read, and decoded
    only once its body is let go of."""
    # Every part but the last is a whole number of groups with no padding; the last, at least
    # CHECKED long, ends the text as it ends the whole. Padding anywhere before it (valid or not:
    # strict mode's verdict depends on what follows) is left to decode.
    end = (len(text) - CHECKED) // CHECKED * CHECKED
    if WHITESPACE.search(text) or end <= 0 or text.find("=", 0, end) >= 0:
        decode(text)
        return
    for start in range(0, end, CHECKED):
        binascii.a2b_base64(text[start:start + CHECKED], strict_mode=True)
    binascii.a2b_base64(text[end:], strict_mode=True)
