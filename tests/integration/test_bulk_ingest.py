"""`gateway ingest` when the database goes away mid-run: it stops at that document, reports what it
ingested, and tells the operator to run the same command again (duplicates are recognised)."""
from dataclasses import replace

from sqlalchemy.exc import OperationalError

from conftest import SAMPLES
from gateway import bulk
from gateway.config import Settings


def test_an_unavailable_database_stops_the_run_and_says_how_to_go_on(tmp_path, monkeypatch):
    settings = replace(Settings.from_env(), database_url=f"sqlite:///{tmp_path / 'gateway.db'}")
    files = sorted((SAMPLES / "cda").glob("*.xml"))[:3]
    real, calls = bulk.ingest_cda, []

    def ingest_then_fail(repo, data, **kwargs):
        calls.append(kwargs["sender"])
        if len(calls) == 2:
            raise OperationalError("INSERT", {}, Exception("connection refused"))
        return real(repo, data, **kwargs)

    monkeypatch.setattr(bulk, "ingest_cda", ingest_then_fail)
    report = bulk.ingest_paths(settings, files)
    assert report.ingested == 1 and len(calls) == 2          # stopped at the second document
    assert report.failed == [(str(files[1]), "the database is unavailable: run the same command again "
                                             "(the documents already ingested are recognised)")]
    monkeypatch.undo()
    again = bulk.ingest_paths(settings, files)
    assert (again.ingested, again.duplicates, again.failed) == (2, 1, [])
