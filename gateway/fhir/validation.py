"""Validation of every resource the gateway writes, with fhir.resources' R4B models, and what
those models leave out that an input can break: a period's start after its end, a character XML
cannot carry in a string, and the elements the profiles the gateway serves under prohibit."""
from __future__ import annotations

import hashlib
import re
from typing import Iterator

import orjson
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from gateway.fhir import known_profiles
from gateway.fhir.primitives import present
from gateway.fhir.xml_writer import NOT_XML
from gateway.mapping.dates import InvalidTime, fhir_range


# What the profiles every stored DocumentReference and List is served under prohibit (max 0 in
# PDSm's comprehensive DocumentReference and SubmissionSet) and the R4 models accept. A document
# that is not a CDA keeps its submitted metadata, and a SubmissionSet is kept as submitted: such an
# element was kept, and every read of it failed the official check (tests/unit/test_validation.py
# compares this with the StructureDefinitions).
PROHIBITED = {
    "DocumentReference": ("modifierExtension", "docStatus"),
    "List": ("modifierExtension", "encounter", "orderedBy", "emptyReason", "entry.flag", "entry.deleted", "entry.date"),
}


class InvalidResource(ValueError):
    def __init__(self, res_type: str, problems: list[tuple[str, str]]):
        self.res_type = res_type
        self.problems = problems
        super().__init__("; ".join(f"{res_type}.{loc}: {msg}" for loc, msg in problems))


def validate(resource: dict, *, kept: bool = False) -> None:
    """`kept`: a resource as stored, checked again after a change the gateway made to it (a label, a
    status) or gathered into a record's copy: its structure only. What it was kept with before
    these checks existed is not refused now: a patient could not have masked such a document."""
    res_type = resource.get("resourceType")
    try:
        model = get_fhir_model_class(res_type)
    except (KeyError, ValueError, TypeError):
        raise InvalidResource(str(res_type), [("resourceType", f"unknown resource type {res_type!r}")]) from None
    try:
        _model_validate(model, resource)
    except ValidationError as exc:
        problems = [(".".join(str(p) for p in err["loc"]) or "(root)", err["msg"]) for err in exc.errors()[:20]]
        raise InvalidResource(res_type, problems) from None
    if kept:
        return
    problems = [(path, "is not allowed: PDSm prohibits it (max 0)") for path in prohibited(resource)]
    problems += [(path, f"the start ({start}) is after the end ({end}) (FHIR per-1)")
                 for path, start, end in _periods(resource, "") if _reversed(start, end)]
    problems += [(f"contained[{index}]", "is referenced from nowhere in the resource (FHIR dom-3)")
                 for index in _unreferenced_contained(resource)]
    problems += _unknown_profiles(resource)
    data = _json(resource)
    if _may_hold_not_xml(data):
        problems += [(path, f"holds the character U+{ord(character):04X}, which XML cannot carry: of the control "
                            "characters, a FHIR string holds tab, line feed and carriage return only")
                     for path, character in _found(resource, "", NOT_XML)]
    if _may_hold_other_spaces(data):
        problems += [(path, f"holds U+{ord(character):04X}, a space FHIR's strings do not hold: write a plain space")
                     for path, character in _found(resource, "", OTHER_SPACES, FREE_TEXT)]
    if problems:
        raise InvalidResource(res_type, problems[:20])


# The contained resources the models found valid, by the SHA-256 of their JSON (32 bytes each,
# however large a sender's resource). Each document a hospital's professional signs contains the
# same author and legal authenticator, with their roles and organisations (six of the seven
# resources a CI-SIS document's DocumentReference contains), and validating them again took 1.2 ms
# of the 1.7 the models spend on such a DocumentReference. A contained resource is validated by its
# own type's model whatever contains it, so one that passed passes again. Emptied when full.
VALID_CONTAINED: set[bytes] = set()
VALID_CONTAINED_SIZE = 4096
AS_JSON_ONLY = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS


def _model_validate(model, resource: dict) -> None:
    """The model's validation of `resource`, its contained resources found valid before left out."""
    keys = _contained_keys(resource)
    unseen = [item for item, key in zip(resource.get("contained") or [], keys) if key not in VALID_CONTAINED]
    if keys and len(unseen) < len(keys):
        trimmed = {name: value for name, value in resource.items() if name != "contained"}
        if unseen:
            trimmed["contained"] = unseen
        try:
            model.model_validate(trimmed)
        except ValidationError:
            # Its errors where the sender wrote them: the contained resources at their own indexes.
            model.model_validate(resource)
    else:
        model.model_validate(resource)
    if len(VALID_CONTAINED) + len(keys) > VALID_CONTAINED_SIZE:
        VALID_CONTAINED.clear()
    VALID_CONTAINED.update(keys)


def _contained_keys(resource: dict) -> list[bytes]:
    """The digest of each contained resource's JSON. None when one is not a JSON object, or holds
    what JSON does not (a date, a dataclass, a subclass of str), which orjson would write as the
    JSON of another value that the model may refuse: then the model validates them all."""
    contained = resource.get("contained")
    if not isinstance(contained, list) or not all(isinstance(item, dict) for item in contained):
        return []
    try:
        return [hashlib.sha256(orjson.dumps(item, option=AS_JSON_ONLY)).digest() for item in contained]
    except TypeError:
        return []


def keep_claimed_profiles(resource: dict) -> list[str]:
    """The meta a client's resource is written with, and the profiles it claims: the server owns the
    rest of meta (versionId, lastUpdated), and a profile of extensions only (`_profile`) names
    none (a SubmissionSet's was kept as a bare null, and failed the official check)."""
    profiles = present((resource.get("meta") or {}).get("profile"))
    resource["meta"] = {"profile": profiles} if profiles else {}
    return profiles


def _unknown_profiles(resource: dict) -> list[tuple[str, str]]:
    """The profiles the resource and those it contains claim that no definition the gateway serves
    under defines for their type (known_profiles)."""
    found = []
    for prefix, inner in [("", resource)] + [(f"contained[{index}].", contained) for index, contained
                                             in enumerate(resource.get("contained") or [])]:
        for index, canonical in enumerate((inner.get("meta") or {}).get("profile") or []):
            why = known_profiles.unknown(inner.get("resourceType"), canonical)
            if why:
                found.append((f"{prefix}meta.profile[{index}]", why))
    return found


def _unreferenced_contained(resource: dict) -> list[int]:
    """The contained resources nothing in the resource refers to (`#id`, from a reference, a uri or
    a canonical), nor that refer to it (`#`): what a sender contained and left unreferenced was
    kept as submitted, and failed the official check."""
    contained = resource.get("contained")
    if not contained:
        return []
    pointers = {text for text in _strings(resource) if text.startswith("#")}
    return [index for index, inner in enumerate(contained) if isinstance(inner, dict)
            and f"#{inner.get('id')}" not in pointers and "#" not in _strings(inner)]


def _strings(node) -> Iterator[str]:
    """Every string of a JSON value, at any depth."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            yield item


def _reversed(start: str, end: str) -> bool:
    """Whether a period ends before it starts; the model checked both are dates (anything else
    holding a start and an end is not compared)."""
    try:
        return fhir_range(start)[0] > fhir_range(end)[1]
    except InvalidTime:
        return False


def prohibited(resource: dict):
    """The paths of the elements of `resource` that PDSm prohibits (PROHIBITED)."""
    for path in PROHIBITED.get(resource["resourceType"], ()):
        parent, _, name = path.rpartition(".")
        if not parent:
            if name in resource:
                yield name
            continue
        for index, item in enumerate(resource.get(parent) or []):
            if isinstance(item, dict) and name in item:
                yield f"{parent}[{index}].{name}"


def _periods(node, path: str):
    """Each element holding a start and an end: in what the gateway keeps, a Period. The models
    check neither per-1 nor its like, and the official check fails a resource that breaks them: a
    CDA whose effectiveTime ends before it starts (which the CI-SIS schematrons refuse too,
    dtr1-7-IVL_TS), an ITI-65 DocumentReference or a patient's Consent saying the same."""
    if isinstance(node, dict):
        if isinstance(node.get("start"), str) and isinstance(node.get("end"), str):
            yield path, node["start"], node["end"]
        for key, value in node.items():
            if isinstance(value, (dict, list)):
                yield from _periods(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _periods(value, f"{path}[{index}]")


# How orjson writes what XML cannot carry: a C0 control character as \u00XX, \b or \f (tab, line
# feed and carriage return as \t, \n, \r), U+FFFE and U+FFFF as their UTF-8 bytes. The escapes are
# one pattern with a literal start, which the regex engine scans for fast (4 us in 11 KB, where an
# alternation with the UTF-8 bytes took 31).
ESCAPED_CONTROL = re.compile(rb"\\[ubf]")
NONCHARACTERS = (b"\xef\xbf\xbe", b"\xef\xbf\xbf")


def _json(resource: dict) -> bytes | None:
    """The resource's JSON, which the marks of what a string may hold are looked for in; None when
    orjson cannot write a value of it (then the strings say)."""
    try:
        return orjson.dumps(resource)
    except TypeError:
        return None


def _may_hold_not_xml(data: bytes | None) -> bool:
    """Whether a string of the resource may hold a character XML cannot carry (NOT_XML): a JSON
    string or an HL7v2 field can hold a C0 control character (FHIR strings should hold none but
    tab, line feed and carriage return, R4 "string") or U+FFFE or U+FFFF, and such a resource would
    read otherwise in XML than in JSON; a CDA, being XML, cannot. Its JSON is looked through for
    their marks, where a look at each string cost 40 us a DocumentReference; a backslash written
    before a u, a b or an f is a mark too, and then the strings say."""
    return data is None or ESCAPED_CONTROL.search(data) is not None or (
        b"\xef" in data and any(character in data for character in NONCHARACTERS))


def _found(node, path: str, pattern: re.Pattern, passed_over: tuple[str, ...] = ()):
    """(path, character) of each string holding a character of `pattern`, but under the keys
    `passed_over`."""
    if isinstance(node, dict):
        items = ((f"{path}.{key}" if path else key, value) for key, value in node.items() if key not in passed_over)
    else:
        items = ((f"{path}[{index}]", value) for index, value in enumerate(node))
    for where, value in items:
        if isinstance(value, str):
            if (found := pattern.search(value)) is not None:
                yield where, found.group()
        elif isinstance(value, (dict, list)):
            yield from _found(value, where, pattern, passed_over)


# The spaces other than space, tab, line feed and carriage return (U+00A0 no-break space, U+202F
# narrow no-break space, as French typography puts before a colon…): FHIR's string is
# [ \r\n\t\S]+, and the official check reads \s as Unicode does, as FHIR's JSON schema does. A
# narrative's XHTML (div) and markdown may hold them. The C0 controls Unicode counts as spaces are
# NOT_XML's.
OTHER_SPACES = re.compile("[\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")
OTHER_SPACES_UTF8 = re.compile(rb"\xc2[\x85\xa0]|\xe1\x9a\x80|\xe2\x80[\x80-\x8a\xa8\xa9\xaf]|\xe2\x81\x9f|\xe3\x80\x80")
FREE_TEXT = ("div", "valueMarkdown")


def _may_hold_other_spaces(data: bytes | None) -> bool:
    """Whether a string of the resource whose JSON is `data` may hold one of OTHER_SPACES: their
    UTF-8 bytes looked for, as for the characters XML cannot carry, unless it is all ASCII (0.2 us
    in 4 KB, the pattern 15: an HL7v2 message's patient, most names)."""
    return data is None or (not data.isascii() and OTHER_SPACES_UTF8.search(data) is not None)


def with_plain_spaces(resource: dict) -> dict:
    """The resource with each of OTHER_SPACES in its strings, narratives and markdown aside, written
    as a plain space: for what the gateway builds from a document, a message or a form (a name or
    an address typed with a no-break space), where a space is what was meant. What a client
    sends as FHIR is kept as sent, or refused (validate)."""
    if not _may_hold_other_spaces(_json(resource)):
        return resource

    def plain(node):
        if isinstance(node, dict):
            return {key: value if key in FREE_TEXT else plain(value) for key, value in node.items()}
        if isinstance(node, list):
            return [plain(item) for item in node]
        return OTHER_SPACES.sub(" ", node) if isinstance(node, str) else node
    return plain(resource)
