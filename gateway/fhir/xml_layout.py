"""What FHIR's XML says that its JSON does not, per type, read once from fhir.resources' models: the
elements in FHIR's order, which of them are primitives, resources or XHTML, which repeat, and which
are XML attributes (https://hl7.org/fhir/R4/xml.html). xml_writer and xml_reader both follow it."""
from __future__ import annotations

import functools
import types
import typing
from dataclasses import dataclass

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.resource import Resource
from fhir_core.utils import determine_version_prefix_from_class, get_fhir_type_name, is_primitive_type

FHIR_NS = "http://hl7.org/fhir"
XHTML_NS = "http://www.w3.org/1999/xhtml"
PRIMITIVE, COMPLEX, RESOURCE, XHTML = range(4)


@dataclass(frozen=True)
class Element:
    name: str            # as JSON names it
    kind: int            # PRIMITIVE, COMPLEX, RESOURCE or XHTML
    model: type | None   # a complex element's type
    type_name: str       # FHIR's name of its type: boolean, decimal, HumanName…
    repeats: bool


@dataclass(frozen=True)
class Layout:
    elements: tuple[Element, ...]   # in FHIR's order
    attributes: tuple[str, ...]     # written as XML attributes
    names: frozenset[str]           # every name a JSON value of the type may hold

    @functools.cached_property
    def by_name(self) -> dict[str, Element]:
        return {element.name: element for element in self.elements}


def _repeats(annotation) -> bool:
    origin = typing.get_origin(annotation)
    if origin is list:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_repeats(argument) for argument in typing.get_args(annotation))
    return False


def is_resource(model: type | None) -> bool:
    return isinstance(model, type) and issubclass(model, Resource)


def resource_model(name) -> type | None:
    """The model of a resource type, or None when the name is not one."""
    try:
        model = get_fhir_model_class(name)
    except (KeyError, ValueError, TypeError):
        return None
    return model if is_resource(model) else None


@functools.lru_cache(maxsize=None)
def layout(model: type) -> Layout:
    """A type's elements. A resource's `id` is an element; a datatype's or backbone element's is an
    attribute, and so is an extension's `url`."""
    prefix = determine_version_prefix_from_class(model)
    aliases = model.get_alias_mapping()
    if is_resource(model):
        attributes: tuple[str, ...] = ()
    elif model is get_fhir_model_class("Extension"):
        attributes = ("id", "url")
    else:
        attributes = ("id",)
    elements: list[Element] = []
    names = {"resourceType"} if is_resource(model) else set(attributes)
    for element in model.elements_sequence():
        field = model.model_fields[aliases[element]]
        name = field.alias
        if name in attributes:
            continue
        type_name = get_fhir_type_name(field, prefix=prefix)
        repeats = _repeats(field.annotation)
        if type_name == "xhtml":
            elements.append(Element(name, XHTML, None, type_name, repeats))
        elif is_primitive_type(field):
            elements.append(Element(name, PRIMITIVE, None, type_name, repeats))
            names.add("_" + name)
        elif type_name == "Resource":
            elements.append(Element(name, RESOURCE, None, type_name, repeats))
        else:
            elements.append(Element(name, COMPLEX, get_fhir_model_class(type_name), type_name, repeats))
        names.add(name)
    return Layout(tuple(elements), attributes, frozenset(names))
