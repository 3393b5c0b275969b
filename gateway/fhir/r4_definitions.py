"""FHIR R4's StructureDefinitions as the tables built from them read them (required_codes,
invariants): its resources and datatypes, and the model class an element's path names."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator


def specializations(definitions: Path) -> Iterator[dict]:
    """R4's resources and complex datatypes, not the profiles of them, in the order of their files."""
    for path in sorted((definitions / "r4core" / "package").glob("StructureDefinition-*.json")):
        definition = json.loads(path.read_text())
        if definition.get("kind") in ("resource", "complex-type") and definition.get("derivation") != "constraint":
            yield definition


def model_class(path: str) -> str:
    """The fhir.resources class of an element path: Patient.contact is PatientContact."""
    first, *rest = path.split(".")
    return first + "".join(part[:1].upper() + part[1:] for part in rest)
