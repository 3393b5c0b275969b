"""FHIR R4's invariants (its constraints of severity error, written in FHIRPath), checked in what a
client writes.

The FHIR models check an element's type and cardinality, not the invariants: a local reference to
no contained resource (ref-1), a contained resource with a version (dom-4) or with resources of its
own (dom-2), a telephone number without a system (cpt-2), a patient's contact with nothing to reach
them by (pat-1) were kept as submitted and failed the official check. `invariants.json` holds, for
each model class, its invariants: the element they apply to (none: the instance itself), the
FHIR type it is evaluated as (none: a resource, which names its own), key, description and
expression. It is built from the R4 definitions by `python -m
gateway.fhir.invariants ../shared/fhir-definitions`, and tests/unit/test_invariants.py compares it
with them; fhirpathpy evaluates them. Left out: ele-1 (a value or children in every element: the
JSON reading refuses an empty value, array or object, and it would cost an evaluation per element),
dom-3 (validation checks it, faster), txt-1 and txt-2 (narrative.py checks the XHTML), bdl-7 (a
transaction's fullUrls: provide.py names the entry that repeats one), and those that resolve
references (ctm-1), which fhirpathpy does not."""
from __future__ import annotations

import json
import logging
import sys
from functools import cache
from pathlib import Path

import fhirpathpy
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models

from .r4_definitions import model_class, specializations

TABLE = Path(__file__).with_name("invariants.json")
LEFT_OUT = {"ele-1", "dom-3", "txt-1", "txt-2", "bdl-7"}
log = logging.getLogger(__name__)


def _has_value(inputs: list) -> list[bool]:
    """FHIRPath's hasValue(), which fhirpathpy lacks: one primitive that has a value."""
    return [len(inputs) == 1 and inputs[0] is not None and not isinstance(inputs[0], (dict, list))]


OPTIONS = {"traceFn": lambda *_: None,   # trace() would print the values it is given: health data
           "userInvocationTable": {"hasValue": {"fn": _has_value, "arity": {0: []}}}}


@cache
def _table() -> dict[str, list[list]]:
    return json.loads(TABLE.read_text())


@cache
def _compiled(expression: str):
    return fhirpathpy.compile(expression, model=models["r4"], options=OPTIONS)


def broken(model_classes: list[str], node: dict, resource: dict, root: dict) -> str | None:
    """The first invariant of the classes `model_classes` (a model's class and its bases) that
    `node`, the JSON of an instance, breaks, described; `resource` is the resource holding it and
    `root` the one that contains that resource, or itself (FHIRPath's %resource, %rootResource)."""
    variables = {"resource": resource, "rootResource": root}
    for name in model_classes:
        for element, base, key, human, expression in _table().get(name, ()):
            values = [node] if element is None else node.get(element)
            if not isinstance(values, list):
                values = [] if values is None else [values]
            for value in values:
                try:
                    # Told its type, FHIRPath reads a choice (Extension.value) by its typed names.
                    typed = value if base is None else ResourceNode.create_node(value, base)
                    result = _compiled(expression)(typed, variables)
                except Exception:   # fhirpathpy on a value no invariant foresaw: the models checked its type
                    log.debug("invariant %s could not be evaluated", key, exc_info=True)
                    continue
                if result == [False]:
                    return f"{human} (FHIR {key})"
    return None


def build(definitions: Path) -> dict[str, list[list]]:
    """The table, from the R4 StructureDefinitions: each invariant where its definition declares
    it, under the model class of its element (Patient.contact: PatientContact) or, for an element
    of a datatype (Organization.telecom), under its parent's class with the element's name."""
    table: dict[str, list[list]] = {}
    for definition in specializations(definitions):
        for element in definition["snapshot"]["element"]:
            types = [t.get("code") for t in element.get("type", [])]
            for constraint in element.get("constraint", []):
                if (constraint.get("severity") != "error" or not constraint.get("expression")
                        or constraint.get("source", definition["url"]) != definition["url"]
                        or constraint["key"] in LEFT_OUT or "resolve()" in constraint["expression"]):
                    continue
                parts = element["path"].split(".")
                if len(parts) > 1 and not types:
                    continue   # an element defined by reference to another (TestScript's): its own is enough
                if len(parts) > 1 and types not in (["BackboneElement"], ["Element"]):
                    # On an element of a datatype (Organization.telecom): its values, of that type.
                    base, (*parts, name) = types[0], parts
                    if [None, base, constraint["key"]] in [entry[:3] for entry in table.get(types[0], [])]:
                        continue   # its datatype's own (ext-1 on Extension.extension), checked on each
                else:
                    # On the instance: a resource says its type, a datatype or a backbone element is told it.
                    base, name = (None if definition["kind"] == "resource" and len(parts) == 1 else element["path"]), None
                table.setdefault(model_class(".".join(parts)), []).append(
                    [name, base, constraint["key"], constraint["human"], constraint["expression"]])
    return table


if __name__ == "__main__":
    TABLE.write_text(json.dumps(build(Path(sys.argv[1])), indent=0, sort_keys=True, ensure_ascii=False) + "\n")
