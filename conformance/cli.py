"""`gateway-conformance run | list | show`."""
from __future__ import annotations

import argparse
import os
import ssl
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from . import reports
from .model import CASES_DIR, SUITES, CaseError, case_files, load_cases
from .runner import Target, Tls, TokenSource, run_cases, unreachable


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds above 0")
    return seconds


def _mllp(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise argparse.ArgumentTypeError("--mllp takes HOST:PORT, the port from 1 to 65535")
    return host, int(port)


def _unwritable(reports: list[str | None]) -> list[str]:
    """The reports asked for that could not be written once the run ends: their folders are made
    now (as pytest's --junitxml makes its own), so that a run is not lost for a missing folder."""
    problems = []
    for report in filter(None, reports):
        path = Path(report)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            problems.append(f"cannot write {report}: {exc}")
            continue
        if path.is_dir() or not os.access(path if path.exists() else path.parent, os.W_OK):
            problems.append(f"cannot write {report}: " + ("it is a folder" if path.is_dir() else "permission denied"))
    return problems


def cmd_run(args) -> int:
    console = Console(stderr=True)
    cases = load_cases(Path(args.cases), args.suite, args.case)
    if not cases:
        console.print("no case matches")
        return 2
    problems = _unwritable([args.junit, args.html, args.json])
    schematrons = None
    if args.schematron_dir:
        from .schematron import Schematrons

        try:
            schematrons = Schematrons(Path(args.schematron_dir))
        except ImportError:
            problems.append("--schematron-dir needs saxonche: pip install saxonche")
        except ValueError as exc:
            problems.append(str(exc))
    tls = Tls(args.mllp_tls, args.tls_ca, args.tls_cert, args.tls_key)
    if args.tls_key and not args.tls_cert:
        problems.append("--tls-key is the key of --tls-cert, which is missing")
    elif args.mllp_tls or args.tls_ca or args.tls_cert:
        try:
            tls.context()
        except (OSError, ssl.SSLError) as exc:
            problems.append(f"TLS: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""))
    target = Target(args.fhir_base, args.mllp, TokenSource(args.token, args.token_command), args.timeout,
                    schematrons, tls)
    problems += unreachable(target, cases)
    for problem in problems:
        console.print(f"error: {problem}", highlight=False, soft_wrap=True, markup=False)
    if problems:
        return 2
    with Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("running", total=len(cases))

        def advance(result):
            progress.update(task, advance=1, description=result.case.id)
        results = run_cases(cases, target, advance, args.seed)
    reports.print_summary(Console(), results)
    if args.junit:
        Path(args.junit).write_bytes(reports.junit(results))
    if args.html:
        Path(args.html).write_text(reports.html_report(results, args.fhir_base), encoding="utf-8")
    if args.json:
        Path(args.json).write_text(reports.as_json(results), encoding="utf-8")
    return 1 if any(r.status in ("failed", "error") for r in results) else 0


def cmd_list(args) -> int:
    cases = load_cases(Path(args.cases), args.suite)
    # The kit's suites in their order, then a tester's own (`--cases`), by name.
    for suite in [*SUITES, *sorted({c.suite for c in cases} - set(SUITES))]:
        members = [c for c in cases if c.suite == suite]
        if members:
            print(f"{suite}: {SUITES[suite]}" if suite in SUITES else f"{suite}:")
            for case in members:
                needs = f"  [needs {', '.join(case.requires)}]" if case.requires else ""
                print(f"  {case.id.split('/', 1)[1]}  {case.title}{needs}")
    print(f"{len(cases)} case{'' if len(cases) == 1 else 's'}")
    return 0


def cmd_show(args) -> int:
    matches = load_cases(Path(args.cases), ids=[args.case])
    if not matches:
        print(f"no case {args.case}", file=sys.stderr)
        return 2
    case = matches[0]
    print(f"{case.id}: {case.title}\n")
    if case.description:
        print(case.description.strip() + "\n")
    print((case.directory / "case.toml").read_text(encoding="utf-8"))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway-conformance",
                                     description="Conformance cases for HL7v2 feeds, CDA, IHE MHD and access rules")
    parser.add_argument("--cases", default=str(CASES_DIR), help="the cases folder (default: the kit's own)")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run cases against a gateway")
    run.add_argument("--fhir-base", required=True, help="FHIR base URL, e.g. http://127.0.0.1:8080/fhir")
    run.add_argument("--mllp", type=_mllp, help="HOST:PORT of the MLLP listener (HL7v2 suites)")
    tokens = run.add_mutually_exclusive_group()
    tokens.add_argument("--token", help="one bearer token for every request")
    tokens.add_argument("--token-command", help="a command printing a token on its last line, given --role and "
                                                "--sub/--patient/--purpose/--org, e.g. 'gateway token issue'")
    run.add_argument("--mllp-tls", action="store_true", help="MLLP over TLS (HTTPS follows --fhir-base's scheme)")
    run.add_argument("--tls-ca", help="the authority the gateway's certificates come from (PEM), for HTTPS and MLLP "
                                      "over TLS; the system's without it")
    run.add_argument("--tls-cert", help="the kit's certificate (PEM), for a gateway that asks for one (mutual TLS)")
    run.add_argument("--tls-key", help="its private key (PEM), when not in --tls-cert")
    run.add_argument("--suite", action="append", help="only this suite (repeatable)")
    run.add_argument("--case", action="append", help="only this case id (repeatable)")
    run.add_argument("--junit", help="write JUnit XML here")
    run.add_argument("--html", help="write the HTML report here")
    run.add_argument("--json", help="write the results as JSON here")
    run.add_argument("--timeout", type=_seconds, default=30.0, help="seconds to wait for each answer")
    run.add_argument("--seed", type=int, help="make the generated patients and identifiers repeatable")
    run.add_argument("--schematron-dir", help="the ANS CI-SIS schematrons folder as published, or compiled "
                                             "schematrons (XSLT producing SVRL), to hold every accepted CDA to "
                                             "(needs saxonche)")
    run.set_defaults(func=cmd_run)
    listing = sub.add_parser("list", help="the suites and their cases")
    listing.add_argument("--suite", action="append")
    listing.set_defaults(func=cmd_list)
    show = sub.add_parser("show", help="one case: what it sends and expects")
    show.add_argument("case")
    show.set_defaults(func=cmd_show)
    args = parser.parse_args(argv)
    if not Path(args.cases).is_dir():
        print(f"error: --cases {args.cases}: no such folder", file=sys.stderr)
        return 2
    try:
        if getattr(args, "suite", None):
            present = {path.parent.parent.name for path in case_files(Path(args.cases))}
            unknown = sorted(set(args.suite) - present)
            if unknown:
                print(f"error: no suite {', '.join(unknown)} in {args.cases} (suites: {', '.join(sorted(present))})",
                      file=sys.stderr)
                return 2
        return args.func(args)
    except CaseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
