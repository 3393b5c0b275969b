"""The profiles a resource a client writes may claim (meta.profile): those of the definitions the
gateway serves under (FHIR R4, ANS PDSm, IHE MHD, FR Core, IHE BALP), each for its resource type.

A claim is kept as the client made it (a SubmissionSet, a Folder, a Patient). One naming a profile
that none of these defines (`POST`, a typo of PDSm's), or one of another type, was kept, and every
read of it failed the official check ("no StructureDefinition"). `known_profiles.json` maps each
profile's canonical URL to its type; it is built from the definitions by
`python -m gateway.fhir.known_profiles ../shared/fhir-definitions`, and
tests/unit/test_validation.py compares it with them."""
from __future__ import annotations

import json
import sys
from functools import cache
from pathlib import Path

TABLE = Path(__file__).with_name("known_profiles.json")
PACKAGES = ("r4core", "pdsm", "mhd", "frcore", "balp")


@cache
def _table() -> dict[str, str]:
    return json.loads(TABLE.read_text())


def unknown(res_type: str, canonical: object) -> str | None:
    """Why a resource of `res_type` may not claim `canonical` (a version after `|` aside), or None."""
    if not isinstance(canonical, str):
        return None   # the model refuses it
    claimed = _table().get(canonical.split("|", 1)[0])
    if claimed is None:
        return (f"names {canonical[:120]!r}, which none of the profiles this gateway serves under defines (FHIR R4, "
                "ANS PDSm, IHE MHD, FR Core, IHE BALP): no check could hold the resource to it")
    if claimed != res_type:
        return f"names a profile of {claimed}, not of {res_type}"
    return None


def build(definitions: Path) -> dict[str, str]:
    """The table, from the packages' StructureDefinitions of resources (base types and profiles)."""
    table = {}
    for package in PACKAGES:
        for path in sorted((definitions / package / "package").glob("StructureDefinition-*.json")):
            definition = json.loads(path.read_text())
            if definition.get("kind") == "resource":
                table[definition["url"]] = definition["type"]
    return dict(sorted(table.items()))


if __name__ == "__main__":
    TABLE.write_text(json.dumps(build(Path(sys.argv[1])), indent=0) + "\n")
