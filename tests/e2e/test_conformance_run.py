"""`gateway-conformance run` as an integration tester runs it: every suite against a gateway
started as `make run` starts it, with tokens from `gateway token issue`. On one backend, the one a
deployment uses (PostgreSQL when the suite has it, else SQLite): the kit checks the gateway's
behaviour, which the integration tests already hold equal on both backends."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from lxml import etree

from conftest import POSTGRES_URL, ROOT
from e2e_support import GATEWAY, start_gateway, stop_gateway

KIT = Path(sys.executable).with_name("gateway-conformance")
# The ANS CI-SIS schematrons as published: every document a case expects accepted is held to them.
ANS_SCHEMATRONS = ROOT.parent / "shared" / "reference" / "ans-cda-validation" / "schematrons"


@pytest.mark.parametrize("backend", ["postgresql" if POSTGRES_URL else "sqlite"], indirect=True)
def test_every_suite_passes_against_the_gateway(tmp_path, database):
    _, url = database
    process, base, env = start_gateway(tmp_path / "var", database_url=url)
    schematrons = ["--schematron-dir", str(ANS_SCHEMATRONS)] if ANS_SCHEMATRONS.is_dir() else []
    try:
        done = subprocess.run(
            [str(KIT), "run", "--fhir-base", f"{base}/fhir", "--mllp", f"127.0.0.1:{env['GATEWAY_MLLP_PORT']}",
             "--token-command", f"{GATEWAY} token issue", "--junit", str(tmp_path / "junit.xml"),
             "--html", str(tmp_path / "report.html"), "--json", str(tmp_path / "results.json"), *schematrons],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    finally:
        stop_gateway(process)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    statuses = {case["id"]: case["status"] for case in results["cases"]}
    assert len(statuses) >= 60 and set(statuses.values()) == {"passed"}
    suites = etree.parse(str(tmp_path / "junit.xml")).getroot()
    assert sum(int(s.get("tests")) for s in suites) == len(statuses)
    assert sum(int(s.get("failures")) + int(s.get("errors")) for s in suites) == 0
    assert "Conformance report" in (tmp_path / "report.html").read_text()
    assert "access" in done.stdout and "mhd" in done.stdout   # the summary table


def test_list_and_show_describe_the_cases():
    listed = subprocess.run([str(KIT), "list"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and "hl7v2-transport:" in listed.stdout
    shown = subprocess.run([str(KIT), "show", "access/005-masked-hidden-from-authorised"], capture_output=True,
                           text=True, timeout=60)
    assert shown.returncode == 0 and "MASQUE_PS" in shown.stdout and "[[steps]]" in shown.stdout
