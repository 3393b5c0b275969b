"""Shared fixtures: a database per backend (SQLite always; PostgreSQL when configured), an app,
a live HTTP server, a test PKI, and the third-party corpus when it is present."""
from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import settings as hypothesis_settings
from sqlalchemy import create_engine, text

from gateway.access import AccessContext
from gateway.access.writes import Write
from gateway.access.tokens import issue, make_signing_key
from gateway.app import create_app
from gateway.config import Settings
from gateway.signature import make_test_pki
from gateway.storage.database import make_engine
from gateway.storage.migrate import upgrade
from gateway.storage.schema import metadata

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
CORPUS = Path(os.environ.get("GATEWAY_CORPUS_DIR", ROOT.parent / "shared" / "corpus"))
POSTGRES_URL = os.environ.get("GATEWAY_TEST_POSTGRES_URL")
REQUIRE_POSTGRES = os.environ.get("GATEWAY_REQUIRE_POSTGRES") == "1"

# No deadline for any property test: how long an example takes is no part of its verdict (speed is
# measured in bench/), and the suite runs beside other work. Hypothesis's default failed a test whose
# 1 MB example took 297 ms with both cores busy.
hypothesis_settings.register_profile("gateway", deadline=None)
hypothesis_settings.load_profile("gateway")

BACKENDS = ["sqlite", "postgresql"]
TOKEN_KID, TOKEN_ISSUER, TOKEN_AUDIENCE = "test-token", "urn:test:issuer", "urn:test:gateway"
# The test médecin traitant (Dr NOEL, the GP of the samples) and a feeding system.
GP = "899900000053"
MLLP_TEST_MAX_BYTES = 1024 * 1024  # the ANS examples are 330 KB


# Lines the tests want shown in pytest's final summary (the corpus tally).
REPORT: list[str] = []


def pytest_sessionfinish(session):
    """On a worker of pytest-xdist (`make test` runs two), its lines go to the controller, which
    prints them with its own."""
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["gateway_report"] = REPORT


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    REPORT.extend(getattr(node, "workeroutput", {}).get("gateway_report", []))


def pytest_terminal_summary(terminalreporter):
    if REPORT:
        terminalreporter.section("gateway report")
        for line in REPORT:
            terminalreporter.write_line(line)


def pytest_collection_modifyitems(config, items):
    if REQUIRE_POSTGRES and not POSTGRES_URL:
        raise pytest.UsageError("GATEWAY_REQUIRE_POSTGRES=1 but GATEWAY_TEST_POSTGRES_URL is not set")


@pytest.fixture(autouse=True, scope="session")
def cheap_password_hashes():
    """Passwords hashed at scrypt's N = 128 in this process, not 32768: the suite creates and signs
    in to accounts hundreds of times, at a tenth of a second a hash. The gateways that tests start
    as processes keep the real cost."""
    from gateway.space import accounts

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(accounts, "PASSWORD_HASH", "scrypt:128:8:1")
        yield


@pytest.fixture(autouse=True)
def logging_as_it_was():
    """The root logger's handlers and level put back after each test: a test that runs a command
    (`gateway.cli.main` configures logging) left a handler on the stderr pytest had captured for it,
    closed once the test ended, and every later log line printed "--- Logging error ---" into
    whatever the next tests captured."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    make_test_pki(directory)
    return directory


@pytest.fixture(scope="session")
def token_key(pki) -> Path:
    return make_signing_key(pki, TOKEN_KID)


def make_token(private_key: Path, ttl: int = 600, **claims) -> str:
    return issue(private_key.read_bytes(), TOKEN_KID, TOKEN_ISSUER, TOKEN_AUDIENCE, claims, ttl)


@pytest.fixture
def bearer(token_key):
    """bearer(role, sub=..., patient=..., purpose=...) -> the Authorization header of such a token."""
    def headers(role: str, sub: str | None = None, **claims) -> dict:
        subject = sub or claims.get("patient") or f"test-{role}"
        return {"Authorization": "Bearer " + make_token(token_key, sub=subject, role=role, **claims)}
    return headers


def patch_operation(kind: str, path: str, **parts) -> dict:
    """One operation of a FHIRPath Patch (FHIR R4's): its type and path, then `name`, `index`,
    `source`, `destination`, `value_parts` (a value given by parts) or a value[x] (`valueCode=…`)."""
    given = [{"name": "type", "valueCode": kind}, {"name": "path", "valueString": path}]
    if "name" in parts:
        given.append({"name": "name", "valueString": parts.pop("name")})
    for name in ("index", "source", "destination"):
        if name in parts:
            given.append({"name": name, "valueInteger": parts.pop(name)})
    if "value_parts" in parts:
        given.append({"name": "value", "part": parts.pop("value_parts")})
    return {"name": "operation", "part": given + [{"name": "value", key: value} for key, value in parts.items()]}


def patch_parameters(*operations: dict) -> dict:
    """A FHIRPath Patch: the Parameters resource of its operations (patch_operation)."""
    return {"resourceType": "Parameters", "parameter": list(operations)}


def every_version(engine, res_types: list[str]) -> list[tuple[str, str, int]]:
    """(type, id, version) of every version kept of resources of these types: those a later one
    replaced (resource_versions) and the current ones (resources)."""
    from sqlalchemy import select

    from gateway.storage.schema import resource_versions, resources

    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(
            select(resource_versions.c.res_type, resource_versions.c.res_id, resource_versions.c.version)
            .where(resource_versions.c.res_type.in_(res_types))
            .union_all(select(resources.c.res_type, resources.c.res_id, resources.c.version)
                       .where(resources.c.res_type.in_(res_types))))]


def recorded_validations(monkeypatch, *modules) -> list[tuple[str, bool]]:
    """Each resource the modules validate from now on: its type, and whether inside a group
    commit's batch (under SQLite's write lock)."""
    from gateway.storage import commits

    validated = []
    for module in modules:
        def recorded(resource, validate=module.validate):
            validated.append((resource["resourceType"], getattr(commits._batch_thread, "running", False)))
            return validate(resource)
        monkeypatch.setattr(module, "validate", recorded)
    return validated


def attend_all(engine, professional: str = GP) -> None:
    """Make a professional the attending physician of every patient in the database, as if each
    patient had chosen them: the tests that are not about access read as this doctor."""
    from sqlalchemy import select

    from gateway.services.consents import checked_consent
    from gateway.services.consents import decision
    from gateway.storage.repository import Repository, new_id
    from gateway.storage.schema import access_rules, resources

    setup = AccessContext.system("test set-up")
    repo = Repository(engine, setup)
    with engine.connect() as conn:
        attended = select(access_rules.c.patient_id).where(access_rules.c.kind == "attending-physician",
                                                          access_rules.c.actor_value == professional)
        patients = conn.execute(select(resources.c.res_id).where(
            resources.c.res_type == "Patient", resources.c.res_id.not_in(attended))).scalars().all()
    with repo.unit_of_work(Write.FEED) as uow:
        for patient_id in patients:
            consent = checked_consent(decision("attending-physician", "permit", professional), patient_id, setup)
            consent["id"] = new_id()
            uow.save(consent, patient_id=patient_id)


@contextlib.contextmanager
def new_postgres_database(prefix: str) -> Iterator[str]:
    """The URL of a new, empty database beside GATEWAY_TEST_POSTGRES_URL's, dropped at the end;
    skips (or fails, with GATEWAY_REQUIRE_POSTGRES=1) when PostgreSQL is not configured."""
    if not POSTGRES_URL:
        if REQUIRE_POSTGRES:
            pytest.fail("PostgreSQL is required here (GATEWAY_REQUIRE_POSTGRES=1)")
        pytest.skip("PostgreSQL not configured (set GATEWAY_TEST_POSTGRES_URL)")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1),
                          isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_engine():
    """A database of its own for this test session, migrated once, dropped at the end."""
    with new_postgres_database("gateway_test") as url:
        engine = make_engine(url)
        upgrade(engine)
        yield engine, url
        engine.dispose()


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory) -> Path:
    """An empty SQLite database, migrated once for the session: each test's is a copy of it (the
    migrations took 0.1–0.17 s a test, a copy takes 3 ms). test_migrations runs them on their own."""
    path = tmp_path_factory.mktemp("migrated") / "gateway.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)   # its connections closed, the log is checkpointed into the file and removed
    assert not path.with_name("gateway.db-wal").exists()
    return path


@pytest.fixture
def database(backend, tmp_path, request):
    """(engine, url) of an empty, migrated database of the requested backend."""
    if backend == "sqlite":
        path = tmp_path / "gateway.db"
        shutil.copyfile(request.getfixturevalue("migrated_sqlite"), path)
        url = f"sqlite:///{path}"
        engine = make_engine(url)
        yield engine, url
        engine.dispose()
        return
    engine, url = request.getfixturevalue("postgres_engine")
    # DELETE, not TRUNCATE: a test leaves a few rows, and TRUNCATE gives each of the 20 tables new
    # files (56 ms a test, against 6).
    with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())
    yield engine, url


@pytest.fixture
def settings(database, tmp_path, pki) -> Settings:
    _, url = database
    base = Settings.from_env()
    return replace(base, var_dir=tmp_path, database_url=url, public_base_url="http://gateway.test",
                   trust_anchors=[pki / "ca.pem"], demo_dir=pki, max_document_bytes=5 * 1024 * 1024,
                   jwt_keys=[pki / f"{TOKEN_KID}.pem"], jwt_issuer=TOKEN_ISSUER, jwt_audience=TOKEN_AUDIENCE,
                   export_key=pki / "signer-key.pem", export_cert=pki / "signer.pem", message_sender="outbox")


@pytest.fixture
def app(settings, database):
    engine, _ = database
    return create_app(settings, engine)


@pytest.fixture
def client(app, bearer):
    """A test client acting as the GP Dr NOEL (who may submit documents, and reads what
    `attend_all` lets him); a request's own Authorization header replaces that one."""
    test_client = app.test_client()
    test_client.environ_base["HTTP_AUTHORIZATION"] = bearer("doctor", sub=GP)["Authorization"]
    return test_client


@pytest.fixture
def second_gateway(settings, database, client):
    """Another gateway over the same database, as a second node would be, acting as `client` does."""
    from gateway.storage.database import make_engine

    engine = make_engine(database[1])
    gateway = create_app(settings, engine).test_client()
    gateway.environ_base.update(client.environ_base)
    yield gateway
    engine.dispose()


def at_once(requests: dict, barrier: threading.Barrier) -> dict:
    """The answers to `requests` (name: a call that sends one), each sent from a thread of its own
    at the same time; `barrier`, where the test holds them, is aborted however they end, so that
    none waits on it for its timeout."""
    answers = {}
    threads = [threading.Thread(target=lambda name=name, send=send: answers.update({name: send()}))
               for name, send in requests.items()]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        barrier.abort()
    return answers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def full_temporary_disk(monkeypatch):
    """Temporary files (TMPDIR) on a full disk: each write refused by the kernel for want of room
    (ENOSPC), through Python's buffered file, when its buffer is written out, as on a real one.
    Called, it gives the room back."""
    monkeypatch.setattr(tempfile, "TemporaryFile", lambda *args, **kwargs: open("/dev/full", "w+b"))
    return monkeypatch.undo


@contextlib.contextmanager
def serving(server):
    """A socketserver served in a thread, then shut down, closed and its thread joined. It looks
    for the shutdown every 50 ms: at socketserver's 500 ms, each test's stop waited for it."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def live_server(settings, database):
    """The app served over real HTTP on loopback (threaded WSGI server)."""
    from werkzeug.serving import make_server

    port = free_port()
    live_settings = replace(settings, host="127.0.0.1", http_port=port, public_base_url=f"http://127.0.0.1:{port}")
    with serving(make_server("127.0.0.1", port, create_app(live_settings, database[0]), threaded=True)):
        yield live_settings


@pytest.fixture
def mllp_listener(settings, database):
    """The MLLP listener (the same coroutine `gateway mllp` runs) on a loopback port, in a thread."""
    from gateway.listener import listen

    live = replace(settings, mllp_host="127.0.0.1", mllp_port=free_port(), mllp_idle_timeout=30.0,
                   mllp_max_bytes=MLLP_TEST_MAX_BYTES)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    state: dict = {}

    async def main():
        state["stop"], ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(listen(live, ready, state["stop"]))
        await asyncio.wait([asyncio.create_task(ready.wait()), task], return_when=asyncio.FIRST_COMPLETED)
        started.set()
        await task

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(10), "the MLLP listener did not start"
    yield live
    loop.call_soon_threadsafe(state["stop"].set)
    thread.join(40)


def ctrl_c_in_a_finaliser() -> None:
    """A Ctrl-C (SIGINT to this process) whose handler runs inside a finaliser, where Python prints
    what it raises as ignored and drops it, as in a module lock's callback during an import."""
    class CtrlC:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10_000):   # the handler runs here, inside the finaliser
                pass

    CtrlC()   # dropped at once: its finaliser runs


@contextlib.contextmanager
def sigint_as_at_a_terminal() -> Iterator[None]:
    """Python's own SIGINT handler, which a command started at a terminal has: a suite started in
    the background ignores SIGINT."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def mllp_send(port: int, message: bytes, timeout: float = 30.0) -> list[bytes]:
    """Send one message with python-hl7's `mllp_send` (a third-party client); the ACKs it printed."""
    with tempfile.NamedTemporaryFile(suffix=".mllp") as framed:
        framed.write(b"\x0b" + message + b"\x1c\r")
        framed.flush()
        tool = Path(sys.executable).parent / "mllp_send"
        try:
            done = subprocess.run([str(tool), "-p", str(port), "-f", framed.name, "127.0.0.1"],
                                  capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return []
    assert done.returncode == 0, done.stderr.decode()
    # mllp_send prints each reply as received, MLLP frame included.
    return [part.split(b"\x1c", 1)[0] for part in done.stdout.split(b"\x0b")[1:]]


def imaging_manifest(ins: str = "212057501802305", birth: str = "20120514", sex: str = "F",
                     sop_instance: str = "1.2.250.1.999.1.7.1", study: str = "1.2.250.1.999.1.7.2",
                     issuer: str = "1.2.250.1.213.1.4.10") -> bytes:
    """A DICOM imaging manifest (a KOS) of one study, its patient and its exam named as the DRIM-M
    example KOS names them: the INS as Patient ID, its OID as the issuer's Universal Entity ID (default:
    Léa MOREAU's, the patient of cr-imagerie-echographie-moreau.xml; `issuer` another OID for
    another identifier, an IPP); the accession number, and its
    issuer, in the Referenced Request Sequence."""
    from io import BytesIO

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    from gateway.dicom import KOS_SOP_CLASS

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = KOS_SOP_CLASS, sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    manifest = Dataset()
    manifest.file_meta = meta
    manifest.SOPClassUID, manifest.SOPInstanceUID, manifest.Modality = KOS_SOP_CLASS, sop_instance, "KO"
    manifest.PatientName, manifest.PatientID = "MOREAU^LEA", ins
    manifest.PatientBirthDate, manifest.PatientSex = birth, sex
    qualifiers = Dataset()
    qualifiers.UniversalEntityID, qualifiers.UniversalEntityIDType = issuer, "ISO"
    manifest.IssuerOfPatientIDQualifiersSequence = [qualifiers]
    manifest.StudyInstanceUID = study
    evidence = Dataset()
    evidence.StudyInstanceUID = study
    manifest.CurrentRequestedProcedureEvidenceSequence = [evidence]
    request, accession_issuer = Dataset(), Dataset()
    accession_issuer.UniversalEntityID, accession_issuer.UniversalEntityIDType = "1.2.250.1.999.1.7.5", "ISO"
    request.AccessionNumber, request.IssuerOfAccessionNumberSequence = "105234751", [accession_issuer]
    request.StudyInstanceUID = study
    manifest.ReferencedRequestSequence = [request]
    out = BytesIO()
    manifest.save_as(out, enforce_file_format=True)
    return out.getvalue()


def sample(name: str) -> bytes:
    for folder in ("cda", "replacement", "signed", "invalid"):
        path = SAMPLES / folder / name
        if path.exists():
            return path.read_bytes()
    raise FileNotFoundError(name)


@pytest.fixture
def corpus_dir() -> Path:
    if not (CORPUS / "cda").is_dir():
        pytest.skip(f"third-party corpus not present at {CORPUS}")
    return CORPUS


@pytest.fixture
def write_transactions(monkeypatch) -> list[int]:
    """The group commit's write transactions from here on, each as the number of units it ran."""
    from gateway.storage import commits

    transactions: list[int] = []
    commit = commits.GroupCommit._commit

    def counted(self, batch):
        transactions.append(len(batch))
        return commit(self, batch)

    monkeypatch.setattr(commits.GroupCommit, "_commit", counted)
    return transactions
