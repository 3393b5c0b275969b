"""Two requests that change one document at once, each from the version it read before either
wrote: on either backend, neither change undoes the other and neither request fails."""
import json
import threading

import pytest

from conftest import attend_all, sample
from gateway.access.writes import Write
from gateway.mapping import codes
from gateway.storage.repository import Repository

PATCH = {"Content-Type": "application/json-patch+json"}
MASK = [{"op": "add", "path": "/securityLabel/0", "value": {"coding": [
    {"system": codes.VISIBILITY_SYSTEM, "code": "MASQUE_PS"}]}}]
ARCHIVE = [{"op": "add", "path": f"/extension[url:'{codes.PDSM_IS_ARCHIVED}']/valueBoolean", "value": True}]


@pytest.fixture
def second_gateway(settings, database, client):
    """Another gateway over the same database, as a second node would be."""
    from gateway.app import create_app
    from gateway.storage.database import make_engine

    engine = make_engine(database[1])
    gateway = create_app(settings, engine).test_client()
    gateway.environ_base.update(client.environ_base)
    yield gateway
    engine.dispose()


def test_a_mask_and_an_archiving_made_from_one_version_both_hold(client, second_gateway, database, bearer,
                                                                 monkeypatch):
    """The patient masks a document while it is archived. Before, on PostgreSQL the second write
    failed (a 500: both wrote version 2); on SQLite it was written from the version before the
    first, and undid it: the mask was lost, the document shown again to every professional."""
    doc = "DocumentReference/" + client.post("/cda", data=sample("cr-biologie-martin.xml"),
                                             headers={"Content-Type": "application/xml"}).json["id"]
    attend_all(database[0])
    patient = bearer("patient", patient="185067511204554")
    both_read = threading.Barrier(2, timeout=60)
    waited, unit_of_work = set(), Repository.unit_of_work

    def meet_then_write(self, permission):
        # Both requests have read the document; neither has opened its unit of work.
        if permission in (Write.CHANGE, Write.ARCHIVE) and threading.get_ident() not in waited:
            waited.add(threading.get_ident())
            both_read.wait()
        return unit_of_work(self, permission)

    monkeypatch.setattr(Repository, "unit_of_work", meet_then_write)
    answers = {}
    requests = {"mask": (client, MASK), "archive": (second_gateway, ARCHIVE)}
    threads = [threading.Thread(target=lambda name=name, gateway=gateway, patch=patch: answers.update(
        {name: gateway.patch(f"/fhir/{doc}", data=json.dumps(patch), headers={**PATCH, **patient})}))
        for name, (gateway, patch) in requests.items()]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        both_read.abort()
    monkeypatch.undo()
    assert {name: answer.status_code for name, answer in answers.items()} == {"mask": 200, "archive": 200}, \
        {name: answer.data[:300] for name, answer in answers.items()}
    stored = client.get(f"/fhir/{doc}", headers=patient).json
    assert stored["meta"]["versionId"] == "3"
    assert "MASQUE_PS" in [c["code"] for label in stored["securityLabel"] for c in label["coding"]]
    assert {"url": codes.PDSM_IS_ARCHIVED, "valueBoolean": True} in stored["extension"]
