"""FHIR XML beside JSON (IHE MHD requires both of a Document Responder and Recipient). Resources are
kept and searched as JSON; XML is written for the answer (xml_writer), and an XML body is read into
JSON (xml_reader), then checked as a JSON body is. Parsed without DTD, entities or network; a
document type declaration is refused wherever it stands."""
from __future__ import annotations

import base64
import binascii
import codecs
import decimal
import hashlib
import json
import re
import typing
import uuid
from functools import cache
from typing import Callable

import orjson
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.resource import Resource
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from lxml import etree

from gateway import base64text
from gateway.refusal import Refused
from gateway.cda.parser import safe_parser

from . import extensions, invariants, required_codes, xml_reader, xml_writer
from .narrative import check_narratives
from .xml_layout import FHIR_NS

FHIR_XML = "application/fhir+xml"
# application/xml+fhir and application/json+fhir are DSTU2's names of the two formats, which R4
# (http.html, Content Types) encourages servers to take still: HAPI's client accepts them beside the new ones.
XML_TYPES = ("application/fhir+xml", "application/xml", "text/xml", "application/xml+fhir")
XML_FORMATS = ("xml", *XML_TYPES)


def to_xml(resource: dict | str) -> bytes:
    return xml_writer.to_xml(json.loads(resource) if isinstance(resource, str) else resource)


def from_xml(body: bytes | bytearray) -> dict:
    """The JSON form of a FHIR XML resource; Refused (400) when it is not FHIR's XML of one."""
    return _apart(body, _read_xml)


def _read_xml(body) -> dict:
    try:
        root = etree.fromstring(body if isinstance(body, bytes) else bytes(body), safe_parser())
    except (etree.XMLSyntaxError, ValueError) as exc:
        raise Refused(f"the body is not XML: {exc}", location="/", status=400, code="structure") from None
    if root.getroottree().docinfo.doctype or root.getroottree().docinfo.internalDTD is not None:
        raise Refused("document type declarations and entities are not accepted", location="/",
                              status=400, code="security")
    if etree.QName(root).namespace != FHIR_NS:
        raise Refused(f"the body is not a FHIR resource in the namespace {FHIR_NS}",
                              location="/", status=400, code="structure")
    return xml_reader.read(root, MAX_DEPTH)


# Deeper than any FHIR resource the gateway takes (a Bundle's resource's contained resource's
# extension's extension…): bounds the work a body can cause before anything reads it.
MAX_DEPTH = 48
LONG_DATA = 64 * 1024   # characters of a Binary's base64 the FHIR model is not given
BOM = codecs.BOM_UTF8
# A quoted run of base64 at least that long; read apart from the rest of the body (_apart).
LONG_STRING = re.compile(rb'(["\'])([A-Za-z0-9+/=]{%d,})\1' % LONG_DATA)


# The elements (JSON objects) a FHIR body may hold: checking each against the model and FHIR's
# invariants costs about 55 us (a Patient of 50,000 telephone numbers took 2.3 s), and a body may
# be 28 MB. An ITI-65 submission of 200 documents holds about 12,000.
MAX_ELEMENTS = 50_000


def _elements(value) -> int:
    """The objects of a JSON value, counted up to one over MAX_ELEMENTS."""
    count, stack = 0, [value]
    while stack and count <= MAX_ELEMENTS:
        item = stack.pop()
        if isinstance(item, dict):
            count += 1
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


def _depth(value) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:
            return depth
        if isinstance(item, dict):
            stack += [(v, depth + 1) for v in item.values()]
        elif isinstance(item, list):
            stack += [(v, depth + 1) for v in item]
    return deepest


class NotFhirJson(ValueError):
    """JSON that FHIR's JSON does not allow: a key given twice in one object, a null, an empty
    object or array."""


_READ = object()   # what an object checked by _check_members is read as: nothing is built
LEFT_OUT = ": an element without a value is left out"


def _check_members(pairs: list[tuple[str, object]]) -> object:
    """The members of one JSON object, as FHIR's JSON has them: orjson keeps the last of a key
    given twice, silently, so a `subject` or a `securityLabel` sent twice lost one; and the FHIR
    models take a null, `{}` or `[]` for an element left out, which the resource was then kept
    and served with, where FHIR's validator refuses them all. A null stands in a primitive's array
    aligned with its extensions' (`given` beside `_given`), and nowhere else."""
    if not pairs:
        raise NotFhirJson(f"an empty object{LEFT_OUT}")
    keys = {key for key, _ in pairs}
    if len(keys) < len(pairs):
        raise NotFhirJson("a key given twice in one object")
    for key, value in pairs:
        if value is None:
            raise NotFhirJson(f"null{LEFT_OUT}")
        if value.__class__ is list:
            if not value:
                raise NotFhirJson(f"an empty array{LEFT_OUT}")
            if None in value and (key[1:] if key.startswith("_") else "_" + key) not in keys:
                raise NotFhirJson(f"null{LEFT_OUT}")
    return _READ


class _Members(list):
    """A JSON object's members in their order, a key given twice kept twice."""


def _pointer_step(key: str) -> str:
    """A key as a JSON pointer names it (RFC 6901), cut at 64 characters."""
    return key[:64].replace("~", "~0").replace("/", "~1")


def _not_fhir_json_at(body: bytes | bytearray | memoryview) -> tuple[str, str]:
    """Where the first member _check_members refuses stands in `body` (a JSON pointer), and what
    it is (read again for it: only a refusal does)."""
    stack = [(json.loads(bytes(body), object_pairs_hook=_Members), "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, _Members):
            try:
                _check_members([(key, _READ if isinstance(value, _Members) else value) for key, value in item])
            except NotFhirJson as found:
                keys: set[str] = set()
                for key, value in item:
                    member = f"{path}/{_pointer_step(key)}"
                    if key in keys or value is None or value == []:
                        return member, str(found)
                    if isinstance(value, list) and None in value:
                        return f"{member}/{value.index(None)}", str(found)
                    keys.add(key)
                return path or "/", str(found)
            stack += [(value, f"{path}/{_pointer_step(key)}") for key, value in reversed(item)]
        elif isinstance(item, list):
            stack += [(value, f"{path}/{index}") for index, value in reversed(list(enumerate(item)))]
    return "/", "not FHIR's JSON"


def _parse_json(body: bytes | bytearray | memoryview) -> object:
    """orjson's reading (RFC 8259, strictly), of bounded depth, in FHIR's JSON (_check_members:
    the standard library's reader, told to build nothing, checks each object; it runs after the
    depth is checked, as it recurses)."""
    data = orjson.loads(body)
    if _depth(data) > MAX_DEPTH:
        raise Refused(f"the body nests deeper than {MAX_DEPTH} levels", location="/", status=400,
                      code="too-costly")
    json.loads(body if isinstance(body, (bytes, bytearray)) else bytes(body), object_pairs_hook=_check_members)
    return data


def load_json(body: bytes | bytearray) -> object:
    """JSON data of bounded depth; Refused (400) otherwise. UTF-8 (RFC 8259), a byte order mark
    tolerated."""
    try:
        data = _apart(memoryview(body)[len(BOM):] if body.startswith(BOM) else body, _parse_json)
    except NotFhirJson:
        where, what = _not_fhir_json_at(memoryview(body)[len(BOM):] if body.startswith(BOM) else body)
        raise Refused(f"{where}: FHIR's JSON does not allow {what}", location=where, status=400,
                      code="structure") from None
    except ValueError as exc:
        raise Refused(_not_utf8(body) or f"the body is not JSON: {str(exc)[:200]}", location="/", status=400,
                      code="structure") from None
    # JSON writes U+0000 as \u0000 only (a raw one is refused above): looked for in the body first.
    if b"\\u0000" in body and (where := _nul_at(data)) is not None:
        raise Refused(f"{where}: a string holds the character U+0000 (NUL), which no FHIR string may hold",
                      location=where, status=400, code="value")
    return data


def _not_utf8(body: bytes | bytearray) -> str | None:
    """What is wrong with a body that is not UTF-8, or None. orjson says "str is not valid UTF-8:
    surrogates not allowed" at line 1, column 1 of a body in Windows-1252 or UTF-16 whatever
    byte is wrong: this names the encoding FHIR asks for and the first byte outside it."""
    for mark, name in ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                       (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")):
        if body.startswith(mark):
            return f"the body is in {name} (its byte order mark says so): FHIR's JSON is in UTF-8 (RFC 8259)"
    if b"\x00" in body[:4]:   # JSON's first character is ASCII: in UTF-16 or UTF-32, beside NUL bytes
        return "the body is in UTF-16 or UTF-32 (NUL bytes begin it): FHIR's JSON is in UTF-8 (RFC 8259)"
    try:
        codecs.decode(body, "utf-8")
    except UnicodeDecodeError as exc:
        return (f"the body is not in UTF-8, as FHIR's JSON is (RFC 8259): byte 0x{body[exc.start]:02X} at offset "
                f"{exc.start} is not UTF-8 (a body in Windows-1252 or ISO 8859-1 is refused: send it in UTF-8)")
    return None


def _nul_at(data) -> str | None:
    """The path of the first key or string of `data` that holds U+0000."""
    stack = [(data, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return path or "/"
        elif isinstance(item, dict):
            for key, value in item.items():
                if "\x00" in key:
                    return path or "/"
                stack.append((value, f"{path}/{key}"))
        elif isinstance(item, list):
            stack += [(value, f"{path}/{index}") for index, value in enumerate(item)]
    return None


def _apart(body, parse: Callable[[bytes | bytearray | memoryview], object]):
    """`parse` of the body, its long quoted runs of base64 (a Bundle's document, as a JSON string or
    an XML value attribute) read apart. A parser builds a long string in a buffer of its own, then
    copies it: 27 MB of base64 took 53 MB beside the body (json and orjson alike; lxml keeps the
    attribute, then gives a copy). Here the body is parsed with a short stand-in for each run, then
    each is made a str straight from the body, once. A stand-in not found back as a whole string
    value (the run was inside another string, a key, a narrative), or a body the parser refuses,
    is parsed again whole: what it says of it is said of the body as sent."""
    spans = [found.span(2) for found in LONG_STRING.finditer(body)] if len(body) >= LONG_DATA else []
    if not spans:
        return parse(body)
    stand_in = uuid.uuid4().hex     # unguessable: a body cannot hold it where a string is
    parts, start = [], 0
    for number, (begin, end) in enumerate(spans):
        parts += [body[start:begin], f"{stand_in}-{number}".encode()]
        start = end
    parts.append(body[start:])
    try:
        data = parse(b"".join(parts))
    except (ValueError, Refused):
        return parse(body)
    found = _put_back(data, {f"{stand_in}-{n}": span for n, span in enumerate(spans)}, memoryview(body))
    return data if found == len(spans) else parse(body)


def _put_back(data, stand_ins: dict[str, tuple[int, int]], view: memoryview) -> int:
    """Replace each stand-in string value of `data` by its text from the body; how many were."""
    found, stack = 0, [data]
    while stack:
        item = stack.pop()
        pairs = item.items() if isinstance(item, dict) else enumerate(item) if isinstance(item, list) else ()
        for key, value in pairs:
            if isinstance(value, str) and value in stand_ins:
                begin, end = stand_ins.pop(value)
                item[key] = str(view[begin:end], "ascii")
                found += 1
            elif isinstance(value, (dict, list)):
                stack.append(value)
    return found


def load(body: bytes | bytearray, content_type: str | None, *, completed: bool = False) -> dict:
    """A request body as the JSON of a FHIR resource, whichever of FHIR's formats it came in,
    checked (`check`) before anything reads it. `completed`: by its service, which checks it once it
    has (a patient's Consent, given its scope, category, patient and policy): its shape only, here."""
    xml = (content_type or "").split(";")[0].strip() in XML_TYPES
    data = from_xml(body) if xml else load_json(body)
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        raise Refused("the body is not a FHIR resource (no resourceType)", location="/", status=400,
                              code="structure")
    _model_class(data["resourceType"])
    if _elements(data) > MAX_ELEMENTS:
        raise Refused(f"the body holds over {MAX_ELEMENTS} elements: send it in parts", location="/", status=413,
                      code="too-costly")
    check(data, json_types=not xml, shape_only=completed)
    return data


def _model_class(res_type: str) -> type:
    try:
        return get_fhir_model_class(res_type)
    except (KeyError, ValueError, TypeError):
        raise Refused(f"unknown resource type {res_type[:64]!r}", location="resourceType", status=400,
                      code="structure") from None


def check(data: dict, json_types: bool = True, *, shape_only: bool = False) -> None:
    """A resource checked against the FHIR model of its type, with what FHIR refuses and the models
    take (`_unread`) and its extensions (`refused_extension`), unless `shape_only`; and its
    narratives against FHIR's rules for them.
    `json_types`: its values came as JSON, each in the JSON type FHIR's JSON gives it (not for XML,
    whose reader types them)."""
    model = _model_class(data["resourceType"])
    aside = _set_aside_long_binary_data(data)
    try:
        read = model.model_validate(data)
    except KeyError as exc:
        # fhir.resources looks up the type of a resource inside another (a Bundle's entry, a contained
        # one) without checking it: 'R4.<type>Type' was not found.
        unknown = str(exc.args[0]).removeprefix("R4.").removesuffix("Type")[:64] if exc.args else "?"
        raise Refused(f"unknown resource type {unknown!r} in the {data['resourceType']}", location="resourceType",
                      status=400, code="structure") from None
    except (ValueError, TypeError, AttributeError, RecursionError) as exc:
        # Elements the body leaves out are its service's to require, in its own terms (an ITI-65
        # entry's, a Consent's actor), which it does before anything is kept (validation.validate);
        # what the body says must have FHIR's shape. The models' url type reads a value that is not
        # a string as one (an AttributeError).
        errors = [e for e in exc.errors() if e.get("type") != "missing"] if hasattr(exc, "errors") else [None]
        if errors:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:10]) \
                if errors[0] is not None else f"a value is not of its element's type ({str(exc)[:300]})"
            raise Refused(f"the body is not a valid FHIR {data['resourceType']}: {problems}",
                                  location=data["resourceType"], status=422, code="invalid") from None
    else:
        if not shape_only and (unread := _unread(data, read, json_types)):
            where, problem, status, code = unread
            raise Refused(f"{where}: {problem}", location=where, status=status, code=code)
        if not shape_only and (refused := refused_extension(data)):
            where, problem, code = refused
            raise Refused(f"{where}: {problem}", location=where, status=422, code=code)
    finally:
        for resource, value in aside:
            resource["data"] = value
    check_narratives(data, data["resourceType"])


def refused_extension(data: dict) -> tuple[str, str, str] | None:
    """(JSON pointer, problem, issue code) of the first extension of a resource, at any depth, that
    it is refused for: a modifier extension, or one that breaks its definition (`extensions`). A
    modifier extension changes the meaning of what holds it, and the gateway understands none (the
    definitions it serves define none): FHIR forbids processing a resource as if it were absent,
    and an ITI-65 CDA's DocumentReference that carried one was registered from its CDA, the
    extension ignored."""
    stack: list = [(data, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict):
            if node.get("modifierExtension"):
                url = next((e.get("url") for e in node["modifierExtension"] if isinstance(e, dict)), None)
                return (f"{path}/modifierExtension/0", f"a modifier extension ({str(url)[:200]}) this gateway does "
                        "not understand: the resource cannot be processed without it", "not-supported")
            for index, extension in enumerate(node.get("extension") or []):
                if isinstance(extension, dict) and (problem := extensions.problem(extension)):
                    return f"{path}/extension/{index}", problem, "invalid"
            stack.extend((value, f"{path}/{_pointer_step(key)}") for key, value in reversed(node.items()))
        elif isinstance(node, list):
            stack.extend((item, f"{path}/{index}") for index, item in reversed(list(enumerate(node))))
    return None


def _unread(sent: dict, read: FHIRAbstractModel, json_types: bool) -> tuple[str, str, int, str] | None:
    """(JSON pointer, problem, status, code) of the first value of `sent` that the model `read`
    took and FHIR does not, walking both together:

    - a primitive sent as another JSON type than FHIR's JSON gives its type (a boolean as true or
      false, an integer as a whole number, a decimal as a number, anything else as a string): the
      models read "true", "3" or a number for a date, the resource was kept as sent and served
      so, and a date given as a number was a 500 where it was indexed (not for XML, whose reader
      gives each value its type);
    - a code outside the value set FHIR R4 binds it to (required_codes), or not of the grammar it
      binds it to (a MIME type): the models check its characters only, and an Identifier.use of
      `main` was kept and failed the official check;
    - a primitive's value that FHIR's type refuses and the models take (`_primitive_problem`);
    - an invariant of FHIR's broken (`invariants`: ext-1, ref-1, dom-4…), and a reference that is
      not a literal one or names a type its element does not allow (`_reference_problem`)."""
    # Each node with the resource holding it and the one containing that resource (%resource and
    # %rootResource of the invariants).
    stack: list = [(sent, read, "", sent, sent)]
    # An element's own problem is told before an invariant of what holds it (a Consent's code
    # outside its value set before the Consent's ppc-1).
    broken = None
    while stack:
        given, model, path, resource, root = stack.pop()
        fields = type(model).model_fields
        if broken is None and isinstance(given, dict) and (
                problem := invariants.broken(_classes(type(model)), given, resource, root)):
            broken = path or "/", problem, 422, "invalid"
        for name in model.model_fields_set:
            value = getattr(model, name)
            if value is None:
                continue
            element = fields[name].alias or name
            codes = required_codes.allowed(type(model).__name__, element)
            sent_value = given.get(element) if isinstance(given, dict) else None
            pairs = (zip(value, sent_value if isinstance(sent_value, list) and len(sent_value) == len(value)
                         else [None] * len(value)) if isinstance(value, list) else [(value, sent_value)])
            for index, (item, sent_item) in enumerate(pairs):
                where = f"{path}/{_pointer_step(element)}" + (f"/{index}" if isinstance(value, list) else "")
                if isinstance(item, FHIRAbstractModel):
                    if problem := _reference_problem(item, fields[name].json_schema_extra, element == "subject",
                                                     resource):
                        return f"{where}/reference", problem, 422, "invalid"
                    if problem := _attachment_problem(item):
                        return where, problem, 422, "invalid"
                    if not isinstance(item, Resource):
                        stack.append((sent_item, item, where, resource, root))
                    else:   # a contained resource's root is its container's; a Bundle entry's, itself
                        stack.append((sent_item, item, where, sent_item, root if element == "contained" else sent_item))
                    continue
                expected = _json_kind(item)
                if json_types and sent_item is not None and _json_kind(sent_item) != expected and not (
                        expected == "a number" and _json_kind(sent_item) == "a whole number"):
                    return where, f"FHIR's JSON gives this value as {expected}", 400, "structure"
                if item == "":
                    return where, "FHIR has no empty value: leave the element out", 400, "structure"
                if codes is not None and isinstance(item, str) and item not in codes:
                    return (where, f"not a code of the value set FHIR binds {type(model).__name__}.{element} to "
                            "(required)", 422, "code-invalid")
                if isinstance(item, str) and (grammar := required_codes.grammar(type(model).__name__, element)) \
                        and not grammar.fullmatch(item):
                    return where, "not a MIME type (BCP 13), as FHIR's required binding has it", 422, "code-invalid"
                if isinstance(item, str) and (problem := _primitive_problem(item, _primitive_type(type(model), name))):
                    return where, problem, 422, "invalid"
    return broken


# FHIR R4's uri, url and canonical (regex \S*) hold no whitespace and its id at most 64 characters,
# where the models' patterns are not anchored (fhir_core 1.1: ' ' matches \S* at its start) and
# their ids run to 255: an Identifier.system of ' ' or '', or a contained resource's id of 65
# characters, was kept as submitted, and failed the official check.
WHITESPACE = re.compile(r"\s")
ID_LENGTH = 64


def _primitive_problem(value: str, primitive: str | None) -> str | None:
    if primitive in ("uri", "url", "canonical") and WHITESPACE.search(value):
        return f"a FHIR {primitive} holds no whitespace"
    if primitive == "id" and len(value) > ID_LENGTH:
        return f"a FHIR id has at most {ID_LENGTH} characters"
    return None


# A literal reference (FHIR R4's reference format): [base URL/]Type/id[/_history/version]; and a
# conditional one, Type?search.
LITERAL_REFERENCE = re.compile(r"(?:https?://\S+?/)?([A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}(?:/_history/[A-Za-z0-9\-.]{1,64})?")
CONDITIONAL_REFERENCE = re.compile(r"([A-Z][A-Za-z]+)\?\S+")


def _reference_problem(model: FHIRAbstractModel, element: dict | None, conditional: bool, resource: dict) -> str | None:
    """A Reference's `reference` that FHIR refuses and the models take (any string), or that names
    a type its element, or its own `type`, does not. One to a Bundle's entry (urn:uuid:, urn:oid:)
    is resolved where it is used, as a conditional one is where `conditional` (a subject: PDSM4DMP's
    examples name their patient `Patient?identifier=…`); anywhere else a conditional reference would
    be kept as sent. A local one names a resource `resource` contains (or ref-1 says it does not)."""
    reference = getattr(model, "reference", None) if type(model).__name__ == "Reference" else None
    if not isinstance(reference, str) or reference.startswith(("urn:uuid:", "urn:oid:")):
        return None
    if reference.startswith("#"):
        named = [c.get("resourceType") for c in resource.get("contained", []) if isinstance(c, dict)
                 and c.get("id") == reference[1:]]
        if not named or not isinstance(named[0], str):
            return None
        target = named[0]
    else:
        literal = LITERAL_REFERENCE.fullmatch(reference) or (CONDITIONAL_REFERENCE.fullmatch(reference) if conditional
                                                             else None)
        if literal is None or not _is_resource_type(literal.group(1)):
            return ("not a literal reference (Type/id, an absolute URL of one, urn:uuid:, urn:oid: or #id)"
                    + ("" if conditional else "; a conditional one (Type?search) is taken at a subject only"))
        target = literal.group(1)
    allowed = (element or {}).get("enum_reference_types") or ["Resource"]
    if "Resource" not in allowed and target not in allowed:
        return f"names a {target}, where FHIR allows {', '.join(allowed)}"
    if model.type is not None and model.type != target:
        return f"names a {target}, where its type says {model.type}"
    return None


def _attachment_problem(model: FHIRAbstractModel) -> str | None:
    """An Attachment whose size or SHA-1 hash is not that of its data (FHIR: 'the number of bytes
    of data', 'the SHA-1 of the data')."""
    if type(model).__name__ != "Attachment" or model.data is None:
        return None
    # The model holds base64Binary decoded: data and hash are bytes.
    if model.size is not None and model.size != len(model.data):
        return f"size {model.size} is not the {len(model.data)} bytes of its data"
    if model.hash is not None and model.hash != hashlib.sha1(model.data).digest():
        return f"hash {sha1_mismatch(model.hash, model.data)}"
    return None


def sha1_mismatch(given: bytes | None, data: bytes) -> str:
    """Why an Attachment's hash (its base64 read: `given`, None if it is not base64) is not the
    SHA-1 of `data`. Said plainly when it is the SHA-1's hexadecimal text, as XDS writes a hash
    (hexBinary) and IHE MHD's own example submissions give it: a client that followed them was told
    "not the SHA-1 of the Binary" of a hash that was, written otherwise."""
    digest = hashlib.sha1(data).digest()
    if given is not None and given.lower() == digest.hex().encode():
        return ("is the base64 of the SHA-1's hexadecimal text, as XDS writes a hash (hexBinary); FHIR's is the "
                f"base64 of the SHA-1's 20 bytes: {base64.b64encode(digest).decode()}")
    return "is not the SHA-1 of its data"


@cache
def _is_resource_type(name: str) -> bool:
    try:
        return issubclass(get_fhir_model_class(name), Resource)
    except (KeyError, ValueError, TypeError):
        return False


@cache
def _classes(model_class: type) -> list[str]:
    """A model's class and its bases, by name: the invariants of each apply to it."""
    return [cls.__name__ for cls in model_class.__mro__]


@cache
def _primitive_type(model_class: type, field: str) -> str | None:
    """FHIR's name of the primitive type of a model's element (uri, id…), read off its annotation."""
    stack = [model_class.model_fields[field].annotation]
    while stack:
        annotation = stack.pop()
        for marker in getattr(annotation, "__metadata__", ()):
            if isinstance(getattr(marker, "__visit_name__", None), str):
                return marker.__visit_name__
        stack.extend(typing.get_args(annotation))
    return None


def _json_kind(value) -> str:
    """The JSON a primitive is: as FHIR's JSON writes the value a model read, or as a body sent it."""
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, (float, decimal.Decimal)):
        return "a number"
    return "an object or array" if isinstance(value, (dict, list)) else "a string"


def _set_aside_long_binary_data(data: dict) -> list[tuple[dict, str]]:
    """The long data of the Binary resources of a body (itself, or its Bundle's entries), taken out
    of what the model checks and checked here, a part at a time: the model copies the string and
    decodes it, 47 MB more for a 20 MB document, beside the body and its parsed JSON (27 MB each).
    Returns (resource, data) to put back."""
    entries = data.get("entry") if data.get("resourceType") == "Bundle" else None
    resources = [data]
    if isinstance(entries, list):
        resources += [e.get("resource") for e in entries if isinstance(e, dict)]
    aside = []
    for resource in resources:
        if not (isinstance(resource, dict) and resource.get("resourceType") == "Binary"
                and isinstance(resource.get("data"), str) and len(resource["data"]) > LONG_DATA):
            continue
        value = resource["data"]
        try:
            base64text.check(value)
        except (binascii.Error, ValueError):
            raise Refused(f"the body is not a valid FHIR {data['resourceType']}: a Binary's data is not base64",
                          location=data["resourceType"], status=422, code="invalid") from None
        aside.append((resource, resource.pop("data")))
    return aside
