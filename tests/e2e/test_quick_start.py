"""The README's path, as a new user takes it: demo set-up, `gateway serve`, curl-like requests."""
import os
import re
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from conftest import ROOT
from e2e_support import GATEWAY, start_gateway, stop_gateway, token
from gateway.storage.database import make_engine
from gateway.storage.schema import patient_accounts, raw_inputs


def as_at_a_terminal():
    """The command started as from a terminal, where Ctrl-C interrupts it: a suite started in the
    background (`make test &`) ignores SIGINT, and its children inherited that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One demo gateway for the tests that read the demo record or add to it what the others do not
    look at (a duplicate, a patient's consents): starting one takes 7–8 s."""
    process, base, env = start_gateway(tmp_path_factory.mktemp("quick-start") / "var")
    yield base, env
    stop_gateway(process)

GP, INTERNIST = "899900000053", "899900000012"
MARTIN = "185067511204554"


def test_push_a_document_then_find_it_and_get_the_same_bytes(served):
    base, env = served
    gp = token(env, "--role", "doctor", "--sub", GP)
    demo = requests.get(f"{base}/fhir/DocumentReference", params={"status": "current", "_summary": "count"},
                        headers=gp).json()
    assert demo["total"] == 7  # Dr NOEL is the attending physician of three demo patients
    data = (ROOT / "samples" / "cda" / "ldl-ses-martin.xml").read_bytes()
    # the demo data already holds this document: the same bytes are recognised, not stored twice
    again = requests.post(f"{base}/cda", data=data, headers={"Content-Type": "application/xml", **gp})
    assert again.status_code == 200 and again.json()["resourceType"] == "OperationOutcome"
    found = requests.get(f"{base}/fhir/DocumentReference", params={
        "patient.identifier": f"urn:oid:1.2.250.1.213.1.4.10|{MARTIN}", "status": "current"}, headers=gp).json()
    existing = next(e["resource"] for e in found["entry"] if again.headers["Location"].endswith(e["resource"]["id"]))
    retrieved = requests.get(existing["content"][0]["attachment"]["url"], headers=gp)
    assert retrieved.content == data and retrieved.headers["Content-Type"].startswith("text/xml")
    signed = (Path(env["GATEWAY_VAR_DIR"]) / "demo" / "signed-submission.json").read_bytes()
    resubmitted = requests.post(f"{base}/fhir", data=signed, headers={"Content-Type": "application/fhir+json", **gp})
    assert resubmitted.status_code == 200, resubmitted.text


def test_a_search_of_as_many_values_as_the_gateway_takes_fits_its_request_line(served):
    """99 INS with their system and a status, the 100 values one search takes, by GET: past about 70,
    gunicorn's default request line (4,094 bytes) answered an HTML 414 before the gateway read them."""
    base, env = served
    values = ",".join(f"urn:oid:1.2.250.1.213.1.4.10|1850675112{n:05d}" for n in range(99))
    answer = requests.get(f"{base}/fhir/DocumentReference", params={"patient.identifier": values, "status": "current"},
                          headers=token(env, "--role", "doctor", "--sub", GP), timeout=30)
    assert len(answer.url) > 5000 and answer.status_code == 200, answer.text[:300]
    assert answer.json()["resourceType"] == "Bundle"


def test_a_patient_a_doctor_and_an_insurer_see_what_they_may(served):
    base, env = served
    anonymous = requests.get(f"{base}/fhir/DocumentReference")
    assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"].startswith("Bearer")

    def titles(headers):
        response = requests.get(f"{base}/fhir/DocumentReference", params={"status": "current"}, headers=headers)
        if response.status_code != 200:
            return response.status_code
        return sorted(e["resource"]["content"][0]["attachment"]["title"] for e in response.json().get("entry", []))

    # Paul Martin sees his two documents, the lab results he masked from professionals included.
    patient = token(env, "--role", "patient", "--patient", MARTIN)
    assert titles(patient) == ["Compte rendu d'examens biologiques",
                               "Lettre de liaison à la sortie - service de médecine interne"]
    # Dr BERNARD, whom he authorised, does not see the masked lab results.
    assert titles(token(env, "--role", "doctor", "--sub", INTERNIST)) == [
        "Lettre de liaison à la sortie - service de médecine interne"]
    # Dr ROUSSEAU, whom he blocked, sees nothing of his record (only Jean Garnier's, who authorised him).
    surgeon = requests.get(f"{base}/fhir/DocumentReference", params={
        "patient.identifier": f"urn:oid:1.2.250.1.213.1.4.10|{MARTIN}"},
        headers=token(env, "--role", "doctor", "--sub", "899900000020")).json()
    assert surgeon["total"] == 0
    assert titles(token(env, "--role", "insurer")) == 403
    # Dr FAURE keeps Claire Dubois's completed MRI report from her until it is announced; she sees it.
    mri = "IRM du genou droit (compte rendu complété)"
    assert mri not in titles(token(env, "--role", "patient", "--patient", "292086938701277"))
    assert mri in titles(token(env, "--role", "doctor", "--sub", "899900000038"))
    # Every one of those accesses is in Paul Martin's trail, and the trail verifies.
    trail = requests.get(f"{base}/fhir/AuditEvent", params={"_count": 200}, headers=patient).json()
    requesters = [e["resource"]["agent"][0] for e in trail["entry"]]
    assert {INTERNIST, "899900000020"} <= {r.get("altId") for r in requesters}
    # His own reads name him by his record, not by his INS.
    assert {r["who"].get("reference") for r in requesters if r["role"][0]["coding"][0]["code"] == "patient"} == {
        e["resource"]["entity"][0]["what"]["reference"] for e in trail["entry"]}
    verified = subprocess.run([str(GATEWAY), "audit", "verify"], env=env, cwd=ROOT, capture_output=True, text=True,
                              timeout=60)
    assert verified.returncode == 0 and "intact" in verified.stdout


def test_bulk_ingest_reports_what_happened(tmp_path):
    env = dict(os.environ, GATEWAY_VAR_DIR=str(tmp_path / "var"))
    env.pop("GATEWAY_DATABASE_URL", None)
    result = subprocess.run([str(GATEWAY), "ingest", "samples/cda", "samples/invalid"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ingested: 7   duplicates: 0   refused: 6   failed: 0" in result.stderr


def test_bulk_ingest_stopped_with_ctrl_c_says_how_to_go_on_and_loses_nothing(tmp_path):
    """Ctrl-C was a traceback (a KeyboardInterrupt out of SQLAlchemy's commit), with no word of
    what was ingested or of how to go on."""
    var, folder = tmp_path / "var", tmp_path / "documents"
    folder.mkdir()
    cda = (ROOT / "samples" / "cda" / "cr-biologie-martin.xml").read_text()
    count = 600   # 5–10 s of work: as a rule it is still at it when it is interrupted
    for n in range(count):
        (folder / f"{n:04}.xml").write_text(cda.replace('<id root="1.2.250.1.213.1.1.9.2.7.1"/>',
                                                         f'<id root="1.2.250.1.213.1.1.9.2.7.1.{n}"/>', 1))
    # Named last, a pipe no one writes to: the run waits on it once the folder is done, and ends
    # only with the Ctrl-C. (A CI run once ingested all 600 before the test saw 20 of them.)
    never_written = tmp_path / "last.xml"
    os.mkfifo(never_written)
    env = dict(os.environ, GATEWAY_VAR_DIR=str(var))
    env.pop("GATEWAY_DATABASE_URL", None)
    assert subprocess.run([str(GATEWAY), "migrate"], env=env, cwd=ROOT, capture_output=True, timeout=120).returncode == 0
    run = subprocess.Popen([str(GATEWAY), "ingest", str(folder), str(never_written)], env=env, cwd=ROOT,
                           preexec_fn=as_at_a_terminal,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(stored_inputs(var)) < 20:   # under way
            assert run.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        run.send_signal(signal.SIGINT)
        _out, err = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert "interrupted (Ctrl-C): run the same command again" in err
    done = int(re.search(r"ingested: (\d+) ", err).group(1))
    again = subprocess.run([str(GATEWAY), "ingest", str(folder)], env=env, cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    ingested, duplicates = map(int, re.search(r"ingested: (\d+)   duplicates: (\d+) ", again.stderr).groups())
    # The documents of a window (64 of these) are kept together before they are registered
    # together, and a Ctrl-C stops the run after the window at work: when 20 copies are kept, that
    # window is finished before the run stops. A run that outpaced the test is stopped at the pipe,
    # reading the last window, whose documents are not begun.
    assert 19 <= done <= count and ingested + duplicates == count and ingested <= count - done
    statuses = Counter(stored_inputs(var))
    assert statuses["processed"] == count and set(statuses) <= {"processed", "duplicate"}, statuses


def stored_inputs(var) -> list[str]:
    """The statuses of the raw inputs of the gateway of `var`, through its own SQLite."""
    return stored(var, raw_inputs.c.status)


def stored(var, column) -> list:
    """A column's values in the gateway of `var`, through its own SQLite."""
    engine = make_engine(f"sqlite:///{var / 'gateway.db'}")
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(column)).scalars())
    finally:
        engine.dispose()


def test_a_gateway_hashes_passwords_at_scrypt_s_full_cost(served):
    """The suite hashes passwords cheaply in its own process (conftest's cheap_password_hashes); the
    demo accounts, made by `gateway demo setup`, show what a gateway does."""
    _, env = served
    hashes = stored(Path(env["GATEWAY_VAR_DIR"]), patient_accounts.c.password_hash)
    assert hashes and {stored_hash.split("$")[0] for stored_hash in hashes} == {"scrypt:32768:8:1"}


def test_an_integrator_sends_hl7v2_with_gateway_send(served):
    base, env = served
    # /health passed: the listener listens.
    sent = subprocess.run([str(GATEWAY), "send", str(ROOT / "samples" / "hl7v2" / "adt-a01-martin.hl7")],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "MSA|AA|ADT0001" in sent.stdout
    consents = requests.get(f"{base}/fhir/Consent", params={
        "status": "active", "category": "urn:hl7-france:pam-fr:zfa|consultation,urn:hl7-france:pam-fr:zfa|alimentation"},
        headers=token(env, "--role", "patient", "--patient", MARTIN)).json()
    assert consents["total"] == 2
    listed = subprocess.run([str(GATEWAY), "messages", "list"], env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    # Into a pipe, each message on one line, whole.
    assert any(line.split()[3:8] == ["mllp", "GAM|CH-SAINT-AUBIN", "ADT^A01", "ADT0001", "processed"]
               for line in listed.stdout.splitlines())
    # One scrape shows the whole gateway: the MLLP listener's ingests beside the HTTP workers' requests.
    scraped = [requests.get(f"{base}/metrics", timeout=10).text for _ in range(4)]
    assert all('gateway_ingests_total{channel="mllp",outcome="processed"}' in text for text in scraped)
    assert all("gateway_http_requests_total" in text for text in scraped)


@pytest.mark.parametrize("whole_batch", [False, True])
def test_gateway_send_stopped_with_ctrl_c_while_it_waits_for_an_ack_says_what_went(tmp_path, whole_batch):
    """A listener that takes the message and never answers, and the engineer's Ctrl-C: it was a
    KeyboardInterrupt traceback out of the socket's read, then a line that said nothing of what had
    been sent. A batch sent whole waits for one answer, the ACKs of its messages (it said "its ACK")."""
    message = ROOT / "samples" / "hl7v2" / "adt-a01-martin.hl7"
    options = []
    if whole_batch:
        samples = [message, ROOT / "samples" / "hl7v2" / "adt-a28-moreau-hugo.hl7"]
        message = tmp_path / "lot.hl7"
        message.write_bytes(b"BHS|^~\\&|GAM|CH\r" + b"".join(path.read_bytes() for path in samples) + b"BTS|2\r")
        options = ["--whole-batch"]
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        sent = subprocess.Popen([str(GATEWAY), "send", str(message), *options,
                                 "--host", "127.0.0.1", "--port", str(silent.getsockname()[1]), "--timeout", "300"],
                                cwd=ROOT, preexec_fn=as_at_a_terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            silent.settimeout(60)
            connection, _ = silent.accept()
            with connection:
                received = b""
                while not received.endswith(b"\x1c\r"):   # the whole frame: it now waits for the ACK
                    chunk = connection.recv(65536)
                    assert chunk, "gateway send closed the connection"
                    received += chunk
                sent.send_signal(signal.SIGINT)
                out, err = sent.communicate(timeout=60)
        finally:
            sent.kill()
    assert sent.returncode == 130 and err == "", out + err
    unread = ("its answer, the ACKs of its 2 messages, was not read (sent again, each is recognised)" if whole_batch
              else "its ACK was not read (sent again, it is recognised)")
    total = 2 if whole_batch else 1
    assert f"interrupted (Ctrl-C): 0 of {total} messages answered, {message}: {unread}, 0 not sent" in out.splitlines()


def test_a_second_gateway_on_the_same_port_says_so_in_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = dict(os.environ, GATEWAY_VAR_DIR=str(tmp_path), GATEWAY_HTTP_PORT=str(port), GATEWAY_HOST="127.0.0.1",
                   GATEWAY_DATABASE_URL=f"sqlite:///{tmp_path / 'gateway.db'}")
        done = subprocess.run([str(GATEWAY), "serve"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"gateway: the HTTP port 127.0.0.1:{port} is in use: is a gateway already running? "
        "(GATEWAY_HTTP_PORT chooses another)"]


def test_two_gateways_serve_side_by_side_on_one_host(tmp_path, monkeypatch):
    """Each `gateway serve` keeps to its own var directory and ports: a second one on the same
    host leaves the first unharmed, and neither writes in the user's home. (gunicorn's control
    socket was one path per user, $HOME/.gunicorn/gunicorn.ctl: the second gateway took it over
    from the first, and two started at once made one of them log an error.)"""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    started = []
    try:
        for name in ("first", "second"):
            started.append(start_gateway(tmp_path / name))
        for _, base, _ in started:
            assert requests.get(f"{base}/health", timeout=10).status_code == 200
    finally:
        for process, _, _ in started:
            stop_gateway(process)
    assert list(home.iterdir()) == []
    for name in ("first", "second"):
        log = (tmp_path / name / "serve.log").read_text(errors="replace")
        assert "[ERROR]" not in log, log[-2000:]
