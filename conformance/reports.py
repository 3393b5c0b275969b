"""What a run leaves: a summary table in the terminal, JUnit XML for CI servers, a self-contained
HTML page with each failed case's requests and responses, and JSON."""
from __future__ import annotations

import html
import json
from collections import Counter
from datetime import datetime, timezone

from lxml import etree
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .model import SUITES
from .runner import CaseResult

STYLES = {"passed": "green", "failed": "red", "error": "magenta", "skipped": "yellow"}


def by_suite(results: list[CaseResult]) -> dict[str, Counter]:
    out: dict[str, Counter] = {}
    for result in results:
        out.setdefault(result.case.suite, Counter())[result.status] += 1
    return out


def print_summary(console: Console, results: list[CaseResult]) -> None:
    table = Table(title="Conformance")
    for column in ("suite", "passed", "failed", "error", "skipped"):
        table.add_column(column, justify="left" if column == "suite" else "right")
    for suite, counts in by_suite(results).items():
        table.add_row(Text(suite), *(f"[{STYLES[s]}]{counts[s]}[/]" if counts[s] else "0"
                               for s in ("passed", "failed", "error", "skipped")))
    console.print(table)
    for result in results:
        if result.status in ("failed", "error"):
            console.print(Text(result.status.upper(), style=STYLES[result.status]),
                          Text(f"{result.case.id}: {result.message}"))


def junit(results: list[CaseResult]) -> bytes:
    suites = etree.Element("testsuites", name="gateway-conformance")
    for suite, counts in by_suite(results).items():
        element = etree.SubElement(suites, "testsuite", name=suite, tests=str(sum(counts.values())),
                                   failures=str(counts["failed"]), errors=str(counts["error"]),
                                   skipped=str(counts["skipped"]))
        for result in (r for r in results if r.case.suite == suite):
            case = etree.SubElement(element, "testcase", classname=suite, name=result.case.id.split("/", 1)[1],
                                    time=f"{result.seconds:.3f}")
            if result.status in ("failed", "error"):
                detail = etree.SubElement(case, "failure" if result.status == "failed" else "error",
                                          message=result.message)
                detail.text = _transcript(result)
            elif result.status == "skipped":
                etree.SubElement(case, "skipped", message=result.message)
    return etree.tostring(suites, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def _transcript(result: CaseResult) -> str:
    return "\n\n".join(f"--- step {x.step} request\n{x.request}\n--- response\n{x.response}" for x in result.exchanges)


def as_json(results: list[CaseResult]) -> str:
    return json.dumps({
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "summary": {suite: dict(counts) for suite, counts in by_suite(results).items()},
        "cases": [{"id": r.case.id, "suite": r.case.suite, "title": r.case.title, "status": r.status,
                   "message": r.message, "seconds": round(r.seconds, 3)} for r in results],
    }, ensure_ascii=False, indent=1)


def html_report(results: list[CaseResult], target: str) -> str:
    rows = []
    for suite, counts in by_suite(results).items():
        rows.append(f"<tr><th scope='row'>{html.escape(suite)}</th>"
                    + "".join(f"<td class='{s}'>{counts[s]}</td>" for s in ("passed", "failed", "error", "skipped"))
                    + "</tr>")
    details = []
    for result in results:
        body = ""
        if result.status in ("failed", "error"):
            body = "".join(f"<h4>Step {x.step}: request</h4><pre>{html.escape(x.request)}</pre>"
                           f"<h4>Response</h4><pre>{html.escape(x.response)}</pre>" for x in result.exchanges)
        details.append(
            f"<details{' open' if result.status in ('failed', 'error') else ''}><summary class='{result.status}'>"
            f"{result.status.upper()} — {html.escape(result.case.id)}: {html.escape(result.case.title)}</summary>"
            + (f"<p class='message'>{html.escape(result.message)}</p>" if result.message else "") + body + "</details>")
    suites = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in SUITES.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Conformance report</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 70rem; padding: 0 1rem; color: #1b1b1b; }}
table {{ border-collapse: collapse; }} th, td {{ border: 1px solid #ccc; padding: .3rem .7rem; text-align: right; }}
th[scope=row] {{ text-align: left; }} .passed {{ color: #17692e; }} .failed {{ color: #b00020; }}
.error {{ color: #8a2be2; }} .skipped {{ color: #8a6d00; }} summary {{ cursor: pointer; margin: .3rem 0; }}
pre {{ background: #f5f5f5; padding: .6rem; overflow-x: auto; white-space: pre-wrap; }} .message {{ font-weight: 600; }}
</style></head><body>
<h1>Conformance report</h1>
<p>Target: <code>{html.escape(target)}</code> · {datetime.now(timezone.utc).isoformat(timespec="seconds")}</p>
<table><thead><tr><th>suite</th><th>passed</th><th>failed</th><th>error</th><th>skipped</th></tr></thead>
<tbody>{''.join(rows)}</tbody></table>
<h2>Cases</h2>{''.join(details)}
<h2>Suites</h2><ul>{suites}</ul>
</body></html>"""
