"""A FHIR XML resource read into the JSON the gateway works on, by FHIR's rules for the two forms
(https://hl7.org/fhir/R4/xml.html, json.html) and the element layout of fhir.resources' models
(xml_layout): the same layout xml_writer writes, so what one writes the other reads back unchanged.

It replaces the models' own XML reader, which dropped the `id` attribute of a datatype or backbone
element without a word and took 245 ms for a page of ten DocumentReferences. What it gives is then
checked as a JSON body is (formats.load): only the form is checked here. An element the type does
not have is refused, not dropped; so is text where FHIR puts none."""
from __future__ import annotations

import copy
import json
import re

from fhir.resources.R4B import get_fhir_model_class
from lxml import etree

from gateway.refusal import Refused

from .xml_layout import COMPLEX, FHIR_NS, PRIMITIVE, XHTML, XHTML_NS, layout, resource_model

XSI = "{http://www.w3.org/2001/XMLSchema-instance}"
INTEGERS = {"integer", "positiveInt", "unsignedInt"}
INTEGER = re.compile(r"[-+]?[0-9]+")
DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")


def read(root: etree._Element, max_depth: int) -> dict:
    """The JSON of the resource `root` is; Refused (400) where the XML is not FHIR's form of one.
    `max_depth` bounds the nesting of elements, as formats.MAX_DEPTH bounds JSON's."""
    return _resource(root, etree.QName(root).localname, 1, max_depth)


def _refuse(path: str, why: str, code: str = "structure") -> Refused:
    return Refused(why, location=path, status=400, code=code)


def _local_name(element: etree._Element, path: str) -> str:
    name = etree.QName(element)
    if name.namespace != FHIR_NS:
        raise _refuse(path, f"the element {name.localname!r} is not in the namespace {FHIR_NS}")
    return name.localname


def _attributes(element: etree._Element) -> set[str]:
    """Its attributes but XML Schema's (xsi:schemaLocation, which the HL7 examples carry): they
    say where a schema is, nothing of the resource."""
    return {name for name in element.attrib if not name.startswith(XSI)}


def _no_text(text: str | None, path: str) -> None:
    if text and text.strip():
        raise _refuse(path, "FHIR XML holds values in value attributes, not as text")


def _elements(parent: etree._Element, path: str):
    """The child elements, skipping comments and processing instructions; text between them refused."""
    _no_text(parent.text, path)
    for child in parent:
        _no_text(child.tail, path)
        if isinstance(child.tag, str):
            yield child


def _resource(element: etree._Element, path: str, depth: int, max_depth: int) -> dict:
    name = _local_name(element, path)
    model = resource_model(name)
    if model is None:
        raise _refuse(path, f"{name!r} is not a FHIR resource type")
    if _attributes(element):
        raise _refuse(path, f"a resource has no attributes ({sorted(_attributes(element))[0]})")
    data = {"resourceType": name}
    _children(element, model, data, path, depth, max_depth)
    return data


def _children(parent: etree._Element, model: type, data: dict, path: str, depth: int, max_depth: int) -> None:
    if depth >= max_depth:
        raise _refuse(path, f"the body nests deeper than {max_depth} levels", "too-costly")
    known = layout(model).by_name
    repeated: set[str] = set()
    for child in _elements(parent, path):
        name = etree.QName(child).localname
        element = known.get(name)
        if element is None:
            raise _refuse(f"{path}.{name}", f"{model.__name__} has no element {name!r}")
        where = f"{path}.{name}"
        if element.kind == XHTML:
            value = _xhtml(child, where)
        else:
            _local_name(child, where)
            if element.kind == PRIMITIVE:
                _primitive(child, element.type_name, data, name, element.repeats, repeated, where, depth, max_depth)
                continue
            if element.kind == COMPLEX:
                value = _complex(child, element.model, where, depth + 1, max_depth)
            else:
                value = _contained(child, where, depth + 1, max_depth)
        if element.repeats:
            data.setdefault(name, []).append(value)
        elif name in data:
            raise _refuse(where, "given twice, and it does not repeat")
        else:
            data[name] = value
    for name in repeated:
        # JSON gives a repeating primitive's values and their ids and extensions as two lists in
        # step, with null where one has nothing; a list of nothing but nulls is left out.
        for key in (name, "_" + name):
            if all(item is None for item in data[key]):
                del data[key]


def _primitive(child: etree._Element, type_name: str, data: dict, name: str, repeats: bool,
               repeated: set[str], path: str, depth: int, max_depth: int) -> None:
    unknown = _attributes(child) - {"value", "id"}
    if unknown:
        raise _refuse(path, f"a primitive has no attribute {sorted(unknown)[0]!r}")
    raw = child.get("value")
    value = None if raw is None else _value(raw, type_name, path)
    extensions = []
    for extension in _elements(child, path):
        if _local_name(extension, path) != "extension":
            raise _refuse(path, "a primitive holds nothing but extensions")
        extensions.append(_complex(extension, get_fhir_model_class("Extension"), f"{path}.extension", depth + 2, max_depth))
    around = {key: item for key, item in (("id", child.get("id")), ("extension", extensions)) if item}
    if value is None and not around:
        raise _refuse(path, "an element has a value, extensions, or both")
    if repeats:
        data.setdefault(name, []).append(value)
        data.setdefault("_" + name, []).append(around or None)
        repeated.add(name)
        return
    if name in data or "_" + name in data:
        raise _refuse(path, "given twice, and it does not repeat")
    if value is not None:
        data[name] = value
    if around:
        data["_" + name] = around


def _value(raw: str, type_name: str, path: str):
    if type_name == "boolean":
        if raw not in ("true", "false"):
            raise _refuse(path, f"a boolean is true or false, not {raw[:40]!r}", "value")
        return raw == "true"
    if type_name in INTEGERS:
        if not INTEGER.fullmatch(raw):
            raise _refuse(path, f"not an integer: {raw[:40]!r}", "value")
        return int(raw)
    if type_name == "decimal":
        if not DECIMAL.fullmatch(raw):
            raise _refuse(path, f"not a decimal: {raw[:40]!r}", "value")
        return json.loads(raw)      # the number a JSON body with these digits gives
    return raw


def _complex(element: etree._Element, model: type, path: str, depth: int, max_depth: int) -> dict:
    attributes = layout(model).attributes
    unknown = _attributes(element) - set(attributes)
    if unknown:
        raise _refuse(path, f"{model.__name__} has no attribute {sorted(unknown)[0]!r}")
    data = {name: element.get(name) for name in attributes if element.get(name) is not None}
    _children(element, model, data, path, depth, max_depth)
    if not data:
        raise _refuse(path, "an element has a value, attributes or children")
    return data


def _contained(wrapper: etree._Element, path: str, depth: int, max_depth: int) -> dict:
    """A resource inside another is wrapped in an element named for its type."""
    if _attributes(wrapper):
        raise _refuse(path, "the element around a resource has no attributes")
    inner = list(_elements(wrapper, path))
    if len(inner) != 1:
        raise _refuse(path, "holds one resource")
    return _resource(inner[0], f"{path}.{etree.QName(inner[0]).localname}", depth, max_depth)


def _xhtml(div: etree._Element, path: str) -> str:
    name = etree.QName(div)
    if (name.namespace, name.localname) != (XHTML_NS, "div"):
        raise _refuse(path, f"the narrative is a div in the namespace {XHTML_NS}")
    return etree.tostring(_in_default_namespace(div), encoding="unicode", with_tail=False)


def _in_default_namespace(element: etree._Element, parent: etree._Element | None = None) -> etree._Element:
    """A copy of a narrative's XHTML written as FHIR's JSON holds it: its namespace the default one,
    no other declared. A div written with a prefix (`<h:div xmlns:h=…>`) was kept so, and failed
    the official check; the declarations of the FHIR XML around it (`xmlns:f`) were kept too."""
    out = etree.Element(element.tag, nsmap={None: XHTML_NS}) if parent is None else etree.SubElement(parent, element.tag)
    for name, value in element.attrib.items():
        out.set(name, value)
    out.text = element.text
    for child in element:
        if isinstance(child.tag, str):
            _in_default_namespace(child, out).tail = child.tail
        else:   # a comment or a processing instruction, its tail with it
            out.append(copy.deepcopy(child))
    return out
