"""Base64 text, as FHIR's base64Binary, HL7v2's ED data and a CDA's B64 text carry it."""
from __future__ import annotations

import binascii
import re

WHITESPACE = re.compile(r"\s")


def decode(text: str) -> bytes:
    """The bytes of base64 text. Whitespace (the line breaks of a wrapped encoding, which
    base64Binary allows) is left out; any other character outside the alphabet, or misplaced
    padding, is refused with binascii.Error (ValueError for a str that is not ASCII). An ASCII str
    is read in place, without the copy b64decode makes of it: a 20 MB document is 27 MB of text."""
    if WHITESPACE.search(text):
        text = "".join(text.split())
    return binascii.a2b_base64(text, strict_mode=True)
