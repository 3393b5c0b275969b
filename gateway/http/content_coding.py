"""A request body sent compressed (Content-Encoding: gzip or deflate), decoded before any endpoint
reads it.

FHIR clients compress what they send when asked to (Firely's `CompressRequestBody`, HAPI's
`GZipContentInterceptor`), and a CDA or a Bundle compresses ten times. The coding is the transport's,
like chunked transfer: endpoints see the body the client meant, and the raw copy keeps that. Decoding
stops at the endpoint's body limit, so a small body that decodes to gigabytes costs no more than
one that large would have been refused at: it is written to a temporary file past 1 MiB (unlinked
from its creation, gone with the request), and memory holds no more of it than an endpoint reading an
uncompressed body would.
"""
from __future__ import annotations

import contextlib
import tempfile
import zlib

from flask import Request

from gateway.fhir.responses import FhirError

SUPPORTED = "gzip, deflate"
PART = 64 * 1024
IN_MEMORY = 1 << 20


def decode_request_body(request: Request) -> None:
    """Replaces a gzip- or deflate-coded body by its decoded bytes, within `request.max_content_length`.
    415 for another coding (with Accept-Encoding, RFC 9110 §12.5.3), 400 for a body the coding does
    not decode, 413 past the limit once decoded."""
    coding = request.headers.get("Content-Encoding", "").strip().lower()
    if coding in ("", "identity"):
        return
    if coding not in ("gzip", "x-gzip", "deflate"):
        raise FhirError(415, f"Content-Encoding {coding!r} is not supported: send the body as it is, or coded "
                             f"with one of {SUPPORTED}", code="not-supported", headers={"Accept-Encoding": SUPPORTED})
    decoded = tempfile.SpooledTemporaryFile(max_size=IN_MEMORY)
    try:
        size = _decode(request, coding, decoded)
        if size is None:
            return   # no body: nothing to decode (a GET whose client sets the header on every request)
        decoded.seek(0)   # which writes out what the file's buffer still holds
    except BaseException:
        # With no room left on its disk (the app answers 503), the file's buffer cannot be written
        # out when it is closed: it is closed all the same (left to the collector, it said so on
        # stderr).
        with contextlib.suppress(OSError):
            decoded.close()
        raise
    environ = request.environ
    environ["wsgi.input"] = decoded
    environ["CONTENT_LENGTH"] = str(size)
    # The body is now of a known length, neither coded nor chunked.
    for framing in ("HTTP_CONTENT_ENCODING", "HTTP_TRANSFER_ENCODING", "wsgi.input_terminated"):
        environ.pop(framing, None)
    # werkzeug keeps the stream and the length it read first; they are read again from the environ.
    for read_before in ("stream", "content_length"):
        request.__dict__.pop(read_before, None)


def _decode(request: Request, coding: str, decoded) -> int | None:
    """Decodes the body into `decoded`, within the endpoint's limit; its decoded size, None without
    a body."""
    limit = request.max_content_length
    size = 0
    decoder = None
    while chunk := request.stream.read(PART):
        if decoder is None:
            decoder = _decoder(coding, chunk)
        while chunk:
            try:
                piece = decoder.decompress(chunk, PART)
            except zlib.error as exc:
                raise FhirError(400, f"the body is not {coding} data as its Content-Encoding says ({exc})",
                                code="structure") from None
            size += len(piece)
            if limit is not None and size > limit:
                raise FhirError(413, f"the body, once decoded ({coding}), is larger than the {limit} bytes this "
                                     "endpoint takes", code="too-costly")
            decoded.write(piece)
            chunk = decoder.unconsumed_tail
            if decoder.eof:
                chunk = decoder.unused_data
                if chunk and coding == "deflate":
                    raise FhirError(400, "the body holds more bytes after its deflate data ends", code="structure")
                if chunk:
                    decoder = _decoder(coding, chunk)   # gzip allows members one after another (RFC 1952 §2.2)
    if decoder is None:
        return None
    if not decoder.eof:
        raise FhirError(400, f"the body ends before its {coding} data does", code="incomplete")
    return size


def _decoder(coding: str, head: bytes):
    if coding != "deflate":
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    # HTTP's deflate is zlib's format (RFC 9110 §8.4.1.2); some clients send the raw deflate data alone.
    zlib_header = len(head) >= 2 and head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0
    return zlib.decompressobj(zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)
