"""FHIR XML beside JSON (IHE MHD requires both of a Document Responder and Recipient): fhir.resources'
models write and read it. Resources are kept and searched as JSON; XML is made for the answer, and
an XML body is read into the JSON the rest of the gateway works on. Parsed without DTD, entities or
network; a document type declaration is refused wherever it stands."""
from __future__ import annotations

import functools
import json

import fhir_core.utils
import fhir_core.xml_utils
from fhir.resources.R4B import get_fhir_model_class
from lxml import etree

from gateway.cda.errors import DocumentRefused

FHIR_XML = "application/fhir+xml"
XML_TYPES = ("application/fhir+xml", "application/xml", "text/xml", "application/xml+fhir")
XML_FORMATS = ("xml", *XML_TYPES)

# fhir_core imports each field's type by name again for every element it writes: remembering the
# answer per field takes a DocumentReference from 36 to 16 ms (bench/, "xml").
fhir_core.xml_utils.get_fhir_type_name = functools.lru_cache(maxsize=4096, typed=True)(
    fhir_core.utils.get_fhir_type_name)


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def to_xml(resource: dict | str) -> bytes:
    data = json.loads(resource) if isinstance(resource, str) else resource
    return get_fhir_model_class(data["resourceType"]).model_validate(data).model_dump_xml()


def from_xml(body: bytes) -> dict:
    """The JSON form of a FHIR XML resource; DocumentRefused (400) when it is not one."""
    try:
        root = etree.fromstring(body, _parser())
    except (etree.XMLSyntaxError, ValueError) as exc:
        raise DocumentRefused(f"the body is not XML: {exc}", location="/", status=400, code="structure") from None
    if root.getroottree().docinfo.doctype or root.getroottree().docinfo.internalDTD is not None:
        raise DocumentRefused("document type declarations and entities are not accepted", location="/",
                              status=400, code="security")
    if etree.QName(root).namespace != "http://hl7.org/fhir":
        raise DocumentRefused("the body is not a FHIR resource in the namespace http://hl7.org/fhir",
                              location="/", status=400, code="structure")
    name = etree.QName(root).localname
    try:
        model = get_fhir_model_class(name)
        resource = model.model_validate_xml(body, xmlparser=_parser())
    except (KeyError, ValueError, TypeError) as exc:
        raise DocumentRefused(f"the XML is not a valid FHIR {name}: {str(exc)[:300]}", location=name,
                              status=400, code="structure") from None
    return json.loads(resource.model_dump_json(exclude_none=True, by_alias=True))


def load(body: bytes, content_type: str | None) -> object:
    """A request body as JSON data, whichever of FHIR's formats it came in."""
    if (content_type or "").split(";")[0].strip() in XML_TYPES:
        return from_xml(body)
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DocumentRefused(f"the body is not JSON: {exc}", location="/", status=400, code="structure") from None
