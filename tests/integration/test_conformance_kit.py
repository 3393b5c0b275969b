"""The conformance kit can fail: against a gateway with a deliberate defect, the cases that
cover it fail, with a message saying what was expected and what came back."""

import sys

import pytest
from lxml import etree

from conformance import runner
from conformance.cli import main
from conformance.model import load_cases
from conformance.runner import Target, TokenSource, run_cases
from conftest import free_port, make_token
from gateway.access.context import _rule
from gateway.access.writes import changeable_labels
from gateway.cda.header import II
from gateway.hl7v2 import batch
from gateway.mapping import hl7v2 as v2_mapping
from gateway.mapping.rules import check_document
from gateway.refusal import Refused


@pytest.fixture
def target(live_server, mllp_listener, token_key):
    def issue(identity: dict) -> str:
        claims = {k: v for k, v in identity.items() if k != "sub" and v}
        return make_token(token_key, sub=identity.get("sub") or identity.get("patient") or "kit", **claims)
    return Target(f"{live_server.public_base_url}/fhir", ("127.0.0.1", mllp_listener.mllp_port),
                  TokenSource(issuer=issue), timeout=15)


def outcome(target: Target, *ids: str, seed: int = 7) -> dict[str, object]:
    """Each case's result; a seed draws the cases' patients and document ids."""
    return {r.case.id: r for r in run_cases(load_cases(ids=list(ids)), target, seed=seed)}


@pytest.fixture
def backend():
    """The kit talks to the gateway over HTTP and MLLP: one backend shows it can fail (the whole
    kit runs against PostgreSQL too, in tests/e2e/test_conformance_run.py when CI sets it)."""
    return "sqlite"


def test_the_cases_pass_against_the_gateway_as_it_is(target):
    results = outcome(target, "access/005-masked-hidden-from-authorised", "cisis-documents/001-mdm-t02-registers",
                      "mhd/026-type-no-match", "cisis-documents/008-invisible-patient-flag")
    assert {case: r.status for case, r in results.items()} == dict.fromkeys(results, "passed"), \
        [r.message for r in results.values()]


def test_masking_ignored_is_caught(target, monkeypatch):
    from gateway.storage import repository

    honest = repository.visibility_columns

    def labels_ignored(docref):
        return {**honest(docref), "masked": False, "hidden_from_patient": False}
    monkeypatch.setattr(repository, "visibility_columns", labels_ignored, raising=True)
    results = outcome(target, "access/005-masked-hidden-from-authorised", "cisis-documents/008-invisible-patient-flag")
    masked = results["access/005-masked-hidden-from-authorised"]
    assert masked.status == "failed" and masked.message == "step 4: expected total 0, got 1"
    invisible = results["cisis-documents/008-invisible-patient-flag"]
    assert invisible.status == "failed" and invisible.message == "step 2: expected total 0, got 1"
    assert any("PATCH" in x.request for x in masked.exchanges)   # the report shows what was sent


def test_an_ack_sent_before_the_commit_is_caught(target, monkeypatch):
    from gateway.storage.repository import Repository

    class Lost(Exception):
        pass

    submit = Repository.submit

    class Answered:
        """What `submit` gives: the unit's value, though its transaction never committed."""
        unit = None   # in no sequence of the group commit's

        def __init__(self, value):
            self.value = value

        def result(self):
            return self.value

    def acknowledged_then_lost(repo, work, permission, **options):
        # The raw copy is kept; the ACK is built from the message's work in a transaction that
        # never commits.
        if not work.__qualname__.startswith("ingesting.<locals>.unit"):
            return submit(repo, work, permission, **options)
        answer = {}
        try:
            with repo.unit_of_work(permission) as uow:
                answer["value"] = work(uow)
                raise Lost
        except Lost:
            return Answered(answer["value"])
    monkeypatch.setattr(Repository, "submit", acknowledged_then_lost)
    result = outcome(target, "cisis-documents/001-mdm-t02-registers")["cisis-documents/001-mdm-t02-registers"]
    assert result.status == "failed" and result.message == "step 2: expected total 1, got 0"


def test_a_search_parameter_ignored_is_caught(target, monkeypatch):
    from gateway.storage import search

    parse = search.parse_search

    def type_ignored(res_type, params, **kwargs):
        return parse(res_type, [(k, v) for k, v in params if k != "type"], **kwargs)
    monkeypatch.setattr("gateway.fhir.search.search_sql.parse_search", type_ignored)
    results = outcome(target, "mhd/026-type-no-match", "mhd/013-type")
    assert results["mhd/026-type-no-match"].status == "failed"
    assert results["mhd/026-type-no-match"].message == "step 2: expected total 0, got 1"
    assert results["mhd/013-type"].status == "passed"   # finding what matches is not enough to pass


def test_a_subset_ignored_is_caught(target, monkeypatch):
    monkeypatch.setattr("gateway.fhir.subsetting.requested", lambda *args, **kwargs: None)
    result = outcome(target, "mhd/034-summary-and-elements")["mhd/034-summary-and-elements"]
    assert result.status == "failed" and result.message.startswith("step 2: entry[0].resource.meta.tag[*].code")


def test_a_charset_of_http_ignored_is_caught(target, monkeypatch):
    monkeypatch.setattr("gateway.services.feeds.charset_of", lambda content_type: "")
    result = outcome(target, "hl7v2-transport/013-http-charset")["hl7v2-transport/013-http-charset"]
    assert result.status == "failed" and result.message.startswith("step 2: entry[0].resource.name[*].family")


def test_a_list_searched_by_its_source_s_names_ignoring_them_is_caught(target, monkeypatch):
    from gateway.storage import search

    parse = search.parse_search
    results = outcome(target, "mhd/051-iti66-source-and-title")
    assert results["mhd/051-iti66-source-and-title"].status == "passed", results["mhd/051-iti66-source-and-title"].message

    def source_ignored(res_type, params, **kwargs):
        return parse(res_type, [(k, v) for k, v in params if not k.startswith("source")], **kwargs)
    monkeypatch.setattr("gateway.fhir.search.search_sql.parse_search", source_ignored)
    result = outcome(target, "mhd/051-iti66-source-and-title")["mhd/051-iti66-source-and-title"]
    assert result.status == "failed" and result.message == "step 3: expected total 1, got 2"


def test_an_invariant_not_checked_is_caught(target, monkeypatch):
    from gateway.fhir import invariants

    results = outcome(target, "mhd/004-iti65-dangling-reference")
    assert results["mhd/004-iti65-dangling-reference"].status == "passed", results["mhd/004-iti65-dangling-reference"].message
    monkeypatch.setattr(invariants, "broken", lambda *args: None)
    result = outcome(target, "mhd/004-iti65-dangling-reference")["mhd/004-iti65-dangling-reference"]
    assert result.status == "failed" and result.message.startswith("step 1: expected HTTP 400 or 422, got 200"), \
        result.message


def test_cases_without_what_they_need_are_skipped(live_server):
    only_fhir = Target(f"{live_server.public_base_url}/fhir", None, TokenSource(token="t"))
    [result] = run_cases(load_cases(ids=["hl7v2-transport/001-adt-acknowledged"]), only_fhir)
    assert result.status == "skipped" and result.message == "needs mllp"


@pytest.mark.parametrize("given, said", [
    (lambda base, mllp, tmp: ["--fhir-base", base, "--token", "t"],
     "GET {base}/metadata answered 404, not a FHIR CapabilityStatement: --fhir-base is the FHIR base URL"),
    (lambda base, mllp, tmp: ["--fhir-base", f"http://127.0.0.1:{free_port()}/fhir", "--token", "t"],
     "cannot reach the FHIR server: GET http://127.0.0.1:"),
    (lambda base, mllp, tmp: ["--fhir-base", f"{base}/fhir", "--token-command", "no-such-token-command --x"],
     "--token-command could not run: [Errno 2] No such file or directory: 'no-such-token-command'"),
    (lambda base, mllp, tmp: ["--fhir-base", f"{base}/fhir", "--token-command", "false"],
     "--token-command failed for {'role': 'system', 'sub': 'conformance-kit'} (exit status 1): it printed no token"),
    (lambda base, mllp, tmp: ["--fhir-base", f"{base}/fhir", "--token", "t", "--mllp", f"127.0.0.1:{mllp}"],
     "cannot reach the MLLP listener at 127.0.0.1:"),
    (lambda base, mllp, tmp: ["--fhir-base", f"{base}/fhir", "--token", "t", "--html", str(tmp)],
     "cannot write {tmp}: it is a folder"),
    (lambda base, mllp, tmp: ["--fhir-base", f"{base}/fhir", "--token", "t", "--schematron-dir", str(tmp / "no")],
     "--schematron-dir {tmp}/no: no such folder"),
    (lambda base, mllp, tmp: ["--cases", str(tmp / "no"), "--fhir-base", f"{base}/fhir", "--token", "t"],
     "--cases {tmp}/no: no such folder"),
], ids=["not-the-fhir-base", "nothing-listens", "no-token-command", "token-command-fails", "no-mllp-listener",
        "report-to-a-folder", "no-schematron-folder", "no-cases-folder"])
def test_a_run_that_cannot_start_says_why_once_and_runs_no_case(live_server, capsys, tmp_path, given, said):
    """Each of these failed every case, with a message of its own 60 times ("could not reach the
    gateway: No such file or directory" for a token command not found; a 405 for a base without
    /fhir), and the run's exit status was that of failed cases."""
    base = live_server.public_base_url
    arguments = given(base, free_port(), tmp_path)
    cases = arguments[:2] if arguments[0] == "--cases" else []
    status = main([*cases, "run", *arguments[len(cases):], "--suite", "pam-fr", "--suite", "mhd"])
    printed = capsys.readouterr()
    assert status == 2
    # (the server in this process logs to the same stderr: the kit's own lines are looked for)
    assert "error: " + said.replace("{base}", base).replace("{tmp}", str(tmp_path)) in printed.err
    assert "passed" not in printed.out + printed.err


def test_a_report_s_folder_is_made(live_server, tmp_path):
    """The reports were written once every case had run: a folder missing lost the run to a traceback."""
    report = tmp_path / "reports" / "today" / "junit.xml"
    status = main(["run", "--fhir-base", f"{live_server.public_base_url}/fhir", "--token", "t",
                   "--case", "mhd/001-iti65-provide", "--junit", str(report)])
    assert status in (0, 1) and etree.parse(str(report)).getroot().tag == "testsuites"


def test_token_commands_for_the_identities_ahead_run_side_by_side_each_once(tmp_path, monkeypatch):
    # Each command waits, up to a deadline, for another one to have started: run one after the
    # other, the first gives no token.
    monkeypatch.setattr(runner, "TOKEN_COMMANDS_AT_ONCE", 2)
    command = tmp_path / "token-command"
    command.write_text(f"""#!{sys.executable}
import os, sys, time
started = os.path.join({str(tmp_path)!r}, "started-" + sys.argv[-1])
open(started, "x").close()
deadline = time.monotonic() + 30
while sum(name.startswith("started-") for name in os.listdir({str(tmp_path)!r})) < 2:
    if time.monotonic() > deadline:
        sys.exit("no other token command ran beside this one")
    time.sleep(0.01)
print("token of", sys.argv[-1])
""")
    command.chmod(0o755)
    tokens = TokenSource(command=str(command))
    first, second = {"role": "patient", "patient": "1"}, {"role": "patient", "patient": "2"}
    try:
        tokens.ahead([first, second, first])
        assert tokens(second) == "token of 2" and tokens(first) == "token of 1"
    finally:
        tokens.close()
    assert tokens(first) == "token of 1"   # kept once the run is over
    assert sorted(path.name for path in tmp_path.glob("started-*")) == ["started-1", "started-2"]


def test_every_case_file_loads_and_every_suite_is_covered():
    cases = load_cases()
    assert len(cases) >= 60
    assert {c.suite for c in cases} == {"hl7v2-transport", "pam-fr", "cisis-documents", "cda-ingest", "mhd", "access"}
    for case in cases:
        for step in case.steps:
            for key in ("file",):
                if key in step.spec:
                    case.file(step.spec[key])   # raises when an input file is missing


SCHEMATRON = """<xsl:stylesheet version="2.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform"
    xmlns:svrl="http://purl.oclc.org/dsdl/svrl" xmlns:h="urn:hl7-org:v3">
  <xsl:template match="/">
    <svrl:schematron-output>
      <xsl:if test="/h:ClinicalDocument/h:code/@code = '11490-0'">
        <svrl:failed-assert test="not(h:code/@code = '11490-0')" location="/ClinicalDocument/code">
          <svrl:text>this test schematron refuses discharge letters</svrl:text>
        </svrl:failed-assert>
      </xsl:if>
    </svrl:schematron-output>
  </xsl:template>
</xsl:stylesheet>"""


def test_schematrons_given_by_the_tester_hold_accepted_documents_only(target, tmp_path):
    from conformance.schematron import Schematrons

    (tmp_path / "test.xsl").write_text(SCHEMATRON)
    target.schematrons = Schematrons(tmp_path)
    results = outcome(target, "cda-ingest/001-ldl-ses-n3", "cda-ingest/004-cr-imagerie-n3", "cda-ingest/009-missing-author")
    letter = results["cda-ingest/001-ldl-ses-n3"]
    assert letter.status == "failed" and letter.message == (
        "step 1: _shared/ldl-ses-n3.xml does not pass the schematrons: test.xsl: /ClinicalDocument/code: "
        "this test schematron refuses discharge letters")
    assert results["cda-ingest/004-cr-imagerie-n3"].status == "passed"
    assert results["cda-ingest/009-missing-author"].status == "passed"   # meant to be refused: not held to them


# The rules of a gateway that ignores an authorisation's period.
PERMIT_FOR_EVER = _rule("ar.kind = 'professional' AND ar.effect = 'permit' "
                        "AND ar.actor_system = :idnatps_system AND ar.actor_value = :reader")
# The rules of a gateway that applies a block to the professionals it names one by one only.
BLOCKED_BY_NAME_ONLY = _rule("ar.effect = 'deny' AND (ar.kind IN ('consultation', 'record') OR (ar.kind = "
                             "'professional' AND ar.actor_system = :idnatps_system AND ar.actor_value = :reader))")


def refused_when_the_encounter_has_no_start(header):
    """The rules of a gateway that refuses an encounter whose time ends without a start."""
    if header.encounter_high and not header.encounter_low:
        raise Refused("the encounter's time has an end (high) and no start (low)",
                      location="/ClinicalDocument/componentOf/encompassingEncounter/effectiveTime/low")
    return check_document(header)


def both_inactive_when_the_record_is_not_active(zfa, patient_reference, consents=v2_mapping.consents):
    """The ZFA's Consents of a gateway that makes both inactive when ZFA-1 is not ACTIF."""
    closed = zfa.get(1).upper() not in ("", v2_mapping.RECORD_ACTIVE)
    return {kind: {**consent, "status": "inactive"} if closed else consent
            for kind, consent in consents(zfa, patient_reference).items()}


def read_whole_whatever_its_counts(data, read=batch.read):
    """A batch as a gateway that does not check its trailers' counts reads it."""
    found = read(data)
    found.problems.clear()
    return found


@pytest.mark.parametrize("case, patched, replacement, failing_step", [
    ("mhd/052-iti65-sent-again", "gateway.services.provide._sent_again", lambda *args: False,
     "step 2: entry[*].response.status"),
    ("mhd/053-iti65-submission-set-lists-its-documents", "gateway.services.provide._check_members",
     lambda *args: None, "step 1: "),
    ("pam-fr/009-zfa-not-collected-keeps-the-opposition", "gateway.services.patients._not_collected",
     lambda stored, stated: stated, "step 3: "),
    ("access/015-replacement-keeps-the-patient-s-masking", "gateway.services.documents.with_replaced_masking",
     lambda docref, replaced, lifted=frozenset(): docref, "step 6: "),
    ("access/016-the-patient-s-mask-is-lifted-by-the-patient", "gateway.access.writes.changeable_labels",
     lambda access, producer=False, masked_by_patient=False: changeable_labels(access, producer), "step 5: "),
    ("access/017-an-authorisation-after-a-block-holds",
     "gateway.storage.repository.UnitOfWork.decisions_replaced_by", lambda uow, consent, patient_id: [], "step 7: "),
    ("access/019-a-block-of-two-then-one-authorised", "gateway.services.consents.without_actors",
     lambda stored, actors: stored.json(), "step 7: "),
    ("access/020-a-blocked-organisation", "gateway.access.context.REFUSED", BLOCKED_BY_NAME_ONLY, "step 5: "),
    ("pam-fr/011-a-record-reported-closed-opens-nothing", "gateway.mapping.hl7v2.consents",
     both_inactive_when_the_record_is_not_active, "step 8: "),
    ("access/021-an-authorisation-for-a-period", "gateway.access.context.NAMED_PERMIT", PERMIT_FOR_EVER, "step 3: "),
    ("access/018-a-representative-of-an-adult-reads-nothing", "gateway.access.context.minor_born_after",
     lambda today: "0001-01-01", "step 2: "),
    ("pam-fr/010-a-death-closes-the-record-to-the-patient", "gateway.services.patients._check_death",
     lambda pid, info: setattr(info, "deceased", None) or setattr(info, "death_time", None), "step 4: "),
    ("cda-ingest/016-a-document-about-another-person", "gateway.services.documents.check_identity",
     lambda *args: None, "step 2: "),
    ("cisis-documents/013-pid-and-cda-about-two-people", "gateway.services.document_messages.contradicted_traits",
     lambda *args: [], "step 1: "),
    ("access/022-a-structure-found-by-either-spelling", "gateway.storage.searchparams.structure_spellings",
     lambda system, value: [(system, value)], "step 3: "),
    ("cda-ingest/017-an-encounter-that-ends-without-a-start", "gateway.services.documents.check_document",
     refused_when_the_encounter_has_no_start, "step 1: "),
    ("cisis-documents/014-a-document-id-with-an-extension", "gateway.services.document_messages._document_id",
     lambda txa, number: II(txa.get(number, 1)), "step 1: "),
    ("mhd/054-iti65-an-imaging-manifest-of-another-patient", "gateway.services.described._check_dicom_patient",
     lambda *args: None, "step 2: "),
    ("access/023-masked-by-a-fhirpath-patch", "gateway.fhir.fhirpath_patch.apply",
     lambda resource, asked: resource, "step 4: "),
    ("hl7v2-transport/014-a-batch-in-one-frame", "gateway.hl7v2.batch.is_batch", lambda data: False, "step 1: "),
    ("hl7v2-transport/015-a-batch-that-is-not-whole", "gateway.hl7v2.batch.read", read_whole_whatever_its_counts,
     "step 1: "),
], ids=["a submission sent again registered again", "a SubmissionSet that leaves out its document",
        "an opposition a later ZFA did not collect", "a replacement that unmasks what the patient masked",
        "an author who lifts the patient's mask", "a block kept beside the authorisation after it",
        "a block of two kept whole beside the authorisation of one", "a block of a hospital ignored",
        "an opposition a record reported closed lifted", "an authorisation's period ignored",
        "a parent's access kept after the child came of age", "a death dropped",
        "a document about another person filed under the INS", "a PID and a CDA about two people taken",
        "a structure's decisions found by one spelling only", "an encounter that ends alone refused",
        "TXA-12's first component taken for the document id", "a KOS filed under another patient's record",
        "a FHIRPath Patch answered and not made", "a batch taken as one message",
        "a batch cut short processed"])
def test_a_gateway_without_the_rule_a_case_checks_is_caught(target, monkeypatch, case, patched, replacement,
                                                             failing_step):
    """Each case passes against the gateway as it is, and fails, at the step that checks it, against
    the gateway with the rule it checks patched out: the case can fail."""
    result = outcome(target, case)[case]
    assert result.status == "passed", result.message
    monkeypatch.setattr(patched, replacement)
    result = outcome(target, case, seed=8)[case]
    assert result.status == "failed" and result.message.startswith(failing_step), result.message
