"""A tester's own cases (`gateway-conformance --cases DIR`): read as written, or refused saying
where, never run with a check that cannot fail."""
import io

import pytest
from rich.console import Console

from conformance.cli import main
from conformance.model import Case, CaseError, load_cases
from conformance.reports import print_summary
from conformance.runner import CaseResult

SEARCH = 'title = "t"\n[[steps]]\naction = "search"\nresource = "Patient"\n'


def write(root, suite: str, case: str, text: str):
    folder = root / suite / case
    folder.mkdir(parents=True)
    (folder / "case.toml").write_text(text)


@pytest.mark.parametrize("text, said", [
    (SEARCH + "[steps.expect]\nstauts = 201\n", "step 1: expect: unknown key stauts (known: body_file,"),
    (SEARCH + "[steps.expect]\njson = [{ path = \"total\" }]\n", "checks nothing: it needs a path and one of"),
    (SEARCH + "[steps.expect]\njson = [{ path = \"total\", equal = 1 }]\n", "expect.json: unknown key equal"),
    (SEARCH + "[steps.expect]\nids = { includes = [\"x\"] }\n", "expect.ids: unknown key includes"),
    (SEARCH + "as = { role = \"doctor\", subject = \"1\" }\n", "step 1: as: unknown key subject"),
    (SEARCH + "param = { name = \"x\" }\n", "step 1: unknown key param (known: accept,"),
    ('title = "t"\n[[steps]]\naction = "mllp"\nmessage = "MSH|"\n[steps.expect]\nstatus = 200\n',
     "step 1: expect: unknown key status (known: ack, acks, err, no_ack)"),
    ('title = "t"\nrequire = ["mllp"]\n' + SEARCH[len('title = "t"\n'):], "unknown key require (known: description,"),
    (SEARCH + "expect = 201\n", "step 1: expect: a table is expected, got 201"),
    # a value of another type: "201" was compared with the number 201, "expected HTTP 201, got 201"
    (SEARCH + "[steps.expect]\nstatus = \"201\"\n", "expect: status is a status or a list of them, not '201'"),
    (SEARCH + "[steps.expect]\nstatus = [200, true]\n", "expect: status is a status or a list of them"),
    (SEARCH + "[steps.expect]\ntotal = \"3\"\n", "expect: total is a number, not '3'"),
    ('title = "t"\n[[steps]]\naction = "mllp"\nmessage = "MSH|"\n[steps.expect]\nerr = "207"\n',
     "expect: err is a list of ERR-3 codes, not '207'"),
    ('title = "t"\n[[steps]]\naction = "mllp"\nmessage = "MSH|"\n[steps.expect]\nno_ack = 1\n',
     "expect: no_ack is true or false, not 1"),
], ids=["misspelt-expectation", "assertion-without-check", "misspelt-check", "misspelt-ids", "misspelt-identity",
        "misspelt-step-key", "http-expectation-on-mllp", "misspelt-case-key", "expect-not-a-table",
        "status-as-text", "status-list-with-a-boolean", "total-as-text", "err-not-a-list", "no-ack-a-number"])
def test_a_case_whose_check_could_not_fail_is_refused_saying_where(tmp_path, text, said):
    write(tmp_path, "mine", "001-case", text)
    with pytest.raises(CaseError) as refused:
        load_cases(tmp_path)
    assert str(refused.value).startswith(str(tmp_path / "mine" / "001-case" / "case.toml"))
    assert said in str(refused.value)


def test_the_kits_own_cases_all_load():
    assert len(load_cases()) >= 90


def test_a_testers_own_suite_is_listed_and_chosen(tmp_path, capsys):
    write(tmp_path, "hospital-x", "001-patient-search", SEARCH + "[steps.expect]\nstatus = 200\n")
    write(tmp_path, "mhd", "001-mine", SEARCH)
    assert main(["--cases", str(tmp_path), "list", "--suite", "hospital-x"]) == 0
    assert capsys.readouterr().out == "hospital-x:\n  001-patient-search  t\n1 case\n"
    assert main(["--cases", str(tmp_path), "list"]) == 0
    listed = capsys.readouterr().out
    assert listed.index("mhd: IHE MHD") < listed.index("hospital-x:") and listed.endswith("2 cases\n")
    assert main(["--cases", str(tmp_path), "list", "--suite", "pam-fr"]) == 2
    assert capsys.readouterr().err == f"error: no suite pam-fr in {tmp_path} (suites: hospital-x, mhd)\n"


@pytest.mark.parametrize("option, said", [
    (["--timeout", "0"], "argument --timeout: '0' is not a number of seconds above 0"),
    (["--timeout", "nan"], "argument --timeout: 'nan' is not a number of seconds above 0"),
    (["--mllp", "127.0.0.1:99999"], "argument --mllp: --mllp takes HOST:PORT, the port from 1 to 65535"),
])
def test_an_option_that_cannot_be_used_is_refused_before_the_run(option, said, capsys):
    """A timeout of 0 was a traceback from urllib3 at the first case."""
    with pytest.raises(SystemExit) as exited:
        main(["run", "--fhir-base", "http://127.0.0.1:1/fhir", "--token", "t", *option])
    assert exited.value.code == 2 and said in capsys.readouterr().err


def test_a_failure_is_reported_in_the_words_the_gateway_answered(tmp_path):
    """A failure's message quotes the gateway under test: its `[/x]` was read as markup, a traceback
    once every case had run, and its `[b]` vanished from the report."""
    case = Case("mine/001-case", "mine", "t", tmp_path, ())
    said = "expected HTTP 201, got 400: entry[0] [b]x[/b] [/x]"
    out = io.StringIO()
    print_summary(Console(file=out, width=200), [CaseResult(case, "failed", said)])
    assert f"FAILED mine/001-case: {said}" in out.getvalue()


def test_a_suite_is_listed_whatever_another_suite_s_cases_hold(tmp_path, capsys):
    """Every case was read for any suite asked for (twice), so that one written wrong in another
    suite stopped this one."""
    write(tmp_path, "mine", "001-case", SEARCH)
    write(tmp_path, "other", "001-broken", "title = ")
    assert main(["--cases", str(tmp_path), "list", "--suite", "mine"]) == 0
    assert "001-case" in capsys.readouterr().out
    assert main(["--cases", str(tmp_path), "list"]) == 2
    assert "other/001-broken/case.toml" in capsys.readouterr().err
