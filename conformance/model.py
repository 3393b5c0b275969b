"""Cases are data: `cases/<suite>/<case>/case.toml`, with the case's input files beside it and
shared ones in `cases/_shared/`. The format is documented in `conformance/README.md`."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

CASES_DIR = Path(__file__).parent / "cases"
SHARED = "_shared"
SUITES = {
    "hl7v2-transport": "HL7v2 transport and ACKs: framing, character sets, duplicates, malformed messages, "
                       "unsupported events",
    "pam-fr": "PAM-FR identity, consent (ZFA) and merge",
    "cisis-documents": "CI-SIS document messages: MDM T02, T10, T04, ORU F/C/D, metadata flags",
    "cda-ingest": "Direct CDA ingest: each document type, N1 and N3, bad header, bad INS key, tampered signature",
    "mhd": "IHE MHD: ITI-65, ITI-67 (every required search parameter, paging), ITI-68",
    "access": "Access: masking, blocking, break-the-glass, insurer refused, audit present",
}
# What a case may need beyond a FHIR server: an MLLP listener, this gateway's own HTTP endpoints
# (/cda, /hl7v2), tokens for several identities (--token-command).
CAPABILITIES = ("mllp", "gateway", "roles")
# Every key a case may hold, where it may stand: a key misspelt (`stauts = 201`) was ignored, and the
# check it meant to make never failed.
CASE_KEYS = {"title", "description", "requires", "steps"}
HTTP_STEP = {"action", "method", "path", "resource", "root_path", "url_from", "params", "accept", "as", "anonymous",
             "file", "json", "form", "content_type", "capture", "expect"}
STEP_KEYS = {"mllp": {"action", "file", "message", "framing", "chunks", "times", "expect"},
             "http": HTTP_STEP, "search": HTTP_STEP}
HTTP_EXPECT = {"status", "content_type", "body_file", "headers", "total", "json", "ids"}
EXPECT_KEYS = {"mllp": {"ack", "acks", "err", "no_ack"}, "http": HTTP_EXPECT, "search": HTTP_EXPECT}
IDENTITY_KEYS = {"role", "sub", "patient", "purpose", "org", "name"}
# What an expectation's value is: a status written "201" was compared with the number 201, and
# failed as "expected HTTP 201, got 201".
EXPECT_TYPES = {"status": (int, ("one", "list"), "a status or a list of them"), "total": (int, ("one",), "a number"),
                "ack": (str, ("one", "list"), "an ACK code or a list of them"),
                "acks": (str, ("list",), "a list of ACK codes, one for each message of a batch"),
                "err": (str, ("list",), "a list of ERR-3 codes"), "headers": (str, ("list",), "a list of header names"),
                "no_ack": (bool, ("one",), "true or false")}
CHECKS = ("equals", "contains", "absent", "exists", "count", "matches")


class CaseError(ValueError):
    """A case file that cannot be run as written: the message says where."""


@dataclass
class Step:
    action: str            # mllp | http | search
    spec: dict


@dataclass
class Case:
    id: str
    suite: str
    title: str
    directory: Path
    requires: tuple[str, ...]
    steps: list[Step] = field(default_factory=list)
    description: str = ""

    def file(self, name: str) -> Path:
        """An input file: the case's own, or `_shared/...` relative to the cases folder."""
        base = self.directory.parent.parent if name.startswith(f"{SHARED}/") else self.directory
        path = (base / name).resolve()
        if not path.is_file():
            raise CaseError(f"{self.id}: input file {name} not found")
        return path


def load_case(path: Path) -> Case:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise CaseError(f"{path}: {exc}") from None
    suite = path.parent.parent.name
    for key in ("title", "steps"):
        if key not in data:
            raise CaseError(f"{path}: '{key}' is missing")
    requires = tuple(data.get("requires", []))
    unknown = set(requires) - set(CAPABILITIES)
    if unknown:
        raise CaseError(f"{path}: unknown requirement {', '.join(sorted(unknown))}")
    _known(path, "", data, CASE_KEYS)
    steps = []
    for index, step in enumerate(data["steps"], 1):
        action = step.get("action")
        if action not in STEP_KEYS:
            raise CaseError(f"{path}: step {index}: action is mllp, http or search")
        where = f"step {index}: "
        _known(path, where, step, STEP_KEYS[action])
        _known(path, where + "as: ", step.get("as", {}), IDENTITY_KEYS)
        expect = step.get("expect", {})
        _known(path, where + "expect: ", expect, EXPECT_KEYS[action])
        _known(path, where + "expect.ids: ", expect.get("ids", {}), {"include", "exclude"})
        for key, (kind, forms, meant) in EXPECT_TYPES.items():
            value = expect.get(key)
            items = value if isinstance(value, list) and "list" in forms else [value] if "one" in forms else None
            if key in expect and (items is None or not all(type(item) is kind for item in items)):
                raise CaseError(f"{path}: {where}expect: {key} is {meant}, not {value!r}")
        for assertion in expect.get("json", []):
            _known(path, where + "expect.json: ", assertion, {"path", *CHECKS})
            if "path" not in assertion or not set(CHECKS) & set(assertion):
                raise CaseError(f"{path}: {where}expect.json: {assertion} checks nothing: it needs a path and one "
                                f"of {', '.join(CHECKS)}")
        steps.append(Step(action, step))
    return Case(id=f"{suite}/{path.parent.name}", suite=suite, title=data["title"], directory=path.parent,
                requires=requires, steps=steps, description=data.get("description", ""))


def case_files(directory: Path = CASES_DIR) -> list[Path]:
    return [p for p in sorted(directory.glob("*/*/case.toml")) if p.parent.parent.name != SHARED]


def load_cases(directory: Path = CASES_DIR, suites: list[str] | None = None,
               ids: list[str] | None = None) -> list[Case]:
    """The cases of these suites (all without), each read only if its suite is asked for: a case
    of another suite, written wrong, does not stop these."""
    cases = [load_case(p) for p in case_files(directory) if not suites or p.parent.parent.name in suites]
    if ids:
        cases = [c for c in cases if c.id in ids or c.id.split("/", 1)[1] in ids]
    return cases


def _known(path: Path, where: str, table, keys: set[str]) -> None:
    if not isinstance(table, dict):
        raise CaseError(f"{path}: {where}a table is expected, got {table!r}")
    unknown = sorted(set(table) - keys)
    if unknown:
        raise CaseError(f"{path}: {where}unknown key {', '.join(unknown)} (known: {', '.join(sorted(keys))})")
