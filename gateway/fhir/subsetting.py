"""_summary and _elements (R4 search, 3.1.1.5.7 and 3.1.1.5.9): a resource with only the elements
asked for, tagged SUBSETTED. PDSm's OpenAPI offers both on every read and search of the document
sharing manager, an empty value meaning none (its `allowEmptyValue`): a client that sent
`_summary=true` got a 400, `_elements=status` the whole resource, and `_summary=` a 400.

- `_summary=true`: the elements R4 marks isSummary; `text`: `text`, `id`, `meta` and the mandatory
  elements; `data`: all but `text`; `false`: all (`count` is the searches').
- `_elements=a,b`: those top-level elements (a choice by its name without [x]: `deceased`), with
  `id`, `meta` and the mandatory elements, which R4 asks servers to return whether asked or not.
  `resourceType`, which fhirpy names, and a name prefixed by its type (R5's `Patient.name`) are read.

Mandatory is read the safer way where R4 is silent on profiles: the elements of minimum 1 in the
resource's base definition and in each profile it claims (a PDSm DocumentReference's custodian,
masterIdentifier, context…), so that a subset still meets its profiles: the official check passes
what is served. Kept as well: the contained resources a kept element refers to, and those they refer
to (`#author1`: dropping them left a local reference to nothing, which ref-1 forbids), and
`modifierExtension` (it changes the meaning of what is kept). In a search, the matches are
subsetted; the resources `_include` adds come whole.

`summary_elements.json` holds, for each type this gateway serves, its top-level elements and those
R4 marks isSummary, and for each definition of them (R4's and the profiles of the packages) the
elements of minimum 1. It is built from the definitions by
`python -m gateway.fhir.subsetting ../shared/fhir-definitions`, and tests/unit/test_subsetting.py
compares it with them."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from .known_profiles import PACKAGES

TABLE = Path(__file__).with_name("summary_elements.json")
R4 = "http://hl7.org/fhir/StructureDefinition/"
SUMMARY_VALUES = ("true", "text", "data", "count", "false")
SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED",
             "display": "subsetted"}


class SubsetError(ValueError):
    """A _summary or _elements the gateway cannot honour: the message says why."""


@dataclass(frozen=True)
class Subset:
    """The top-level elements kept (their names, a choice's without [x]) beyond the mandatory ones;
    None keeps all but `text`."""
    kept: frozenset[str] | None

    def apply(self, resource: dict) -> dict:
        res_type = resource["resourceType"]
        mandatory = _mandatory(resource)
        if self.kept is None:
            subset = {key: value for key, value in resource.items()
                      if key not in ("text", "_text") or "text" in mandatory}
        else:
            kept = self.kept | mandatory
            subset = {key: value for key, value in resource.items()
                      if key == "resourceType" or (key != "contained" and _element(res_type, key) in kept)}
            # Asked for, the contained resources come whole; otherwise those the subset refers to.
            contained = resource.get("contained", []) if "contained" in self.kept else \
                _referred(resource.get("contained", []), _local_references(subset))
            if contained:
                subset["contained"] = contained
        tags = (subset.get("meta") or {}).get("tag", [])
        if not any(t.get("system") == SUBSETTED["system"] and t.get("code") == SUBSETTED["code"] for t in tags):
            subset["meta"] = {**(subset.get("meta") or {}), "tag": [*tags, SUBSETTED]}
        return subset

    def apply_text(self, body: str) -> str:
        return json.dumps(self.apply(json.loads(body)), ensure_ascii=False, separators=(",", ":"))


def requested(res_type: str, summary: list[str], elements: list[str], *, search: bool) -> Subset | None:
    """What `_summary` and `_elements` (each value as given; an empty one asks for nothing) keep of a
    `res_type`, or None for the whole resource (and for `_summary=count`, which a search answers)."""
    summary = [value for value in summary if value != ""]
    # fhirpy names resourceType, which every resource keeps, and R5 allows a name prefixed by its type.
    names = [name.strip().removeprefix(f"{res_type}.") for value in elements for name in value.split(",")
             if name.strip() and name.strip() != "resourceType"]
    if len(summary) > 1:
        raise SubsetError("_summary is given once")
    mode = summary[0] if summary else "false"
    if mode not in SUMMARY_VALUES or (mode == "count" and not search):
        raise SubsetError(f"_summary takes {', '.join(v for v in SUMMARY_VALUES if search or v != 'count')}, "
                          f"not '{mode}'")
    if names and mode != "false":
        raise SubsetError("_summary and _elements each choose the elements returned: give one of them")
    table = _table()["types"][res_type]
    if names:
        unknown = [name for name in names if name not in table["elements"]]
        if unknown:
            raise SubsetError(f"_elements: {', '.join(unknown)} is not an element of {res_type} "
                              f"(its elements: {', '.join(table['elements'])})")
        return Subset(frozenset(names) | {"id", "meta", "modifierExtension"})
    if mode == "true":
        return Subset(frozenset(table["summary"]) | {"modifierExtension"})
    if mode == "text":
        return Subset(frozenset({"id", "meta", "text", "modifierExtension"}))
    if mode == "data":
        return Subset(None)
    return None


@cache
def _table() -> dict:
    return json.loads(TABLE.read_text())


def _mandatory(resource: dict) -> frozenset[str]:
    """The elements of minimum 1 in the resource's base definition and in the profiles it claims."""
    claimed = [R4 + resource["resourceType"], *((resource.get("meta") or {}).get("profile") or [])]
    mandatory = _table()["mandatory"]
    return frozenset(name for url in claimed if isinstance(url, str) for name in mandatory.get(url, ()))


def _element(res_type: str, key: str) -> str | None:
    """The element a JSON key carries: itself, a primitive's `_key`, or a choice's typed name
    (deceasedBoolean is deceased)."""
    name = key[1:] if key.startswith("_") else key
    table = _table()["types"][res_type]
    if name in table["elements"]:
        return name
    return next((choice for choice in table["choices"]
                 if name.startswith(choice) and name[len(choice):len(choice) + 1].isupper()), None)


def _referred(contained: list[dict], references: set[str]) -> list[dict]:
    """The contained resources these references name, and those they name in turn (a contained
    PractitionerRole's Practitioner), in their order."""
    kept: set[str] = set()
    references = set(references)
    while True:
        named = {f"#{c.get('id')}" for c in contained} & references - kept
        if not named:
            return [c for c in contained if f"#{c.get('id')}" in kept]
        kept |= named
        references |= _local_references([c for c in contained if f"#{c.get('id')}" in named])


def _local_references(value) -> set[str]:
    if isinstance(value, dict):
        found = {value["reference"]} if isinstance(value.get("reference"), str) \
            and value["reference"].startswith("#") else set()
        return found.union(*(_local_references(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_local_references(v) for v in value))
    return set()


def build(definitions: Path, types: tuple[str, ...]) -> dict:
    """The table, from R4's definitions of these types and every profile of them in the packages
    (IHE's carry their differential alone: a profile's mandatory elements are its own and its base's)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((definitions / package / "package").glob("StructureDefinition-*.json")):
            definition = json.loads(path.read_text(encoding="utf-8-sig"))
            if definition.get("kind") == "resource" and definition.get("type") in types:
                found[definition["url"]] = definition

    def top(definition: dict, view: str) -> list[dict]:
        return [e for e in definition.get(view, {}).get("element", []) if e["path"].count(".") == 1]

    def name(element: dict) -> str:
        return element["path"].split(".")[1].removesuffix("[x]")

    def mandatory(url: str) -> set[str]:
        definition = found.get(url)
        if definition is None:
            return set()
        own = top(definition, "snapshot") or top(definition, "differential")
        return {name(e) for e in own if e.get("min", 0) >= 1} | mandatory(definition.get("baseDefinition", ""))

    table: dict = {"types": {}, "mandatory": {url: sorted(mandatory(url)) for url in sorted(found)}}
    for res_type in types:
        elements = top(found[R4 + res_type], "snapshot")
        table["types"][res_type] = {
            "elements": [name(e) for e in elements],
            "choices": [name(e) for e in elements if e["path"].endswith("[x]")],
            "summary": [name(e) for e in elements if e.get("isSummary")],
        }
    return table


if __name__ == "__main__":
    from .read import STORED_TYPES
    TABLE.write_text(json.dumps(build(Path(sys.argv[1]), STORED_TYPES), indent=0, sort_keys=True) + "\n")
