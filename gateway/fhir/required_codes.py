"""The codes FHIR R4 binds `required` to an enumerated value set, checked in what a client writes.

The FHIR models check a code's characters but not its value set: an `Identifier.use` of `main` or
a `HumanName.use` of `birth` was kept as submitted (a SubmissionSet, a Patient, a Consent) and
failed the official check. `required_codes.json` holds, for each model class and element of type
`code` with a required binding, the codes its value set enumerates (formats.load checks them);
`required_grammars.json`, each such element whose value set is a grammar instead (MIME types: an
attachment's contentType of `application/xmlé` was kept). Both are built from the R4 definitions
by `python -m gateway.fhir.required_codes ../shared/fhir-definitions`, and
tests/unit/test_required_codes.py compares them with them."""
from __future__ import annotations

import json
import re
import sys
from functools import cache
from pathlib import Path

from .r4_definitions import model_class, specializations

TABLE = Path(__file__).with_name("required_codes.json")
GRAMMARS_TABLE = Path(__file__).with_name("required_grammars.json")
# The value sets that are a grammar, not a list: BCP 13's MIME types (RFC 6838's type and subtype
# names, RFC 2045's parameters).
_NAME = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
GRAMMARS = {"http://hl7.org/fhir/ValueSet/mimetypes": re.compile(
    rf'{_NAME}/{_NAME}(?:[ \t]*;[ \t]*[!#$%&\'*+.^_`|~0-9A-Za-z-]+=(?:[!#$%&\'*+.^_`|~0-9A-Za-z-]+|"[^"\\\r\n]*"))*')}


@cache
def _table() -> dict[str, frozenset[str]]:
    return {key: frozenset(codes) for key, codes in json.loads(TABLE.read_text()).items()}


def allowed(model_class: str, element: str) -> frozenset[str] | None:
    """The codes of `element` of the model class (`Identifier`, `ConsentProvision`), if bound so."""
    return _table().get(f"{model_class}.{element}")


@cache
def _grammars() -> dict[str, str]:
    return json.loads(GRAMMARS_TABLE.read_text())


def grammar(model_class: str, element: str) -> re.Pattern | None:
    """The grammar `element` of the model class is bound to (`Attachment.contentType`), if bound so."""
    value_set = _grammars().get(f"{model_class}.{element}")
    return GRAMMARS[value_set] if value_set else None


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


def build_grammars(definitions: Path) -> dict[str, str]:
    """The grammar table, from the R4 StructureDefinitions: each `code` element bound `required` to
    one of GRAMMARS."""
    table: dict[str, str] = {}
    for definition in specializations(definitions):
        for element in definition["snapshot"]["element"]:
            binding = element.get("binding") or {}
            value_set = binding.get("valueSet", "").split("|")[0]
            if binding.get("strength") == "required" and value_set in GRAMMARS and \
                    [t.get("code") for t in element.get("type", [])] == ["code"]:
                owner, name = element["path"].rsplit(".", 1)
                table[f"{model_class(owner)}.{name}"] = value_set
    return table


if __name__ == "__main__":
    TABLE.write_text(json.dumps(build(Path(sys.argv[1])), indent=0, sort_keys=True) + "\n")
    GRAMMARS_TABLE.write_text(json.dumps(build_grammars(Path(sys.argv[1])), indent=0, sort_keys=True) + "\n")
