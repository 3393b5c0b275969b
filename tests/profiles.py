"""The official profile check (`../shared/tools/profilecheck/run`, ANS PDSm, IHE MHD, FR Core, IHE BALP,
FHIR R4) applied to what the gateway produced: every resource against its base definition and
the profiles it claims, plus the profiles a kind of answer must meet (a search Bundle, a
transaction-response). One run of the checker per group of profiles."""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROFILECHECK = Path(os.environ.get("GATEWAY_PROFILECHECK", ROOT.parent / "shared" / "tools" / "profilecheck" / "run"))

PDSM = "https://interop.esante.gouv.fr/ig/fhir/pdsm/StructureDefinition/"
MHD = "https://profiles.ihe.net/ITI/MHD/StructureDefinition/"
# What each kind of answer is checked against, beyond the resources' own claims.
DOCUMENT_REFERENCE = (MHD + "IHE.MHD.Comprehensive.DocumentReference",)
FIND_DOCUMENT_REFERENCES = (PDSM + "pdsm-find-documentreferences-comprehensive-response",
                            MHD + "IHE.MHD.FindDocumentReferencesComprehensiveResponseMessage")
FIND_LISTS = (PDSM + "pdsm-find-lists-response", MHD + "IHE.MHD.FindDocumentListsResponseMessage")
PROVIDE_RESPONSE = (MHD + "IHE.MHD.ProvideDocumentBundleResponse",)


def available() -> bool:
    return PROFILECHECK.exists()


def require() -> None:
    if not available():
        pytest.skip(f"the profile checker is not present at {PROFILECHECK}")


class Collected:
    """Resources gathered by a test, each with the extra profiles it must meet."""

    def __init__(self):
        self.groups: dict[tuple[str, ...], list[dict]] = {}

    def add(self, resource: dict, profiles: tuple[str, ...] = ()) -> None:
        if resource.get("resourceType") == "DocumentReference":
            profiles = tuple(dict.fromkeys(profiles + DOCUMENT_REFERENCE))
        self.groups.setdefault(profiles, []).append(resource)

    def __len__(self) -> int:
        return sum(len(v) for v in self.groups.values())

    def errors(self) -> list[str]:
        """Every error the checker reports, as 'what :: profile: rule @ path: message'."""
        found = []
        for profiles, items in self.groups.items():
            with tempfile.TemporaryDirectory() as folder:
                files = []
                for index, resource in enumerate(items):
                    path = Path(folder) / f"{index:04d}-{resource.get('resourceType')}-{resource.get('id', 'x')}.json"
                    path.write_text(json.dumps(resource, ensure_ascii=False))
                    files.append(str(path))
                args = [str(PROFILECHECK), "--json"] + [a for p in profiles for a in ("--profile", p)] + files
                done = subprocess.run(args, capture_output=True, text=True, timeout=600)
                try:
                    report = json.loads(done.stdout)
                except ValueError:
                    raise AssertionError(f"profilecheck failed: {done.stderr[-2000:]}") from None
                for item in report:
                    for issue in item["issues"]:
                        if issue.get("severity") == "error":
                            name = Path(item["file"]).name
                            found.append(f"{name} :: {item['profile']}: {issue.get('rule')} @ {issue.get('path')}: "
                                         f"{issue.get('message')}")
        return found
