"""The extensions the definitions served here define (FR Core, MHD, PDSm, BALP), checked in what a
client writes as those definitions have them: the value types each takes (none for one made of
parts), and each part's count and value types.

The official check holds every extension it knows to its definition, whatever profile the resource
claims: a Patient whose FR Core identity reliability gave its identityStatus twice (at most once)
was kept as sent, and failed it. `extensions.json` is built from the definitions by
`python -m gateway.fhir.extensions ../shared/fhir-definitions`, and tests/unit/test_extensions.py
compares it with them."""
from __future__ import annotations

import json
import re
import sys
from functools import cache
from pathlib import Path

TABLE = Path(__file__).with_name("extensions.json")
PACKAGES = ("frcore", "mhd", "pdsm", "balp")


@cache
def _table() -> dict[str, dict]:
    return json.loads(TABLE.read_text())


def problem(extension: dict) -> str | None:
    """What an extension (the JSON of one) breaks of its definition, if the table has it."""
    definition = _table().get(extension.get("url"))
    if definition is None:
        return None
    url = extension["url"]
    if wrong := _value_problem(extension, definition["value"], definition["value_min"]):
        return f"{url}: {wrong}"
    parts = [part for part in extension.get("extension") or [] if isinstance(part, dict)]
    if definition["parts"] is None:
        return f"{url} has no parts: it takes a value" if parts else None
    for name, (least, most, types, value_min) in definition["parts"].items():
        named = [part for part in parts if part.get("url") == name]
        if len(named) < least or (most != "*" and len(named) > int(most)):
            return f"{url} has {len(named)} {name!r} part(s), where its definition allows {least} to {most}"
        for part in named:
            if wrong := _value_problem(part, types, value_min):
                return f"{url}, its {name!r} part: {wrong}"
    return None


def _value_problem(extension: dict, types: list[str] | None, value_min: int) -> str | None:
    given = [key[5:] for key in extension if key.startswith("value")]
    if not given:
        return "has no value, where its definition requires one" if value_min else None
    if types == []:
        return "takes no value: it is made of its parts"
    if types is not None and given[0] not in {kind[:1].upper() + kind[1:] for kind in types}:
        return f"takes a value of type {' or '.join(types)}, not {given[0]}"
    return None


def _types(element: dict) -> list[str] | None:
    """The value types an element allows, [] for none; None for any (an element the definition does
    not restrict)."""
    if element.get("max") == "0":
        return []
    return [kind["code"] for kind in element["type"]] if element.get("type") else None


def build(definitions: Path) -> dict[str, dict]:
    """The table, from the extension definitions of the packages: for each url, the value types
    (`value`, `value_min`) and the parts (`parts`: url → min, max, value types, value min; None
    where it takes none)."""
    table: dict[str, dict] = {}
    for package in PACKAGES:
        for path in sorted((definitions / package / "package").glob("StructureDefinition-*.json")):
            definition = json.loads(path.read_text())
            if definition.get("type") != "Extension" or definition.get("derivation") != "constraint":
                continue
            # MHD's and BALP's are given as a differential only: what it leaves out is as FHIR's
            # Extension has it (any value type, any parts).
            elements = {element["id"]: element for element in (definition.get("snapshot") or
                                                                 definition["differential"])["element"]}
            parts = {}
            for element_id, element in elements.items():
                if match := re.fullmatch(r"Extension\.extension:([^.]+)", element_id):
                    name = elements.get(f"{element_id}.url", {}).get("fixedUri") or match.group(1)
                    value = elements.get(f"{element_id}.value[x]", {})
                    parts[name] = [element.get("min", 0), element.get("max", "*"), _types(value), value.get("min", 0)]
            value = elements.get("Extension.value[x]", {})
            table[definition["url"]] = {
                "value": _types(value), "value_min": value.get("min", 0),
                "parts": None if elements.get("Extension.extension", {}).get("max") == "0" else parts}
    return table


if __name__ == "__main__":
    TABLE.write_text(json.dumps(build(Path(sys.argv[1])), indent=0, sort_keys=True) + "\n")
