"""Operators reprocess the documents received over HTTP (`gateway messages reprocess`), as the
requester who submitted each one: their rights, not the operator's, decide what it may write."""
import json

import pytest
from sqlalchemy import select, update

from conftest import GP, attend_all, sample
from gateway.access import AccessContext
from gateway.demo import build_submission
from gateway.services import received_documents
from gateway.services.messages import NotReprocessable
from gateway.storage.repository import Repository
from gateway.storage.schema import raw_inputs, resources
from test_cda_api import XML, lefevre_current, post, unreachable_once_kept

LIMIT = 5 * 1024 * 1024


def operator(engine) -> Repository:
    return Repository(engine, AccessContext.system("operator"), "http://gateway.test")


def raw_rows(engine) -> list:
    with engine.connect() as conn:
        return conn.execute(select(raw_inputs).order_by(raw_inputs.c.id)).all()


def audited_agents(engine, reference: str, key: str = "altId") -> set[str]:
    """Who the AuditEvents naming `reference` name as their agents (their ids, or their names)."""
    with engine.connect() as conn:
        bodies = conn.execute(select(resources.c.body).where(
            resources.c.res_type == "AuditEvent", resources.c.body.contains(reference))).scalars().all()
    return {agent.get(key) for body in bodies for agent in json.loads(body)["agent"]}


def submit_cda(client, data):
    return post(client, "ldl-ses-martin.xml") if data is None else client.post(
        "/fhir", data=json.dumps(build_submission(data, LIMIT)), headers={"Content-Type": "application/fhir+json"})


@pytest.mark.parametrize("channel", ["cda", "iti65"])
def test_a_document_that_failed_is_reprocessed_as_the_professional_who_sent_it(client, database, settings,
                                                                                monkeypatch, capsys, channel):
    from gateway import cli

    engine = database[0]
    unreachable_once_kept(monkeypatch)
    data = None if channel == "cda" else sample("ldl-ses-martin.xml")
    assert submit_cda(client, data).status_code == 503
    monkeypatch.undo()
    [row] = raw_rows(engine)
    assert (row.channel, row.status) == (channel, "failed")
    assert AccessContext.from_json(row.requester).subject == GP

    # The operator's shell: the failed document is listed, then reprocessed.
    monkeypatch.setattr(cli.Settings, "from_env", lambda: settings)
    monkeypatch.setattr(cli, "configure_logging", lambda level: None)   # pytest's capture keeps the logs
    assert cli.main(["messages", "list", "--documents", "--status", "failed"]) == 0
    assert f"{row.id}" in capsys.readouterr().out
    assert cli.main(["messages", "show", str(row.id)]) == 0
    shown = capsys.readouterr().out
    assert f"via {channel}" in shown and f"sent by doctor {GP}" in shown and "status failed: internal error" in shown
    assert cli.main(["messages", "reprocess", str(row.id)]) == 0
    said = capsys.readouterr().out
    assert f"document {row.id}: processed" in said
    [document] = [line.split()[-1].split("/_history")[0] for line in said.splitlines()
                  if line.startswith("produced DocumentReference/")]

    [row] = raw_rows(engine)
    assert row.status == "processed"
    # Registered as Dr NOEL's submission, as it would have been when it arrived.
    assert GP in audited_agents(engine, document)
    assert "operator" not in audited_agents(engine, document)
    # And the trail says who had it processed again, as a reprocessed message's does.
    assert f"{GP}, reprocessed by operator" in audited_agents(engine, document, "name")
    # Answered, it is not reprocessed again; the sender's copy sent again is found a duplicate.
    with pytest.raises(NotReprocessable):
        received_documents.reprocess(operator(engine), row.id, settings)
    assert submit_cda(client, data).status_code == 200


def test_a_replacement_refused_to_its_requester_stays_refused_when_reprocessed(client, database, settings, bearer):
    """Reprocessed by an operator, the document is still Dr ROUSSEAU's: he did not produce the
    version it replaces. (As a feeding system, whose document names its authors, it would pass.)"""
    engine = database[0]
    assert post(client, "cr-imagerie-irm-lefevre.xml").status_code == 201
    refused = post(client, "cr-imagerie-irm-lefevre-v2.xml", {**XML, **bearer("doctor", sub="899900000020")})
    assert refused.status_code == 403
    row = raw_rows(engine)[-1]
    assert row.status == "refused"
    reprocessed = received_documents.reprocess(operator(engine), row.id, settings)
    assert reprocessed.status == "refused" and "author" in reprocessed.reason
    assert reprocessed.resources == []
    attend_all(engine)
    assert len(lefevre_current(client)) == 1


def test_a_document_whose_requester_is_not_known_is_not_reprocessed(client, database, settings, monkeypatch,
                                                                   bearer):
    """Kept before the gateway recorded who submitted a document (migration 0019): reprocessing it as
    anyone would change the answer. Reprocessing every failed one names it, each time, with why."""
    engine = database[0]
    unreachable_once_kept(monkeypatch)
    assert post(client, "ldl-ses-martin.xml").status_code == 503
    monkeypatch.undo()
    with engine.begin() as conn:
        conn.execute(update(raw_inputs).values(requester=None))
    [row] = raw_rows(engine)
    with pytest.raises(NotReprocessable, match="before the gateway kept who submitted it"):
        received_documents.reprocess(operator(engine), row.id, settings)
    assert received_documents.reprocess_failed(operator(engine), settings) == (
        [], [(row.id, f"document {row.id} was received before the gateway kept who submitted it; "
                      "its sender sends it again")])
    answer = client.post("/documents/received/reprocess-failed", headers=bearer("admin", sub="operator")).json
    assert answer["reprocessed"] == [] and [left["raw_id"] for left in answer["not_reprocessed"]] == [row.id]
    assert raw_rows(engine)[0].status == "failed"


def test_only_an_operator_reprocesses_and_a_patient_upload_is_not_a_document_received(database, settings):
    from gateway.access.context import AccessRefused

    engine = database[0]
    doctor = Repository(engine, AccessContext(role="doctor", subject=GP), "http://gateway.test")
    with pytest.raises(AccessRefused):
        received_documents.reprocess(doctor, 1, settings)
    with engine.begin() as conn:
        raw_id = conn.execute(raw_inputs.insert().values(
            received_at="2026-12-02T00:00:00Z", channel="patient-space", sha256="0" * 64, size=0,
            status="failed", requester=AccessContext(role="patient", subject="p").serialized)).inserted_primary_key[0]
    with pytest.raises(LookupError):
        received_documents.reprocess(operator(engine), raw_id, settings)


def test_an_admin_lists_and_reprocesses_failed_documents_over_http(client, database, monkeypatch, bearer):
    admin = bearer("admin", sub="operator")
    unreachable_once_kept(monkeypatch)
    assert post(client, "ldl-ses-martin.xml").status_code == 503
    assert submit_cda(client, sample("cr-biologie-martin.xml")).status_code == 503
    monkeypatch.undo()
    assert client.get("/documents/received").status_code == 403   # the GP is no operator
    listed = client.get("/documents/received?status=failed", headers=admin).get_json()
    assert [(d["channel"], d["reason"]) for d in listed["documents"]] == [
        ("iti65", "internal error"), ("cda", "internal error")]
    assert client.get("/hl7v2/messages", headers=admin).get_json()["messages"] == []
    first = listed["documents"][1]["id"]
    shown = client.get(f"/documents/received/{first}", headers=admin).get_json()
    assert (shown["channel"], shown["requester"], shown["status"]) == ("cda", f"doctor {GP}", "failed")
    assert client.get("/documents/received/999999", headers=admin).status_code == 404
    one = client.post(f"/documents/received/{first}/reprocess", headers=admin).get_json()
    assert one["status"] == "processed" and any(r.startswith("DocumentReference/") for r in one["resources"])
    assert client.post(f"/documents/received/{first}/reprocess", headers=admin).status_code == 409
    assert client.post("/documents/received/999999/reprocess", headers=admin).status_code == 404
    rest = client.post("/documents/received/reprocess-failed", headers=admin).get_json()["reprocessed"]
    assert [(r["raw_id"], r["status"]) for r in rest] == [(listed["documents"][0]["id"], "processed")]
    attend_all(database[0])
    assert client.get("/fhir/DocumentReference", query_string={
        "patient.identifier": "urn:oid:1.2.250.1.213.1.4.10|185067511204554", "_summary": "count"}).json["total"] == 2


@pytest.mark.parametrize("query", ["_count=0", "_count=-1", "_count=x", "before=0", "before=-3",
                                   f"before={2**63}", "before=" + "9" * 30, "status=done"])
def test_an_operator_s_listing_that_asks_for_no_page_is_told_why(client, bearer, query):
    """A page of no inputs, before no id, or of a status inputs never have is a 400 that says what
    is expected (the first two were a 500 on both backends, and an id past 2^31 one on PostgreSQL)."""
    admin = bearer("admin", sub="operator")
    for path in ("/hl7v2/messages", "/documents/received"):
        answer = client.get(f"{path}?{query}", headers=admin)
        assert answer.status_code == 400, (path, answer.data)
        assert answer.json["issue"][0]["diagnostics"].split()[0] in ("_count", "before", "status")


def test_an_operator_s_request_for_an_id_past_the_largest_is_not_found(client, bearer):
    admin = bearer("admin", sub="operator")
    for path in ("/hl7v2/messages/{}", "/documents/received/{}"):
        assert client.get(path.format(2**63 - 1), headers=admin).status_code == 404
        assert client.get(path.format(2**63), headers=admin).status_code == 404
        assert client.post(path.format(2**63) + "/reprocess", headers=admin).status_code == 404
