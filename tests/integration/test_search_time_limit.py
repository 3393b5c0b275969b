"""A search runs at most GATEWAY_SEARCH_TIMEOUT seconds. Within its bounds (30 parameters, 100
values) its work still grows with the documents its reader may see: a patient-less search by a
doctor whose organisation many patients authorise reads all of theirs. Past the limit it is stopped
and answered 400 `too-costly`, and the connection goes back to the pool as it came."""
import contextlib
from dataclasses import replace

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from conftest import sample
from gateway.app import create_app
from gateway.storage import database as storage

SEARCH = "/fhir/DocumentReference?status=current"


@pytest.fixture
def limited(settings, database, bearer):
    """A second app on the same database, whose searches may run 0.2 s."""
    client = create_app(replace(settings, search_seconds=0.2), database[0]).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = bearer("doctor", sub="899900000053")["Authorization"]
    return client


class HourPerLook:
    """database.py's clock, an hour later at each look."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += 3600
        return self.now


def stalled(backend, database, monkeypatch):
    """Make the next search outrun its limit: on PostgreSQL, wait on a lock another transaction holds
    on the resources table; on SQLite, whose readers wait on nothing, look at the clock at every
    instruction past a limit already reached."""
    if backend == "sqlite":
        monkeypatch.setattr(storage, "SQLITE_STEPS", 1)
        monkeypatch.setattr(storage, "time", HourPerLook())
        return None
    holder = database[0].connect()
    transaction = holder.begin()
    # Without the limit the search would wait on this lock: PostgreSQL ends the holder after 30 s.
    holder.execute(text("SET LOCAL idle_in_transaction_session_timeout = '30s'"))
    holder.execute(text("LOCK TABLE resources IN ACCESS EXCLUSIVE MODE"))
    return holder, transaction


def test_a_search_past_its_time_is_stopped_with_a_400_too_costly(client, limited, backend, database, monkeypatch,
                                                                  bearer):
    assert client.post("/cda", data=sample("ldl-ses-martin.xml"), content_type="application/xml").status_code == 201
    martin = bearer("patient", patient="185067511204554")
    assert limited.get(SEARCH, headers=martin).json["total"] == 1
    held = stalled(backend, database, monkeypatch)
    try:
        answer = limited.get(SEARCH, headers=martin)
        patched = limited.patch("/fhir/DocumentReference?identifier=urn:oid:1.2.250.1.213.1.1.9.2.1.1|x",
                                data="[]", content_type="application/json-patch+json")
    finally:
        monkeypatch.undo()
        if held:
            with contextlib.suppress(DBAPIError):   # ended by PostgreSQL if the search waited 30 s
                held[1].rollback()
            held[0].close()
    assert answer.status_code == 400, answer.data[:300]
    issue = answer.json["issue"][0]
    assert issue["code"] == "too-costly" and "ran longer than the 0.2 s" in issue["diagnostics"]
    assert patched.status_code == 400 and patched.json["issue"][0]["code"] == "too-costly"
    # The connection went back to the pool without its limit: the next searches, limited or not, answer.
    assert limited.get(SEARCH, headers=martin).json["total"] == 1
    assert client.get(SEARCH, headers=martin).json["total"] == 1
