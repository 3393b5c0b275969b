"""`gateway ingest` when the database goes away mid-run: it stops at that document, reports what it
ingested, and tells the operator to run the same command again (duplicates are recognised); so it
does on a Ctrl-C, wherever it lands. The documents of a window share transactions. A file over the
document limit is refused without being read whole."""
import shutil
from dataclasses import replace

from hypothesis import HealthCheck, given, settings as examples
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from conftest import SAMPLES, ctrl_c_in_a_finaliser, sigint_as_at_a_terminal
from gateway import bulk
from gateway.config import Settings
from gateway.storage.database import make_engine
from gateway.storage.schema import raw_inputs


def registering(monkeypatch, then=None) -> list[str]:
    """The documents registered (their ids), in order; `then(count)` runs as each is."""
    from gateway.services import documents

    real, calls = documents.register_document, []

    def register(uow, base_url, parsed):
        calls.append(parsed.header.unique_id)
        if then is not None:
            then(len(calls))
        return real(uow, base_url, parsed)

    monkeypatch.setattr(documents, "register_document", register)
    return calls


def test_an_unavailable_database_stops_the_run_and_says_how_to_go_on(tmp_path, monkeypatch):
    """The documents of a window run side by side: the one after that the database failed is not
    run, and the run stops there."""
    settings = replace(Settings.from_env(), database_url=f"sqlite:///{tmp_path / 'gateway.db'}")
    files = sorted((SAMPLES / "cda").glob("*.xml"))[:3]

    def fail_the_second(count: int) -> None:
        if count == 2:
            raise OperationalError("INSERT", {}, Exception("connection refused"))

    calls = registering(monkeypatch, fail_the_second)
    report = bulk.ingest_paths(settings, files)
    assert report.ingested == 1 and len(calls) == 2          # stopped at the second document
    assert report.failed == [(str(files[1]), "the database is unavailable (connection refused): run the same "
                                             "command again (the documents already ingested are recognised)")]
    monkeypatch.undo()
    again = bulk.ingest_paths(settings, files)
    assert (again.ingested, again.duplicates, again.failed) == (2, 1, [])


def test_a_ctrl_c_that_lands_where_python_ignores_exceptions_still_stops_the_run(tmp_path, monkeypatch):
    """Python's own handler raised KeyboardInterrupt wherever the run was. Raised in a finaliser, or
    in a module lock's callback during an import (the CI run that found it), it was printed as
    ignored and lost: the run went on to its end, and waited there on a pipe named last. It stops
    the run after the window at work (here one document a window)."""
    from gateway.services import ingest

    monkeypatch.setattr(ingest, "WINDOW_INPUTS", 1)
    settings = replace(Settings.from_env(), database_url=f"sqlite:///{tmp_path / 'gateway.db'}")
    files = sorted((SAMPLES / "cda").glob("*.xml"))[:3]
    calls = registering(monkeypatch, lambda count: ctrl_c_in_a_finaliser() if count == 1 else None)
    with sigint_as_at_a_terminal():
        report = bulk.ingest_paths(settings, files)
    assert report.interrupted and report.ingested == 1 and len(calls) == 1
    assert report.failed == [(str(files[1]), "interrupted (Ctrl-C): run the same command again (the documents "
                                             "already ingested are recognised)")]


def test_the_documents_of_a_window_share_the_group_commit_s_transactions(tmp_path, write_transactions):
    """Each document was kept, then registered, each in a transaction (and a flush) of its own: 6
    for 3 documents. A window's run side by side: 2. The same document given twice in one window is
    a duplicate, as when given twice one after the other."""
    transactions = write_transactions
    settings = replace(Settings.from_env(), database_url=f"sqlite:///{tmp_path / 'gateway.db'}")
    files = sorted((SAMPLES / "cda").glob("*.xml"))[:3]
    report = bulk.ingest_paths(settings, files)
    assert (report.ingested, report.duplicates, report.refused, report.failed) == (3, 0, [], [])
    assert transactions == [3, 3]
    twice = tmp_path / "again.xml"
    twice.write_bytes(files[0].read_bytes())
    transactions.clear()
    report = bulk.ingest_paths(settings, [files[0], twice])
    assert (report.ingested, report.duplicates) == (0, 2)


def test_a_file_over_the_limit_is_refused_from_its_first_bytes(tmp_path):
    """It was read whole, then kept whole as its raw copy: a 5 GB file in a directory of documents
    took 5 GB of memory, and as much of the database, to be refused."""
    settings = replace(Settings.from_env(), database_url=f"sqlite:///{tmp_path / 'gateway.db'}",
                       max_document_bytes=1_000_000)
    large = tmp_path / "large.xml"
    large.write_bytes((SAMPLES / "cda" / "ldl-ses-martin.xml").read_bytes() + b"<!-- -->" * 200_000)
    report = bulk.ingest_paths(settings, [large])
    assert report.refused == [(str(large), "/", f"document is {large.stat().st_size} bytes, above the limit of "
                                                "1000000 bytes; only its first 65536 bytes were kept")]
    engine = make_engine(settings.database_url)
    with engine.connect() as conn:
        assert conn.execute(select(raw_inputs.c.status, raw_inputs.c.size)).all() == [("refused", 65536)]
    engine.dispose()


def test_files_of_a_folder_that_are_not_documents_are_counted_as_skipped(tmp_path, capsys):
    """A folder of HL7v2 messages gave "ingested: 0 duplicates: 0 refused: 0 failed: 0" alone."""
    settings = replace(Settings.from_env(), database_url=f"sqlite:///{tmp_path / 'gateway.db'}")
    report = bulk.ingest_paths(settings, [SAMPLES / "hl7v2", SAMPLES / "cda" / "ldl-ses-martin.xml"])
    assert (report.ingested, report.skipped) == (1, len(list((SAMPLES / "hl7v2").iterdir())))
    said = " ".join(capsys.readouterr().err.split())
    assert f"skipped: {report.skipped} files in the folders given are not .xml or .cda" in said


def test_the_files_refused_are_named_as_they_are(tmp_path, capsys):
    """A file named `cr [b]2026[i].xml` was listed as `cr 2026.xml`, and `[red].xml` as `.xml`:
    the names were read as markup."""
    settings = replace(Settings.from_env(), database_url=f"sqlite:///{tmp_path / 'gateway.db'}")
    names = [tmp_path / "cr [b]2026[i].xml", tmp_path / "[red].xml"]
    for name in names:
        name.write_bytes(b"<ClinicalDocument>")
    report = bulk.ingest_paths(settings, names)
    assert len(report.refused) == 2
    said = capsys.readouterr().err
    assert all(name.name in said for name in names) and "refused: 2" in said


DOCUMENTS = sorted((SAMPLES / "cda").glob("*.xml")) + sorted((SAMPLES / "invalid").glob("*.xml"))
RUNS = [0]


@examples(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chosen=st.lists(st.integers(0, len(DOCUMENTS) - 1), min_size=1, max_size=10), window=st.integers(2, 6))
def test_documents_in_windows_end_as_one_by_one(tmp_path, monkeypatch, chosen, window):
    """Documents, refused ones, and copies of one another (a copy in the same window as its
    original takes up its raw copy, finds it claimed, and is kept again), in windows of any size:
    the report is the one the same folder gives one document at a time, and so are the raw copies."""
    from gateway.services import ingest

    RUNS[0] += 1
    folder = tmp_path / f"run{RUNS[0]}"
    folder.mkdir()
    for position, index in enumerate(chosen):
        shutil.copyfile(DOCUMENTS[index], folder / f"{position:02}.xml")
    reports = []
    for size in (1, window):
        monkeypatch.setattr(ingest, "WINDOW_INPUTS", size)
        url = f"sqlite:///{folder / f'windows-of-{size}.db'}"
        report = bulk.ingest_paths(replace(Settings.from_env(), database_url=url), [folder])
        engine = make_engine(url)
        with engine.connect() as conn:
            kept = conn.execute(select(raw_inputs.c.sender, raw_inputs.c.status).order_by(raw_inputs.c.sender,
                                                                                          raw_inputs.c.status)).all()
        engine.dispose()
        reports.append((report.ingested, report.duplicates, sorted(report.refused), report.failed, kept))
    assert reports[0] == reports[1]
