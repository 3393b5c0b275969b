"""The narrative a client sends, held to FHIR's rules for it (R4 narrative.html, invariant txt-1):
XHTML in its namespace, without what would act when shown. The gateway serves what it stores to
other clients, and a narrative is made to be displayed: a script, an event attribute or an embedded
object in one would run in whoever displays it.

The rules are the spec's own list of what the XHTML SHALL NOT contain: a head or body, scripts,
forms, base and link (external stylesheets), frames, objects, event attributes (onClick…), xlink.
A `javascript:` link is refused with them. The HL7 validator's test cases list-xhtml-attribute,
list-xhtml-element and list-xhtml-wrongns* are refused here as the validator refuses them."""
from __future__ import annotations

from lxml import etree

from gateway.cda.parser import safe_parser
from gateway.refusal import Refused

from .xml_layout import XHTML_NS

XLINK_NS = "http://www.w3.org/1999/xlink"
FORBIDDEN_ELEMENTS = frozenset({
    "head", "body", "html", "title", "meta", "base", "link", "style", "script", "noscript",
    "form", "input", "button", "select", "option", "optgroup", "textarea", "fieldset", "label",
    "frame", "frameset", "noframes", "iframe", "object", "embed", "applet", "param"})
LINKS = ("href", "src")


def check_narratives(resource: dict, where: str) -> None:
    """Refuse (422) a resource whose narrative, or a narrative of a resource inside it (contained,
    a Bundle's entries, a Parameters' resources), breaks those rules."""
    stack = [(resource, where)]
    while stack:
        value, path = stack.pop()
        if isinstance(value, list):
            stack += [(item, path) for item in value]
            continue
        if not isinstance(value, dict):
            continue
        text = value.get("text")
        if isinstance(text, dict) and isinstance(text.get("div"), str):
            _check(text["div"], f"{path}.text.div")
        stack += [(item, f"{path}.{key}") for key, item in value.items()
                  if key != "text" and isinstance(item, (dict, list))]


def _check(div: str, where: str) -> None:
    try:
        root = etree.fromstring(div.encode("utf-8"), safe_parser())
    except etree.XMLSyntaxError as exc:
        raise _refused(where, f"the narrative is not XHTML: {exc}") from None
    if root.getroottree().docinfo.doctype:
        raise _refused(where, "the narrative declares a document type")
    for element in root.iter():
        if not isinstance(element.tag, str):
            continue            # a comment or a processing instruction
        name = etree.QName(element)
        if name.namespace != XHTML_NS:
            raise _refused(where, f"<{name.localname}> is not in the XHTML namespace {XHTML_NS}")
        if element is root and name.localname != "div":
            raise _refused(where, "the narrative is a <div>")
        if name.localname.lower() in FORBIDDEN_ELEMENTS:
            raise _refused(where, f"<{name.localname}> is not allowed in a narrative (txt-1)")
        for attribute, value in element.attrib.items():
            local = etree.QName(attribute).localname.lower()
            if local.startswith("on") or etree.QName(attribute).namespace == XLINK_NS:
                raise _refused(where, f"the attribute {local} of <{name.localname}> is not allowed in a "
                                      "narrative (txt-1)")
            if local in LINKS and "".join(value.split()).lower().startswith("javascript:"):
                raise _refused(where, f"a javascript: link in <{name.localname}> is not allowed in a narrative")


def _refused(where: str, why: str) -> Refused:
    return Refused(why, location=where, status=422, code="invalid")
