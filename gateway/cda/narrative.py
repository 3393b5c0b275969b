"""A CDA body made readable in a browser without trusting it.

N3: each section's title and narrative block (CDA R2 `text`) become HTML built element by
element from a short list (paragraph, list, table, content, br, sub, sup, caption, footnote);
every other element keeps only its text, every text is escaped, and no attribute passes except
a table cell's numeric colspan/rowspan. Links (linkHtml) show their text and no link, images
(renderMultiMedia) their caption only. Nothing from the document can run in the page.
N1: the embedded file (PDF, text, image) and its media type, to serve as it is.
"""
from __future__ import annotations

import binascii
from dataclasses import dataclass, field

from lxml import etree
from markupsafe import Markup, escape

from gateway import base64text

from .parser import HL7_NS

H = f"{{{HL7_NS}}}"
# narrative element -> HTML element
ELEMENTS = {"paragraph": "p", "item": "li", "table": "table", "thead": "thead", "tbody": "tbody",
            "tfoot": "tfoot", "tr": "tr", "th": "th", "td": "td", "caption": "caption", "sub": "sub",
            "sup": "sup", "footnote": "small"}
STYLES = (("Bold", "strong"), ("Italics", "em"), ("Underline", "u"))
DROPPED = ("renderMultiMedia",)   # an image reference: its caption (a child) is kept


@dataclass
class Section:
    title: str
    html: Markup
    sections: list["Section"] = field(default_factory=list)


@dataclass
class Body:
    sections: list[Section] = field(default_factory=list)   # N3
    media_type: str | None = None                           # N1
    data: bytes | None = None


def _children(element: etree._Element) -> str:
    out = [str(escape(element.text or ""))]
    for child in element:
        out.append(_element(child))
        out.append(str(escape(child.tail or "")))
    return "".join(out)


def _cell_attributes(element: etree._Element) -> str:
    attributes = ""
    for name in ("colspan", "rowspan"):
        value = element.get(name, "")
        if value.isascii() and value.isdigit() and 0 < int(value) < 100:
            attributes += f' {name}="{int(value)}"'
    return attributes


def _element(element: etree._Element) -> str:
    if not isinstance(element.tag, str) or not element.tag.startswith(H):
        return ""   # comments, processing instructions, elements of another namespace
    name = element.tag[len(H):]
    if name == "br":
        return "<br>"
    if name in DROPPED:
        return _children(element)
    if name == "list":
        tag = "ol" if element.get("listType") == "ordered" else "ul"
        return f"<{tag}>{_children(element)}</{tag}>"
    if name == "content":
        inner = _children(element)
        for style, tag in STYLES:
            if style in (element.get("styleCode") or "").split():
                inner = f"<{tag}>{inner}</{tag}>"
        return inner
    if name in ELEMENTS:
        tag = ELEMENTS[name]
        attributes = _cell_attributes(element) if tag in ("td", "th") else ""
        return f"<{tag}{attributes}>{_children(element)}</{tag}>"
    return _children(element)   # linkHtml, footnoteRef, anything unknown: its text only


def _section(element: etree._Element) -> Section:
    title_element = element.find(f"{H}title")
    title = " ".join("".join(title_element.itertext()).split()) if title_element is not None else ""
    text = element.find(f"{H}text")
    html = Markup(_children(text)) if text is not None else Markup("")
    subsections = [_section(s) for s in element.findall(f"{H}component/{H}section")]
    return Section(title, html, subsections)


def readable_body(document: etree._Element) -> Body:
    """The body of a parsed ClinicalDocument, ready for a page."""
    structured = document.find(f"{H}component/{H}structuredBody")
    if structured is not None:
        return Body(sections=[_section(s) for s in structured.findall(f"{H}component/{H}section")])
    text = document.find(f"{H}component/{H}nonXMLBody/{H}text")
    if text is None:
        return Body()
    media_type = text.get("mediaType") or "text/plain"
    if text.get("representation") == "B64":
        try:
            data = base64text.decode(text.text or "")
        except (binascii.Error, ValueError):
            return Body()
    else:
        data = (text.text or "").encode()
    return Body(media_type=media_type, data=data)
