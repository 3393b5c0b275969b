"""Two requests that change one document at once, each from the version it read before either
wrote: on either backend, neither change undoes the other and neither request fails; and a change
that names the version it is made to (If-Match) is made to that version or refused."""
import json
import threading

import pytest

from conftest import SAMPLES, at_once, attend_all, sample
from gateway.access.writes import Write
from gateway.mapping import codes
from gateway.services.consents import decision
from gateway.storage.repository import Repository

PATCH = {"Content-Type": "application/json-patch+json"}
MASK = [{"op": "add", "path": "/securityLabel/0", "value": {"coding": [
    {"system": codes.VISIBILITY_SYSTEM, "code": "MASQUE_PS"}]}}]
ARCHIVE = [{"op": "add", "path": f"/extension[url:'{codes.PDSM_IS_ARCHIVED}']/valueBoolean", "value": True}]


def _patched_at_once(client, second_gateway, doc: str, headers: dict, monkeypatch, if_match=None) -> dict:
    """The answers to a mask (through one gateway) and an archiving (through the other) of `doc`,
    each sent once both requests have read it."""
    both_read = threading.Barrier(2, timeout=60)
    waited, unit_of_work = set(), Repository.unit_of_work

    def meet_then_write(self, permission):
        # Both requests have read the document; neither has opened its unit of work.
        if permission in (Write.CHANGE, Write.ARCHIVE) and threading.get_ident() not in waited:
            waited.add(threading.get_ident())
            both_read.wait()
        return unit_of_work(self, permission)

    monkeypatch.setattr(Repository, "unit_of_work", meet_then_write)
    if if_match:
        headers = {**headers, "If-Match": if_match}
    requests = {"mask": (client, MASK), "archive": (second_gateway, ARCHIVE)}
    answers = at_once({name: lambda gateway=gateway, patch=patch: gateway.patch(
        f"/fhir/{doc}", data=json.dumps(patch), headers={**PATCH, **headers})
        for name, (gateway, patch) in requests.items()}, both_read)
    monkeypatch.undo()
    return answers


@pytest.fixture
def document(client, database) -> str:
    doc = "DocumentReference/" + client.post("/cda", data=sample("cr-biologie-martin.xml"),
                                             headers={"Content-Type": "application/xml"}).json["id"]
    attend_all(database[0])
    return doc


def test_a_mask_and_an_archiving_made_from_one_version_both_hold(client, second_gateway, document, bearer,
                                                                 monkeypatch):
    """The patient masks a document while it is archived. Before, on PostgreSQL the second write
    failed (a 500: both wrote version 2); on SQLite it was written from the version before the
    first, and undid it: the mask was lost, the document shown again to every professional."""
    patient = bearer("patient", patient="185067511204554")
    answers = _patched_at_once(client, second_gateway, document, patient, monkeypatch)
    assert {name: answer.status_code for name, answer in answers.items()} == {"mask": 200, "archive": 200}, \
        {name: answer.data[:300] for name, answer in answers.items()}
    stored = client.get(f"/fhir/{document}", headers=patient).json
    assert stored["meta"]["versionId"] == "3"
    assert "MASQUE_PS" in [c["code"] for label in stored["securityLabel"] for c in label["coding"]]
    assert {"url": codes.PDSM_IS_ARCHIVED, "valueBoolean": True} in stored["extension"]


def test_two_changes_that_name_the_version_they_change_one_holds_the_other_is_412(client, second_gateway, document,
                                                                                  bearer, monkeypatch):
    """With If-Match, a client asks for its change only on the version it read (FHIR's
    version-aware update): the second is not made again from the new version, it is refused."""
    patient = bearer("patient", patient="185067511204554")
    answers = _patched_at_once(client, second_gateway, document, patient, monkeypatch, if_match='W/"1"')
    assert sorted(answer.status_code for answer in answers.values()) == [200, 412], \
        {name: answer.data[:300] for name, answer in answers.items()}
    assert client.get(f"/fhir/{document}", headers=patient).json["meta"]["versionId"] == "2"


def test_if_match_makes_an_update_only_on_the_version_it_names(client, document, bearer):
    """FHIR's version-aware update: a PATCH or a PUT with If-Match is made only when it names the
    current version (412 otherwise, nothing changed). The header was ignored: a client that had
    read version 1 changed version 2 without knowing it."""
    patient = bearer("patient", patient="185067511204554")

    def patch(if_match, operations=MASK):
        return client.patch(f"/fhir/{document}", data=json.dumps(operations),
                            headers={**PATCH, **patient, "If-Match": if_match})

    first = patch('W/"1"')
    assert first.status_code == 200 and first.headers["ETag"] == 'W/"2"', first.json
    stale = patch('W/"1"', ARCHIVE)
    assert stale.status_code == 412 and stale.json["issue"][0]["code"] == "conflict", stale.json
    assert "extension" not in client.get(f"/fhir/{document}", headers=patient).json
    assert patch('"2"', ARCHIVE).headers["ETag"] == 'W/"3"'   # a strong tag names the version too
    assert patch("version 3").status_code == 400
    unmask = [{"op": "remove", "path": "/securityLabel/0"}]
    assert patch("*", unmask).headers["ETag"] == 'W/"4"'   # any current version

    created = client.post("/fhir/Consent", data=json.dumps(decision("professional", "deny", "899900000012")),
                          headers={"Content-Type": "application/fhir+json", **patient})
    assert created.status_code == 201, created.json
    consent = dict(created.json, status="inactive")
    put = {"Content-Type": "application/fhir+json", **patient}
    url = f"/fhir/Consent/{consent['id']}"
    assert client.put(url, data=json.dumps(consent), headers={**put, "If-Match": 'W/"1"'}).headers["ETag"] == 'W/"2"'
    refused = client.put(url, data=json.dumps(consent), headers={**put, "If-Match": 'W/"1"'})
    assert refused.status_code == 412, refused.json
    assert client.get(url, headers=patient).json["meta"]["versionId"] == "2"


def test_changes_sent_at_once_through_two_gateways_each_make_one_version_that_undoes_nothing(
        client, second_gateway, document, bearer):
    """Six clients, three on each gateway, mask and unmask (the patient) or archive and unarchive
    (its author) one document as fast as they can. No answer is a 5xx, and the history shows each
    version changing one thing from the one before: a change made from an older version would
    also have undone the other kind of change in between."""
    import random
    from concurrent.futures import ThreadPoolExecutor

    patient = bearer("patient", patient="185067511204554")
    author = bearer("doctor", sub="899900000046")
    assert client.post("/fhir/Consent", data=json.dumps(decision("professional", "permit", "899900000046")),
                       headers={"Content-Type": "application/fhir+json", **patient}).status_code == 201
    unmask = [{"op": "replace", "path": "/securityLabel/0", "value": {"coding": [
        {"system": codes.CONFIDENTIALITY_SYSTEM, "code": "N"}]}}]
    unarchive = [{"op": "add", "path": ARCHIVE[0]["path"], "value": False}]
    changes = [(patient, MASK), (patient, unmask), (author, ARCHIVE), (author, unarchive)]

    def client_run(seed: int) -> list[int]:
        gateway, chance = (client, second_gateway)[seed % 2], random.Random(seed)
        statuses = []
        for _ in range(8):
            who, patch = chance.choice(changes)
            statuses.append(gateway.patch(f"/fhir/{document}", data=json.dumps(patch),
                                          headers={**PATCH, **who}).status_code)
        return statuses

    with ThreadPoolExecutor(6) as pool:
        statuses = [status for run in pool.map(client_run, range(6)) for status in run]
    assert set(statuses) <= {200, 409}, statuses
    history = client.get(f"/fhir/{document}/_history", query_string={"_count": "100"}, headers=patient).json
    versions = sorted((entry["resource"] for entry in history["entry"]), key=lambda r: int(r["meta"]["versionId"]))
    assert [int(r["meta"]["versionId"]) for r in versions] == list(range(1, len(versions) + 1))
    for before, after in zip(versions, versions[1:]):
        changed = {key for key in (set(before) | set(after)) - {"meta"} if before.get(key) != after.get(key)}
        assert changed in ({"securityLabel"}, {"extension"}), (after["meta"]["versionId"], changed)


def test_two_messages_for_one_patient_at_once_both_keep_their_identifiers(client, second_gateway, database, backend,
                                                                         bearer, monkeypatch):
    """PostgreSQL, two gateways: two hospitals' A31 for one patient, each adding its own IPP, both
    having found the patient before either wrote. The Patient is locked for the first update, and
    the second is made from what the first wrote: it keeps both IPPs, where it was made from the
    version before and dropped the first one's (the identifier still claimed, the Patient without
    it)."""
    if backend == "sqlite":
        pytest.skip("SQLite has one writer: the two transactions cannot overlap")
    from gateway.services import patients

    adt = (SAMPLES / "hl7v2" / "adt-a28-moreau-hugo.hl7").read_bytes().decode()
    feed = {"Content-Type": "x-application/hl7-v2+er7", **bearer("system", sub="hospital")}
    assert b"|AA|" in client.post("/hl7v2", data=adt.encode(), headers=feed).data

    def a31(control: str, ipp: str, authority: str) -> bytes:
        return (adt.replace("ADT^A28^ADT_A28|ADT0004", f"ADT^A31^ADT_A05|{control}")
                .replace("900000006^^^CH-SAINT-AUBIN&1.2.250.1.213.1.1.9.1001&ISO^PI",
                         f"{ipp}^^^{authority}&ISO^PI")).encode()

    both_found = threading.Barrier(2, timeout=60)
    waited, find = set(), patients.find_patient

    def find_then_meet(uow, ids):
        found = find(uow, ids)
        if threading.get_ident() not in waited:   # both have found the patient; neither has read it
            waited.add(threading.get_ident())
            both_found.wait()
        return found

    monkeypatch.setattr(patients, "find_patient", find_then_meet)
    messages = {client: a31("A31-1", "111", "CH-NORD&1.2.250.1.213.1.1.9.1002"),
                second_gateway: a31("A31-2", "222", "CH-SUD&1.2.250.1.213.1.1.9.1003")}
    acks = at_once({gateway: lambda gateway=gateway, message=message: gateway.post(
        "/hl7v2", data=message, headers=feed).data for gateway, message in messages.items()}, both_found)
    monkeypatch.undo()
    assert all(b"MSA|AA|" in ack for ack in acks.values()), acks
    attend_all(database[0])
    found = client.get("/fhir/Patient", query_string={"identifier": "urn:oid:1.2.250.1.213.1.4.10|116037505612342"}).json
    values = {i["value"] for i in found["entry"][0]["resource"]["identifier"]}
    assert {"111", "222", "900000006"} <= values, values
