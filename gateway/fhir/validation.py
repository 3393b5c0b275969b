"""Validation of every resource the gateway writes, with fhir.resources' R4B models, and what
those models leave out that an input can break: a period's start after its end, a character XML
cannot carry in a string, and the elements the profiles the gateway serves under prohibit."""
from __future__ import annotations

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

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
        model.model_validate(resource)
    except ValidationError as exc:
        problems = [(".".join(str(p) for p in err["loc"]) or "(root)", err["msg"]) for err in exc.errors()[:20]]
        raise InvalidResource(res_type, problems) from None
    if kept:
        return
    problems = [(path, "is not allowed: PDSm prohibits it (max 0)") for path in _prohibited(resource)]
    problems += list(_flaws(resource, ""))
    if problems:
        raise InvalidResource(res_type, problems[:20])


def _reversed(start: str, end: str) -> bool:
    """Whether a period ends before it starts; the model checked both are dates (anything else
    holding a start and an end is not compared)."""
    try:
        return fhir_range(start)[0] > fhir_range(end)[1]
    except InvalidTime:
        return False


def _prohibited(resource: dict):
    for path in PROHIBITED.get(resource["resourceType"], ()):
        parent, _, name = path.rpartition(".")
        if not parent:
            if name in resource:
                yield name
            continue
        for index, item in enumerate(resource.get(parent) or []):
            if isinstance(item, dict) and name in item:
                yield f"{parent}[{index}].{name}"


def _flaws(node, path: str):
    """(path, problem) for each period whose start is after its end and each string holding a
    character XML cannot carry. The models check neither. The official check fails a resource whose
    period is reversed: a CDA whose effectiveTime ends before it starts (which the CI-SIS
    schematrons refuse too, dtr1-7-IVL_TS), an ITI-65 DocumentReference or a patient's Consent
    saying the same. A JSON string or an HL7v2 field can hold a C0 control character (FHIR strings
    should hold none but tab, line feed and carriage return, R4 "string") or U+FFFE or U+FFFF, and
    such a resource would read otherwise in XML than in JSON; a CDA, being XML, cannot."""
    if isinstance(node, dict):
        start, end = node.get("start"), node.get("end")
        if isinstance(start, str) and isinstance(end, str) and _reversed(start, end):
            yield path, f"the start ({start}) is after the end ({end}) (FHIR per-1)"
        items = node.items()
    else:
        items = ((f"[{index}]", value) for index, value in enumerate(node))
    for key, value in items:
        if isinstance(value, str):
            if (found := NOT_XML.search(value)) is not None:
                yield (_joined(path, key), f"holds the character U+{ord(found.group()):04X}, which XML cannot carry: "
                       "of the control characters, a FHIR string holds tab, line feed and carriage return only")
        elif isinstance(value, (dict, list)):
            yield from _flaws(value, _joined(path, key))


def _joined(path: str, key: str) -> str:
    return f"{path}{key}" if key.startswith("[") or not path else f"{path}.{key}"
