"""Safe XML parsing of CDA documents as real senders send them.

No DTD, no entity expansion, no network access, and a size limit. Accepted shapes: a bare
ClinicalDocument with or without XML declaration, with processing instructions and comments
before it, or an "auto-presentable" XSLT stylesheet carrying the ClinicalDocument inside.
"""
from __future__ import annotations

from lxml import etree

from gateway.refusal import Refused

HL7_NS = "urn:hl7-org:v3"
NS = {"h": HL7_NS}
CLINICAL_DOCUMENT = f"{{{HL7_NS}}}ClinicalDocument"
XSL_NS = "http://www.w3.org/1999/XSL/Transform"


def safe_parser() -> etree.XMLParser:
    """The one XML parser configuration of the gateway: no DTD, no entity expansion, no network.

    huge_tree lifts libxml2's 10 MB limit on one text node, which refused every N1 document whose
    PDF is over about 7.5 MB although the document limit (GATEWAY_MAX_DOCUMENT_BYTES) admits it.
    What the limit guarded against stays impossible: without entities nothing expands, and every
    caller bounds the input's size first, so the tree is bounded by it."""
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=True,
        remove_comments=False,
    )


def parse_cda(data: bytes, *, max_bytes: int) -> tuple[etree._Element, bool]:
    """Return the ClinicalDocument element and whether it came wrapped in an XSLT stylesheet."""
    if len(data) > max_bytes:
        raise Refused(
            f"document is {len(data)} bytes, above the limit of {max_bytes} bytes",
            location="/", status=413, code="too-costly",
        )
    if not data.strip():
        raise Refused("empty body", location="/", status=400, code="structure")
    try:
        root = etree.fromstring(data, safe_parser())
    except etree.XMLSyntaxError as exc:
        line = f" (line {exc.lineno})" if getattr(exc, "lineno", None) else ""
        raise Refused(f"unparseable XML{line}: {exc.msg}", location="/", status=400, code="structure") from None
    # The parser's own view, whatever the encoding or where the declaration stands (a byte search
    # misses a DOCTYPE after the first bytes, or in UTF-16).
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise Refused(
            "document type declarations and entities are not accepted in a CDA document",
            location="/", status=400, code="security",
        )
    if root.tag == CLINICAL_DOCUMENT:
        return root, False
    if root.tag == f"{{{XSL_NS}}}stylesheet" or root.tag == f"{{{XSL_NS}}}transform":
        inner = root.find(f".//{{{HL7_NS}}}ClinicalDocument")
        if inner is not None:
            return inner, True
    local = etree.QName(root).localname
    where = f"/{local}"
    raise Refused(
        f"the root element is {where}, not a ClinicalDocument in namespace {HL7_NS}",
        location=where, status=422, code="structure",
    )
