"""The codes FHIR R4 binds `required` to an enumerated value set, checked in what a client writes.

The FHIR models check a code's characters but not its value set: an `Identifier.use` of `main` or
a `HumanName.use` of `birth` was kept as submitted (a SubmissionSet, a Patient, a Consent) and
failed the official check. `required_codes.json` holds, for each model class and element of type
`code` with a required binding, the codes its value set enumerates (formats.load checks them);
it is built from the R4 definitions by `python -m gateway.fhir.required_codes ../shared/fhir-definitions`, and
tests/unit/test_required_codes.py compares it with them."""
from __future__ import annotations

import json
import sys
from functools import cache
from pathlib import Path

from .r4_definitions import model_class, specializations

TABLE = Path(__file__).with_name("required_codes.json")


@cache
def _table() -> dict[str, frozenset[str]]:
    return {key: frozenset(codes) for key, codes in json.loads(TABLE.read_text()).items()}


def allowed(model_class: str, element: str) -> frozenset[str] | None:
    """The codes of `element` of the model class (`Identifier`, `ConsentProvision`), if bound so."""
    return _table().get(f"{model_class}.{element}")


def build(definitions: Path) -> dict[str, list[str]]:
    """The table, from the R4 StructureDefinitions and their value sets (flattened)."""
    value_sets = json.loads((definitions / "r4-valuesets-flat.json").read_text())
    table: dict[str, list[str]] = {}
    for definition in specializations(definitions):
        for element in definition["snapshot"]["element"]:
            binding = element.get("binding") or {}
            types = [t.get("code") for t in element.get("type", [])]
            if binding.get("strength") != "required" or types != ["code"] or element["path"].endswith("[x]"):
                continue
            value_set = value_sets.get(binding.get("valueSet", "").split("|")[0])
            if not value_set or not value_set.get("systems"):
                continue   # not enumerated in the package (a grammar, such as BCP 47 or MIME types)
            owner, name = element["path"].rsplit(".", 1)
            table[f"{model_class(owner)}.{name}"] = sorted({c["code"] for s in value_set["systems"] for c in s.get("codes", [])})
    return table


if __name__ == "__main__":
    TABLE.write_text(json.dumps(build(Path(sys.argv[1])), indent=0, sort_keys=True) + "\n")
