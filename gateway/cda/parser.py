"""Safe XML parsing of CDA documents as real senders send them.

No DTD, no entity expansion, no network access, and a size limit. Accepted shapes: a bare
ClinicalDocument with or without XML declaration, with processing instructions and comments
before it, or an "auto-presentable" XSLT stylesheet carrying the ClinicalDocument inside.
"""
from __future__ import annotations

from lxml import etree

from gateway.refusal import Refused

HL7_NS = "urn:hl7-org:v3"
# sdtc: HL7's extensions to CDA R2 the CI-SIS takes; dicom: DICOM PS3.20's, in an imaging report.
NS = {"h": HL7_NS, "sdtc": "urn:hl7-org:sdtc", "dicom": "urn:dicom-org:ps3-20"}
CLINICAL_DOCUMENT = f"{{{HL7_NS}}}ClinicalDocument"
XSL_NS = "http://www.w3.org/1999/XSL/Transform"
# Read for its header, a document above this size is built with at most TEXT_KEPT characters of any
# one text: the PDF of an N1 document (up to the 20 MB document limit) is not needed to read the
# header, and its copy in the tree doubled the memory the document takes (README, "Large
# documents"). A smaller document is built whole, which is faster for it.
LARGE_DOCUMENT = 1 << 20
TEXT_KEPT = 64 * 1024


def _doctype_refused() -> Refused:
    return Refused("document type declarations and entities are not accepted in a CDA document",
                   location="/", status=400, code="security")


class _ShortTexts(etree.TreeBuilder):
    """Builds the tree as the parser would, each text cut at TEXT_KEPT characters, and notes a
    document type declaration (a parser target has no docinfo)."""

    def __init__(self):
        super().__init__()
        self.kept = 0
        self.declares_doctype = False

    def start(self, tag, attrib, nsmap=None):
        self.kept = 0
        # Without entity substitution libxml2 hands a target each & of an attribute as "&#38;" (every
        # one: the replacement is exact), and names the default namespace '' where nsmap says None.
        attrib = {name: value.replace("&#38;", "&") for name, value in attrib.items()}
        return super().start(tag, attrib, {k or None: v for k, v in nsmap.items()} if nsmap else None)

    def end(self, tag):
        self.kept = 0
        return super().end(tag)

    def data(self, text):
        if self.kept < TEXT_KEPT:
            text = text[:TEXT_KEPT - self.kept]
            self.kept += len(text)
            super().data(text)

    def doctype(self, *_declaration):
        self.declares_doctype = True


def safe_parser(target: etree.TreeBuilder | None = None) -> etree.XMLParser:
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
        target=target,
    )


def shallow_root(data: bytes) -> etree._Element:
    """The root element of an XML document, every text cut at TEXT_KEPT characters: what it is,
    without a copy of what it carries. XMLSyntaxError when it is not XML."""
    return etree.fromstring(data, safe_parser(_ShortTexts()))


def parse_cda(data: bytes, *, max_bytes: int, whole_texts: bool = True) -> tuple[etree._Element, bool]:
    """Return the ClinicalDocument element and whether it came wrapped in an XSLT stylesheet.
    Without `whole_texts`, a large document's long texts are cut (reading its header)."""
    if len(data) > max_bytes:
        raise Refused(
            f"document is {len(data)} bytes, above the limit of {max_bytes} bytes",
            location="/", status=413, code="too-costly",
        )
    if not data or data.isspace():     # not data.strip(): a copy of the document, when it ends with a newline
        raise Refused("empty body", location="/", status=400, code="structure")
    short_texts = _ShortTexts() if not whole_texts and len(data) > LARGE_DOCUMENT else None
    parser = safe_parser(short_texts)
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        if short_texts and short_texts.declares_doctype:
            raise _doctype_refused() from None
        # A parser target's own error ("missing end tags") hides libxml2's first one, which says where.
        first = parser.error_log[0] if short_texts and len(parser.error_log) else None
        line, message = (first.line, first.message) if first else (getattr(exc, "lineno", None), exc.msg)
        where = f" (line {line})" if line else ""
        raise Refused(f"unparseable XML{where}: {message}", location="/", status=400, code="structure") from None
    # The parser's own view, whatever the encoding or where the declaration stands (a byte search
    # misses a DOCTYPE after the first bytes, or in UTF-16).
    docinfo = root.getroottree().docinfo
    if (short_texts.declares_doctype if short_texts else
            docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None):
        raise _doctype_refused()
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
