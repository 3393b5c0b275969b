"""FHIR XML written from the JSON the gateway keeps, in the element order fhir.resources' models give.

fhir.resources' own way (validate the JSON into its model, then write the model) cost 22 ms per
DocumentReference: a page of ten found by ITI-67 took 185 ms to answer in XML and 15 ms in JSON
(bench, search "XML"). Everything served was validated when it was stored, so this writer takes
from the models only what XML needs and JSON does not say (xml_layout).

The values are written as the JSON holds them, so an answer says the same in both formats (the
model rewrote instants: "…00.000000Z" came out as "…00+00:00"). The rules are FHIR's XML
representation (https://hl7.org/fhir/R4/xml.html): a primitive's value, id and extensions in one
element; `id` of a datatype or backbone element and `url` of an extension as attributes; a resource
inside another (contained, Bundle.entry.resource) wrapped in an element named for its type; the
narrative's div as XHTML."""
from __future__ import annotations

import json
import re

from fhir.resources.R4B import get_fhir_model_class
from lxml import etree

from gateway.cda.parser import safe_parser

from .xml_layout import COMPLEX, FHIR_NS, PRIMITIVE, RESOURCE, XHTML_NS, layout, resource_model

DECLARATION = "<?xml version='1.0' encoding='utf-8'?>\n"

# Characters JSON carries and XML 1.0 cannot (C0 controls but tab, LF, CR; lone surrogates;
# U+FFFE, U+FFFF): a stored string or an echoed search value holding one is shown as U+FFFD.
NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
# In an attribute, tab, LF and CR are kept as references: a parser would read them as spaces.
ESCAPED = re.compile('[&<>"\t\n\r]')
ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\t": "&#9;", "\n": "&#10;", "\r": "&#13;"}


class NotWritable(ValueError):
    """The JSON holds something its type has no element for: written, it would be lost."""


def to_xml(resource: dict) -> bytes:
    """A resource, as FHIR XML (UTF-8, with the XML declaration)."""
    out = [DECLARATION]
    _resource(out, resource, f' xmlns="{FHIR_NS}"')
    return "".join(out).encode("utf-8")


def _resource(out: list[str], resource: dict, namespace: str = "") -> None:
    name = resource.get("resourceType")
    model = resource_model(name)
    if model is None:
        raise NotWritable(f"{name!r} is not a FHIR resource type")
    out.append(f"<{name}{namespace}>")
    _children(out, resource, model)
    out.append(f"</{name}>")


def _children(out: list[str], value: dict, model: type) -> None:
    elements = layout(model)
    unknown = value.keys() - elements.names
    if unknown:
        raise NotWritable(f"{model.__name__} has no element {sorted(unknown)[0]}")
    for element in elements.elements:
        name, kind = element.name, element.kind
        item = value.get(name)
        if kind == PRIMITIVE:
            extension = value.get("_" + name)
            if isinstance(item, list) or isinstance(extension, list):
                items = item if isinstance(item, list) else []
                extensions = extension if isinstance(extension, list) else []
                for index in range(max(len(items), len(extensions))):
                    _primitive(out, name, items[index] if index < len(items) else None,
                               extensions[index] if index < len(extensions) else None)
            else:
                _primitive(out, name, item, extension)
        elif item is None:
            continue
        elif kind == COMPLEX:
            for each in item if isinstance(item, list) else (item,):
                _complex(out, name, each, element.model)
        elif kind == RESOURCE:
            for each in item if isinstance(item, list) else (item,):
                out.append(f"<{name}>")
                _resource(out, each)
                out.append(f"</{name}>")
        else:
            out.append(_xhtml(item))


def _primitive(out: list[str], name: str, value, extension: dict | None) -> None:
    if value is None and extension is None:
        return
    start = f"<{name}"
    if extension and extension.get("id") is not None:
        start += f' id="{_text(extension["id"])}"'
    if value is not None:
        start += f' value="{_value(value)}"'
    extensions = (extension or {}).get("extension")
    if not extensions:
        out.append(start + "/>")
        return
    out.append(start + ">")
    for element in extensions:
        _complex(out, "extension", element, get_fhir_model_class("Extension"))
    out.append(f"</{name}>")


def _complex(out: list[str], name: str, value: dict, model: type) -> None:
    start = f"<{name}"
    for attribute in layout(model).attributes:
        if value.get(attribute) is not None:
            start += f' {attribute}="{_text(value[attribute])}"'
    out.append(start + ">")
    _children(out, value, model)
    out.append(f"</{name}>")


def _value(value) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)     # the number as the JSON answer writes it
    return _text(value)


def _text(value) -> str:
    text = NOT_XML.sub("\ufffd", str(value))
    return ESCAPED.sub(lambda found: ESCAPES[found.group()], text) if ESCAPED.search(text) else text


def _xhtml(div: str) -> str:
    """The narrative's div, parsed (no DTD, no entities) and written back in the XHTML namespace."""
    element = etree.fromstring(NOT_XML.sub("\ufffd", div).encode("utf-8"), safe_parser())
    if etree.QName(element).namespace != XHTML_NS:
        raise NotWritable("the narrative's div is not in the XHTML namespace")
    return etree.tostring(element, encoding="unicode")
