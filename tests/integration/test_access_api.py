"""Patient-controlled access through the API, on both backends: consents, masking, emergency access,
closed records, roles that see nothing, and the audit trail each request leaves."""
import json

import pytest
from sqlalchemy import event, func, select, update

import profiles
from conftest import GP, sample
from gateway.access.audit import verify_chain
from gateway.services.consents import decision
from gateway.mapping import codes
from gateway.storage.schema import audit_chain, raw_inputs, resources

XML = {"Content-Type": "application/xml"}
FHIR = {"Content-Type": "application/fhir+json"}
PATCH = {"Content-Type": "application/json-patch+json"}
MARTIN, LEFEVRE = "185067511204554", "292086938701277"
INTERNIST, BIOLOGIST, SURGEON = "899900000012", "899900000046", "899900000020"
RADIOLOGIST = "899900000038"   # Dr FAURE, who wrote the MRI report and its new version


@pytest.fixture
def world(client, bearer):
    """Paul Martin's two documents and Claire Lefevre's one, fed by a hospital system."""
    system = bearer("system", sub="hospital")
    docs = {name: client.post("/cda", data=sample(name), headers={**XML, **system}).json
            for name in ("ldl-ses-martin.xml", "cr-biologie-martin.xml", "cr-hospitalisation-lefevre.xml")}
    return {"ldl": docs["ldl-ses-martin.xml"]["id"], "bio": docs["cr-biologie-martin.xml"]["id"],
            "lefevre": docs["cr-hospitalisation-lefevre.xml"]["id"],
            "martin_patient": docs["ldl-ses-martin.xml"]["subject"]["reference"].split("/")[1]}


def consent(kind, effect, professional=None, status="active", res_id=None):
    return json.dumps({**decision(kind, effect, professional), "status": status, **({"id": res_id} if res_id else {})})


def document_ids(client, headers, **params):
    response = client.get("/fhir/DocumentReference", query_string=params, headers=headers)
    assert response.status_code == 200, response.json
    return {e["resource"]["id"] for e in response.json.get("entry", [])}


def audit_count(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(resources)
                            .where(resources.c.res_type == "AuditEvent")).scalar_one()


def test_without_a_valid_token_nothing_but_the_capability_statement(client, world):
    anonymous = client.application.test_client()
    assert anonymous.get("/fhir/metadata").status_code == 200
    for path in ("/fhir/DocumentReference", f"/fhir/DocumentReference/{world['ldl']}", "/fhir/AuditEvent"):
        response = anonymous.get(path)
        assert response.status_code == 401 and response.json["issue"][0]["code"] == "login"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert anonymous.get("/fhir/Patient", headers={"Authorization": "Bearer x.y.z"}).status_code == 401


def test_a_patient_sees_their_record_only(client, bearer, world):
    martin = bearer("patient", patient=MARTIN)
    assert document_ids(client, martin) == {world["ldl"], world["bio"]}
    assert client.get(f"/fhir/DocumentReference/{world['lefevre']}", headers=martin).status_code == 404
    assert document_ids(client, martin, **{"patient.identifier": f"urn:oid:1.2.250.1.213.1.4.10|{LEFEVRE}"}) == set()
    # The same answer as for a document that does not exist.
    missing = client.get("/fhir/DocumentReference/does-not-exist", headers=martin)
    hidden = client.get(f"/fhir/DocumentReference/{world['lefevre']}", headers=martin)
    assert missing.status_code == hidden.status_code == 404
    assert missing.json["issue"][0]["code"] == hidden.json["issue"][0]["code"] == "not-found"


def test_a_patient_s_request_looks_up_their_record_once_and_its_trail_names_them_by_it(app, client, bearer, world):
    """Whether the record is closed to them, and who they are in the trail of what they read, come
    from one look-up of their token's Patient: a look-up each cost a patient's search 0.2 ms of its
    3.6."""
    engine, looked_up = app.config["ENGINE"], []

    def note(_conn, _cursor, statement, *_):
        if statement.startswith("SELECT ui.res_id"):   # a look-up of its own, not a search's filter
            looked_up.append(statement)
    event.listen(engine, "before_cursor_execute", note)
    try:
        assert document_ids(client, bearer("patient", patient=MARTIN), status="current") == {world["ldl"], world["bio"]}
    finally:
        event.remove(engine, "before_cursor_execute", note)
    assert len(looked_up) == 1
    with engine.connect() as conn:
        trail = [json.loads(body) for body in conn.execute(select(resources.c.body).where(
            resources.c.res_type == "AuditEvent", resources.c.patient_id == world["martin_patient"])).scalars()]
    searches = [e for e in trail if e["subtype"][0]["code"] == "search-type"]
    assert len(searches) == 1 and searches[0]["agent"][0]["who"] == {"reference": f"Patient/{world['martin_patient']}"}


def test_a_token_naming_the_patient_s_ins_in_groups_names_the_same_record(client, bearer, world):
    """An INS is printed in groups ("1 85 06 75 112 045 54", with spaces or dots), and an identity
    provider may write it so: it named no record, and its holder saw an empty one."""
    for written in ("1 85 06 75 112 045 54", "1.85.06.75.112.045.54"):
        assert document_ids(client, bearer("patient", sub="holder", patient=written)) == {world["ldl"], world["bio"]}
        emergency = bearer("doctor", sub=INTERNIST, purpose="emergency", patient=written)
        assert document_ids(client, emergency) == {world["ldl"], world["bio"]}


def test_a_consent_with_a_modifier_extension_is_refused_not_applied_without_it(client, bearer, world):
    """A modifier extension changes what its element means (here, perhaps, "not this professional"):
    applied without it, the decision could be the opposite of the patient's."""
    martin, internist = bearer("patient", patient=MARTIN), bearer("doctor", sub=INTERNIST)
    body = json.loads(consent("professional", "permit", INTERNIST))
    body["provision"]["modifierExtension"] = [{"url": "http://example.org/fhir/StructureDefinition/except",
                                               "valueBoolean": True}]
    refused = client.post("/fhir/Consent", data=json.dumps(body), headers={**FHIR, **martin})
    assert refused.status_code == 422 and refused.json["issue"][0]["code"] == "not-supported", refused.json
    assert document_ids(client, internist) == set()


@pytest.mark.parametrize("element, value", [
    ("provision", [{"type": "deny", "class": [{"system": "http://hl7.org/fhir/resource-types",
                                               "code": "DocumentReference"}]}]),
    ("data", [{"meaning": "instance", "reference": {"reference": "DocumentReference/x"}}]),
    ("purpose", [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}]),
], ids=["an exception", "the data it covers", "a purpose"])
def test_a_consent_whose_provision_says_more_than_the_rules_apply_is_refused(client, bearer, world, element, value):
    """An authorisation which excepted some documents was stored and applied without them: the
    professional read the whole record. A decision states its kind, its effect, its actors (and an
    authorisation its period); one that says more is refused, and grants nothing."""
    martin, internist = bearer("patient", patient=MARTIN), bearer("doctor", sub=INTERNIST)
    body = json.loads(consent("professional", "permit", INTERNIST))
    body["provision"][element] = value
    refused = client.post("/fhir/Consent", data=json.dumps(body), headers={**FHIR, **martin})
    assert refused.status_code == 422, refused.json
    assert (refused.json["issue"][0]["code"], refused.json["issue"][0]["expression"]) == \
        ("not-supported", [f"Consent.provision.{element}"])
    assert document_ids(client, internist) == set()
    granted = client.post("/fhir/Consent", data=consent("professional", "permit", INTERNIST),
                          headers={**FHIR, **martin})
    assert granted.status_code == 201, granted.json
    body["id"] = granted.json["id"]
    changed = client.put(f"/fhir/Consent/{granted.json['id']}", data=json.dumps(body), headers={**FHIR, **martin})
    assert changed.status_code == 422 and changed.json["issue"][0]["code"] == "not-supported", changed.json


def test_an_authorisation_given_for_a_period_holds_within_it(client, bearer, world, monkeypatch):
    """An app that authorised a professional until a date was refused (a period was not applied; kept
    and ignored before that, it authorised for ever). An authorisation of professionals holds from its
    period's start to its end, in the SQL of every read; a block, and the other kinds, hold until
    revoked, and a period on them is refused. One whose period ended already is refused."""
    from datetime import date, timedelta

    martin = bearer("patient", patient=MARTIN)
    internist, surgeon = bearer("doctor", sub=INTERNIST), bearer("doctor", sub=SURGEON)
    both = {world["ldl"], world["bio"]}
    tomorrow, next_year = date.today() + timedelta(days=1), date.today() + timedelta(days=366)

    def post(kind: str, effect: str, professional: str | None, period: dict | None):
        body = json.loads(consent(kind, effect, professional))
        if period:
            body["provision"]["period"] = period
        return client.post("/fhir/Consent", data=json.dumps(body), headers={**FHIR, **martin})

    until_tomorrow = post("professional", "permit", INTERNIST, {"end": tomorrow.isoformat()})
    assert until_tomorrow.status_code == 201, until_tomorrow.json
    assert document_ids(client, internist) == both
    assert post("professional", "permit", INTERNIST, {"end": tomorrow.isoformat()}).status_code == 200
    from_next_year = post("professional", "permit", SURGEON, {"start": next_year.isoformat()})
    assert from_next_year.status_code == 201 and document_ids(client, surgeon) == set()

    # The day after tomorrow, the internist reads nothing; next year, the surgeon reads.
    later = (date.today() + timedelta(days=2)).isoformat() + "T12:00:00.000000"
    monkeypatch.setattr("gateway.access.context.index_now", lambda: later)
    assert document_ids(client, internist) == set()
    monkeypatch.setattr("gateway.access.context.index_now", lambda: next_year.isoformat() + "T12:00:00.000000")
    assert document_ids(client, surgeon) == both
    monkeypatch.undo()
    # An ended authorisation of two, narrowed by a new decision about one, keeps its period: it was
    # checked again as if given now, and the new decision refused.
    pair = json.loads(consent("professional", "permit", RADIOLOGIST))
    pair["provision"]["actor"].append({**pair["provision"]["actor"][0], "reference": {"identifier": {
        "system": "urn:oid:1.2.250.1.71.4.2.1", "value": BIOLOGIST}}})
    pair["provision"]["period"] = {"end": tomorrow.isoformat()}
    pair = client.post("/fhir/Consent", data=json.dumps(pair), headers={**FHIR, **martin}).json
    monkeypatch.setattr("gateway.services.consents.index_now", lambda: later)
    assert post("professional", "deny", RADIOLOGIST, None).status_code == 201
    monkeypatch.undo()
    narrowed = client.get(f"/fhir/Consent/{pair['id']}", headers=martin).json
    assert [a["reference"]["identifier"]["value"] for a in narrowed["provision"]["actor"]] == [BIOLOGIST]
    assert narrowed["provision"]["period"] == {"end": tomorrow.isoformat()}

    # Another period for the same professional is another decision: it replaces the first.
    longer = post("professional", "permit", INTERNIST, {"start": "2020-01-01", "end": next_year.isoformat()})
    assert longer.status_code == 201
    assert client.get(f"/fhir/Consent/{until_tomorrow.json['id']}", headers=martin).json["status"] == "inactive"
    for kind, effect, professional in (("professional", "deny", SURGEON), ("attending-physician", "permit", SURGEON),
                                       ("emergency-access", "deny", None)):
        refused = post(kind, effect, professional, {"end": next_year.isoformat()})
        assert (refused.status_code, refused.json["issue"][0]["expression"]) == (422, ["Consent.provision.period"])
    ended = post("professional", "permit", SURGEON, {"start": "2020-01-01", "end": "2020-02-01"})
    assert (ended.status_code, ended.json["issue"][0]["expression"]) == (422, ["Consent.provision.period.end"])
    backwards = post("professional", "permit", SURGEON, {"start": next_year.isoformat(), "end": tomorrow.isoformat()})
    assert backwards.status_code == 422, backwards.json
    assert post("professional", "permit", SURGEON, {"end": "31/12/2030"}).status_code in (400, 422)


def test_a_consent_naming_an_actor_otherwise_than_by_identifier_is_refused(client, bearer, world):
    """A block of two professionals, one named by identifier and one by a literal reference, was
    kept and blocked the first only."""
    martin = bearer("patient", patient=MARTIN)
    body = json.loads(consent("professional", "deny", INTERNIST))
    body["provision"]["actor"].append({**body["provision"]["actor"][0], "reference": {"reference": "Practitioner/x"}})
    refused = client.post("/fhir/Consent", data=json.dumps(body), headers={**FHIR, **martin})
    assert refused.status_code == 422 and refused.json["issue"][0]["expression"] == ["Consent.provision.actor"], \
        refused.json


def test_consents_authorise_block_and_revoke(client, bearer, world):
    martin, internist = bearer("patient", patient=MARTIN), bearer("doctor", sub=INTERNIST)
    assert document_ids(client, internist) == set()  # no consent, no access
    granted = client.post("/fhir/Consent", data=consent("professional", "permit", INTERNIST), headers={**FHIR, **martin})
    assert granted.status_code == 201, granted.json
    assert document_ids(client, internist) == {world["ldl"], world["bio"]}
    blocked = client.post("/fhir/Consent", data=consent("professional", "deny", INTERNIST), headers={**FHIR, **martin})
    assert document_ids(client, internist) == set()
    # The block replaced the authorisation (as the patient space's does): lifted, it leaves none.
    replaced = client.get(f"/fhir/Consent/{granted.json['id']}", headers=martin).json
    assert (replaced["status"], replaced["meta"]["versionId"]) == ("inactive", "2")
    revoked = client.put(f"/fhir/Consent/{blocked.json['id']}", headers={**FHIR, **martin},
                         data=consent("professional", "deny", INTERNIST, status="inactive", res_id=blocked.json["id"]))
    assert revoked.status_code == 200 and revoked.json["meta"]["versionId"] == "2"
    assert document_ids(client, internist) == set()
    history = client.get(f"/fhir/Consent/{blocked.json['id']}/_history", headers=martin).json
    assert [e["resource"]["status"] for e in history["entry"]] == ["inactive", "active"]
    assert client.post("/fhir/Consent", data=consent("professional", "permit", INTERNIST),
                       headers={**FHIR, **martin}).status_code == 201
    assert document_ids(client, internist) == {world["ldl"], world["bio"]}
    # Only the patient decides, and only for their own record.
    lefevre = bearer("patient", patient=LEFEVRE)
    assert client.put(f"/fhir/Consent/{granted.json['id']}", data=consent("professional", "deny", INTERNIST,
                                                                           res_id=granted.json["id"]),
                      headers={**FHIR, **lefevre}).status_code == 404
    # The body names the resource it updates (R4): one without its id was taken.
    unnamed = client.put(f"/fhir/Consent/{granted.json['id']}", data=consent("professional", "deny", INTERNIST),
                         headers={**FHIR, **martin})
    assert unnamed.status_code == 400 and unnamed.json["issue"][0]["expression"] == ["Consent.id"]
    assert client.post("/fhir/Consent", data=consent("professional", "permit", INTERNIST),
                       headers={**FHIR, **internist}).status_code == 403
    bad = client.post("/fhir/Consent", data=consent("professional", "permit"), headers={**FHIR, **martin})
    assert bad.status_code == 422 and bad.json["issue"][0]["expression"] == ["Consent.provision.actor"]


def test_a_decision_posted_twice_is_kept_once_and_revoked_once(client, bearer, world):
    """A patient's app that posts its decision again (its answer lost) kept two authorisations:
    revoking one, as the app then does, left the other in force, and the professional still read
    the record. A decision in force already (the same kind, effect and actors) is that Consent:
    200, nothing new. Another decision about the same professional is new."""
    martin, internist = bearer("patient", patient=MARTIN), bearer("doctor", sub=INTERNIST)
    body = consent("professional", "permit", INTERNIST)
    first = client.post("/fhir/Consent", data=body, headers={**FHIR, **martin})
    assert first.status_code == 201, first.json
    again = client.post("/fhir/Consent", data=body, headers={**FHIR, **martin})
    assert again.status_code == 200, again.json
    assert (again.json["id"], again.json["meta"]["versionId"]) == (first.json["id"], "1")
    active = client.get("/fhir/Consent", headers=martin, query_string={"status": "active"}).json
    assert [e["resource"]["id"] for e in active["entry"]] == [first.json["id"]]

    revoked = client.put(f"/fhir/Consent/{first.json['id']}", headers={**FHIR, **martin},
                         data=consent("professional", "permit", INTERNIST, status="inactive", res_id=first.json["id"]))
    assert revoked.status_code == 200, revoked.json
    assert document_ids(client, internist) == set()
    # Revoked again (the answer lost, a second click): it is revoked, and its history says it once;
    # the body as the gateway answered it (dated, with its meta) is the same decision too.
    for again in (consent("professional", "permit", INTERNIST, status="inactive", res_id=first.json["id"]),
                  json.dumps(revoked.json)):
        same = client.put(f"/fhir/Consent/{first.json['id']}", headers={**FHIR, **martin}, data=again)
        assert same.status_code == 200 and same.json["meta"] == revoked.json["meta"], same.json
    stale = client.put(f"/fhir/Consent/{first.json['id']}", headers={**FHIR, **martin, "If-Match": 'W/"1"'},
                       data=json.dumps(revoked.json))
    assert stale.status_code == 412, stale.json
    history = client.get(f"/fhir/Consent/{first.json['id']}/_history", headers=martin).json
    assert [e["resource"]["status"] for e in history["entry"]] == ["inactive", "active"]

    both = json.loads(body)
    both["provision"]["actor"].append({**both["provision"]["actor"][0], "reference": {"identifier": {
        "system": "urn:oid:1.2.250.1.71.4.2.1", "value": SURGEON}}})
    for other in (body, consent("professional", "deny", INTERNIST), json.dumps(both)):
        assert client.post("/fhir/Consent", data=other, headers={**FHIR, **martin}).status_code == 201


def test_a_patient_s_latest_decision_replaces_the_earlier_ones_it_decides_again(client, bearer, world):
    """A patient's app authorised the internist, blocked them, then authorised them again: the
    second authorisation was the first one, still in force (200), and the block beside it kept the
    internist out while the app showed them authorised. The patient space revoked the earlier
    decision itself, and only there. Now each new decision revokes, with it, those it decides
    again, whatever made it: about a professional it names, the attending physician, an opposition."""
    martin, internist = bearer("patient", patient=MARTIN), bearer("doctor", sub=INTERNIST)
    both = {world["ldl"], world["bio"]}

    def post(kind: str, effect: str, professional: str | None = None) -> dict:
        answer = client.post("/fhir/Consent", data=consent(kind, effect, professional), headers={**FHIR, **martin})
        assert answer.status_code == 201, answer.json
        return answer.json

    def status(consent_id: str) -> str:
        return client.get(f"/fhir/Consent/{consent_id}", headers=martin).json["status"]

    granted = post("professional", "permit", INTERNIST)
    blocked = post("professional", "deny", INTERNIST)
    assert document_ids(client, internist) == set() and status(granted["id"]) == "inactive"
    again = post("professional", "permit", INTERNIST)
    assert document_ids(client, internist) == both
    assert (status(blocked["id"]), status(again["id"])) == ("inactive", "active")
    # One attending physician: the new one replaces the earlier one, who still reads as authorised.
    gp = post("attending-physician", "permit", SURGEON)
    post("attending-physician", "permit", INTERNIST)
    assert status(gp["id"]) == "inactive"
    assert document_ids(client, bearer("doctor", sub=SURGEON)) == set()
    # An opposition to emergency access, then the app's permit: the emergency doctor reads again.
    emergency = bearer("doctor", sub=BIOLOGIST, purpose="emergency", patient=MARTIN)
    read_in_emergency = document_ids(client, emergency)
    assert read_in_emergency
    opposed = post("emergency-access", "deny")
    assert document_ids(client, emergency) == set()
    post("emergency-access", "permit")
    assert status(opposed["id"]) == "inactive"
    assert document_ids(client, emergency) == read_in_emergency
    # Another professional's decisions stay.
    surgeon = post("professional", "deny", SURGEON)
    post("professional", "permit", RADIOLOGIST)
    assert status(surgeon["id"]) == "active"


def test_a_decision_an_app_makes_active_again_or_about_another_professional_replaces_those_it_decides(
        client, bearer, world):
    """A PUT makes a decision as a POST does: the app that re-activated its authorisation of the
    internist (an inactive Consent of the history, sent back with status active) got 200, and the
    block that had replaced it stayed in force beside it; the internist read nothing."""
    martin, internist = bearer("patient", patient=MARTIN), bearer("doctor", sub=INTERNIST)
    surgeon = bearer("doctor", sub=SURGEON)

    def send(method: str, body: str, path: str = "/fhir/Consent") -> dict:
        answer = client.open(path, method=method, data=body, headers={**FHIR, **martin})
        assert answer.status_code in (200, 201), answer.json
        return answer.json

    def status(consent_id: str) -> str:
        return client.get(f"/fhir/Consent/{consent_id}", headers=martin).json["status"]

    granted = send("POST", consent("professional", "permit", INTERNIST))
    blocked = send("POST", consent("professional", "deny", INTERNIST))
    assert status(granted["id"]) == "inactive"
    send("PUT", consent("professional", "permit", INTERNIST, res_id=granted["id"]), f"/fhir/Consent/{granted['id']}")
    assert (status(granted["id"]), status(blocked["id"])) == ("active", "inactive")
    assert document_ids(client, internist) == {world["ldl"], world["bio"]}
    # The surgeon's block, then the app turns the internist's authorisation into the surgeon's.
    held = send("POST", consent("professional", "deny", SURGEON))
    send("PUT", consent("professional", "permit", SURGEON, res_id=granted["id"]), f"/fhir/Consent/{granted['id']}")
    assert status(held["id"]) == "inactive" and document_ids(client, surgeon) == {world["ldl"], world["bio"]}
    assert document_ids(client, internist) == set()
    # Revoking a decision revokes nothing else.
    other = send("POST", consent("professional", "permit", INTERNIST))
    send("PUT", consent("professional", "permit", SURGEON, status="inactive", res_id=granted["id"]),
         f"/fhir/Consent/{granted['id']}")
    assert status(other["id"]) == "active" and document_ids(client, surgeon) == set()


def test_a_decision_about_one_of_the_professionals_an_earlier_one_names_replaces_it_for_them(client, bearer, world):
    """An app blocked the internist and the surgeon in one decision, then authorised the internist:
    201, and the internist read nothing, the block of both still in force beside the authorisation.
    The earlier decision now names only the professionals the new one does not (a new version of
    it; the history keeps the first), whatever their effects."""
    martin = bearer("patient", patient=MARTIN)
    internist, surgeon = bearer("doctor", sub=INTERNIST), bearer("doctor", sub=SURGEON)
    radiologist = bearer("doctor", sub=RADIOLOGIST)
    both = {world["ldl"], world["bio"]}

    def post(effect: str, *professionals: str) -> dict:
        body = decision("professional", effect, professionals[0])
        body["provision"]["actor"] = [{**body["provision"]["actor"][0], "reference": {"identifier": {
            "system": "urn:oid:1.2.250.1.71.4.2.1", "value": professional}}} for professional in professionals]
        answer = client.post("/fhir/Consent", data=json.dumps(body), headers={**FHIR, **martin})
        assert answer.status_code == 201, answer.json
        return answer.json

    def named(consent_id: str) -> tuple[str, list[str]]:
        current = client.get(f"/fhir/Consent/{consent_id}", headers=martin).json
        return current["status"], [actor["reference"]["identifier"]["value"]
                                   for actor in current["provision"].get("actor", [])]

    blocked = post("deny", INTERNIST, SURGEON)
    post("permit", INTERNIST)
    assert document_ids(client, internist) == both and document_ids(client, surgeon) == set()
    assert named(blocked["id"]) == ("active", [SURGEON])
    history = client.get(f"/fhir/Consent/{blocked['id']}/_history", headers=martin).json
    assert [len(e["resource"]["provision"]["actor"]) for e in history["entry"]] == [1, 2]
    # An authorisation of three, then a block of one: the two others still read.
    granted = post("permit", SURGEON, RADIOLOGIST, INTERNIST)
    assert named(blocked["id"]) == ("inactive", [SURGEON])
    post("deny", RADIOLOGIST)
    assert named(granted["id"]) == ("active", [SURGEON, INTERNIST])
    assert (document_ids(client, surgeon), document_ids(client, internist), document_ids(client, radiologist)) \
        == (both, both, set())
    # Deciding again about every professional a decision names replaces it whole.
    post("deny", INTERNIST, SURGEON)
    assert named(granted["id"]) == ("inactive", [SURGEON, INTERNIST])
    active = client.get("/fhir/Consent", headers=martin, query_string={"status": "active"}).json
    assert sorted(len(e["resource"]["provision"]["actor"]) for e in active["entry"]) == [1, 2]


def test_a_blocked_organisation_blocks_whoever_acts_for_it(client, bearer, world):
    """The patient's app authorised the internist, then blocked the hospital where they work (a
    Consent naming its FINESS): 201, and the internist, acting for it, still read the record. A
    block of an organisation now refuses whoever acts for it (their token's org), by name authorised
    or not, in care and in an emergency; acting elsewhere, the internist reads as authorised."""
    hospital = "750712184"
    martin = bearer("patient", patient=MARTIN)
    both = {world["ldl"], world["bio"]}
    assert client.post("/fhir/Consent", data=consent("professional", "permit", INTERNIST),
                       headers={**FHIR, **martin}).status_code == 201
    at_the_hospital = bearer("doctor", sub=INTERNIST, org=hospital)
    in_emergency = bearer("doctor", sub=INTERNIST, org=hospital, purpose="emergency", patient=MARTIN)
    assert document_ids(client, at_the_hospital) == both and document_ids(client, in_emergency) == both
    block = decision("professional", "deny", INTERNIST)
    block["provision"]["actor"][0]["reference"]["identifier"] = {"system": codes.FINESS_SYSTEM, "value": hospital}
    assert client.post("/fhir/Consent", data=json.dumps(block), headers={**FHIR, **martin}).status_code == 201
    assert document_ids(client, at_the_hospital) == set() and document_ids(client, in_emergency) == set()
    assert client.get(f"/fhir/DocumentReference/{world['ldl']}", headers=at_the_hospital).status_code == 404
    assert document_ids(client, bearer("doctor", sub=INTERNIST)) == both
    assert document_ids(client, bearer("doctor", sub=INTERNIST, org="130783236")) == both


def test_a_decision_posted_with_if_none_exist_is_made_only_when_its_search_finds_none(client, bearer, world):
    """A client's conditional create (If-None-Exist) of a Consent was made whatever its search found:
    an app that meant to permit emergency access only where no decision on it existed lifted the
    patient's opposition. The search runs among the requester's resources: one found is the answer
    (200, nothing made), several 412, none the decision made."""
    martin = bearer("patient", patient=MARTIN)
    opposed = client.post("/fhir/Consent", data=consent("emergency-access", "deny"), headers={**FHIR, **martin})
    assert opposed.status_code == 201
    condition = "category=urn:dmp-gateway:consent-kind|emergency-access&status=active"
    kept = client.post("/fhir/Consent", data=consent("emergency-access", "permit"),
                       headers={**FHIR, **martin, "If-None-Exist": condition})
    assert kept.status_code == 200 and kept.json["id"] == opposed.json["id"], kept.json
    assert client.get(f"/fhir/Consent/{opposed.json['id']}", headers=martin).json["status"] == "active"
    made = client.post("/fhir/Consent", data=consent("regulation-access", "deny"), headers={
        **FHIR, **martin, "If-None-Exist": "category=urn:dmp-gateway:consent-kind|regulation-access&status=active"})
    assert made.status_code == 201, made.json
    for bad in ("", "_count=1", "Patient?identifier=x"):
        assert client.post("/fhir/Consent", data=consent("record", "deny"),
                           headers={**FHIR, **martin, "If-None-Exist": bad}).status_code == 400, bad
    assert client.post("/fhir/Consent", data=consent("record", "deny"),
                       headers={**FHIR, **martin, "If-None-Exist": "status=active"}).status_code == 412
    statement = client.get("/fhir/metadata").json["rest"][0]["resource"]
    assert next(r for r in statement if r["type"] == "Consent")["conditionalCreate"] is True


def test_a_structure_named_by_its_idnatst_of_a_finess_is_that_finess(client, bearer, world):
    """The CI-SIS names a structure by its IdNatSt, 1 + its FINESS. An authorisation of a clinic so
    named was answered 201 and applied to no one, a block too: the rules compared it with the FINESS
    a professional's token names. It is that FINESS now, for the rules and for the decisions that
    replace one another, and a token whose org is the clinic's IdNatSt acts for that FINESS: it missed
    every decision about the FINESS, a block included. An IdNatSt of another kind (a cabinet's SIRET)
    is compared as given."""
    martin = bearer("patient", patient=MARTIN)
    at_the_clinic = bearer("doctor", sub=SURGEON, org="330780000")
    both = {world["ldl"], world["bio"]}

    def decide(effect: str, system: str, value: str):
        body = decision("professional", effect, SURGEON)
        body["provision"]["actor"][0]["reference"]["identifier"] = {"system": system, "value": value}
        return client.post("/fhir/Consent", data=json.dumps(body), headers={**FHIR, **martin})

    idnatst = f"urn:oid:{codes.IDNATST_OID}"
    permit = decide("permit", idnatst, "1330780000")
    assert permit.status_code == 201 and document_ids(client, at_the_clinic) == both
    assert decide("deny", codes.FINESS_SYSTEM, "330780000").status_code == 201
    assert client.get(f"/fhir/Consent/{permit.json['id']}", headers=martin).json["status"] == "inactive"
    assert document_ids(client, at_the_clinic) == set()
    assert decide("permit", codes.FINESS_SYSTEM, "330780000").status_code == 201
    assert document_ids(client, bearer("doctor", sub=SURGEON, org="1330780000")) == both
    assert decide("deny", idnatst, "1330780000").status_code == 201
    assert document_ids(client, at_the_clinic) == set()
    assert document_ids(client, bearer("doctor", sub=SURGEON, org="1330780000")) == set()
    cabinet = bearer("doctor", sub=SURGEON, org="312345678901234")   # 3 + SIRET
    assert decide("permit", idnatst, "312345678901234").status_code == 201
    assert document_ids(client, cabinet) == both
    assert decide("deny", idnatst, "312345678901234").status_code == 201
    assert document_ids(client, cabinet) == set()
    # An app looks for the decisions about the clinic under either spelling, and finds the block
    # written in the other: a search by one missed them.
    for system, value in ((codes.FINESS_SYSTEM, "330780000"), (idnatst, "1330780000")):
        found = client.get("/fhir/Consent", headers=martin,
                           query_string={"actor": f"{system}|{value}", "status": "active"}).json
        assert [e["resource"]["provision"]["type"] for e in found["entry"]] == ["deny"], (system, found)


def test_a_decision_posted_twice_at_once_is_kept_once(client, second_gateway, bearer, world, monkeypatch):
    """The same decision sent through two gateways at once, each having read the record before
    either wrote: one Consent is kept, and both answers name it."""
    import threading

    from conftest import at_once
    from gateway.access.writes import Write
    from gateway.storage.repository import Repository

    both_read = threading.Barrier(2, timeout=60)
    unit_of_work = Repository.unit_of_work

    def meet_then_write(self, permission):
        if permission == Write.CONSENT:
            both_read.wait()
        return unit_of_work(self, permission)
    monkeypatch.setattr(Repository, "unit_of_work", meet_then_write)
    martin = bearer("patient", patient=MARTIN)
    answers = at_once({name: lambda gateway=gateway: gateway.post(
        "/fhir/Consent", data=consent("professional", "permit", INTERNIST), headers={**FHIR, **martin})
        for name, gateway in (("first", client), ("second", second_gateway))}, both_read)
    monkeypatch.undo()
    assert sorted(answer.status_code for answer in answers.values()) == [200, 201], \
        {name: answer.data[:300] for name, answer in answers.items()}
    assert answers["first"].json["id"] == answers["second"].json["id"]
    assert client.get("/fhir/Consent", headers=martin, query_string={"status": "active"}).json["total"] == 1


def test_a_consent_is_checked_as_fhir_as_the_gateway_completes_it(client, bearer, world):
    """A patient's Consent is checked as FHIR once the gateway has given it its scope, category,
    patient and policyRule. Before, one sent without scope (as the gateway's own forms and kit send
    it) skipped FHIR's checks of what a client sends: a uri with a space was kept, and failed the
    official check; and one sent with its scope but no policyRule was refused for ppc-1, which the
    policyRule the gateway gives it meets."""
    from gateway.fhir.formats import to_xml

    martin = bearer("patient", patient=MARTIN)
    spaced = decision("professional", "permit", INTERNIST)
    spaced["provision"]["actor"][0]["role"]["coding"][0]["system"] += " "
    refused = client.post("/fhir/Consent", data=json.dumps(spaced), headers={**FHIR, **martin})
    assert refused.status_code == 422, refused.data[:300]
    assert refused.json["issue"][0]["expression"] == ["/provision/actor/0/role/coding/0/system"]

    def scoped(professional: str) -> dict:
        return {**decision("professional", "permit", professional), "scope": {"coding": [
            {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]}}
    xml = {"Content-Type": "application/fhir+xml", **martin}
    kept = [client.post("/fhir/Consent", data=json.dumps(scoped(INTERNIST)), headers={**FHIR, **martin}),
            client.post("/fhir/Consent", data=to_xml(scoped(BIOLOGIST)), headers=xml)]
    assert [answer.status_code for answer in kept] == [201, 201], [answer.data[:300] for answer in kept]
    assert all(answer.json["policyRule"]["coding"][0]["code"] == "OPTIN" for answer in kept)
    checked = profiles.Collected()
    for answer in kept:
        checked.add(answer.json)
    if profiles.available():
        assert not checked.errors()


def label_position(docref: dict, code: str) -> int:
    return next(i for i, label in enumerate(docref["securityLabel"]) if label["coding"][0]["code"] == code)


def test_masking_hides_a_document_from_professionals_but_not_from_the_gp_or_its_author(client, bearer, world):
    martin = bearer("patient", patient=MARTIN)
    for professional in (INTERNIST, BIOLOGIST):
        client.post("/fhir/Consent", data=consent("professional", "permit", professional), headers={**FHIR, **martin})
    client.post("/fhir/Consent", data=consent("attending-physician", "permit", GP), headers={**FHIR, **martin})
    mask = [{"op": "add", "path": "/securityLabel/-",
             "value": {"coding": [{"system": codes.VISIBILITY_SYSTEM, "code": "MASQUE_PS"}]}}]
    masked = client.patch(f"/fhir/DocumentReference/{world['bio']}", data=json.dumps(mask), headers={**PATCH, **martin})
    assert masked.status_code == 200, masked.json
    assert masked.json["meta"]["versionId"] == "2"
    assert document_ids(client, bearer("doctor", sub=INTERNIST)) == {world["ldl"]}
    assert document_ids(client, bearer("doctor", sub=BIOLOGIST)) == {world["ldl"], world["bio"]}  # its author
    assert document_ids(client, bearer("doctor", sub=GP)) == {world["ldl"], world["bio"]}  # the GP sees all
    binary = masked.json["content"][0]["attachment"]["url"].replace("http://gateway.test", "")
    assert client.get(binary, headers=bearer("doctor", sub=INTERNIST)).status_code == 404
    assert client.get(binary, headers=martin).status_code == 200
    # The history keeps the previous labels; unmasking is the reverse patch.
    previous = client.get(f"/fhir/DocumentReference/{world['bio']}/_history/1", headers=martin).json
    assert "MASQUE_PS" not in json.dumps(previous["securityLabel"])
    position = label_position(masked.json, "MASQUE_PS")
    unmask = [{"op": "remove", "path": f"/securityLabel/{position}"}]
    client.patch(f"/fhir/DocumentReference/{world['bio']}", data=json.dumps(unmask), headers={**PATCH, **martin})
    assert document_ids(client, bearer("doctor", sub=INTERNIST)) == {world["ldl"], world["bio"]}


def test_the_patient_s_mask_is_lifted_by_the_patient_only(client, bearer, world):
    """The author of a document may mask it and unmask it, and with the same PATCH lifted the mask
    the patient had set: the professionals the patient authorises read it again. A mask the patient
    set is lifted by the patient (or their representative) only; the author's own, by the author."""
    martin, biologist = bearer("patient", patient=MARTIN), bearer("doctor", sub=BIOLOGIST)
    for professional in (INTERNIST, BIOLOGIST):
        client.post("/fhir/Consent", data=consent("professional", "permit", professional), headers={**FHIR, **martin})
    mask = [{"op": "replace", "path": "/securityLabel/0",
             "value": {"coding": [{"system": codes.VISIBILITY_SYSTEM, "code": "MASQUE_PS"}]}}]
    unmask = [{"op": "replace", "path": "/securityLabel/0", "value": {"coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"}]}}]
    url = f"/fhir/DocumentReference/{world['bio']}"
    assert client.patch(url, data=json.dumps(mask), headers={**PATCH, **martin}).status_code == 200
    refused = client.patch(url, data=json.dumps(unmask), headers={**PATCH, **biologist})
    assert refused.status_code == 403, refused.json
    assert "the patient masked the document from professionals" in refused.json["issue"][0]["diagnostics"]
    assert client.get(url, headers=biologist).json["meta"]["versionId"] == "2"
    assert document_ids(client, bearer("doctor", sub=INTERNIST)) == {world["ldl"]}
    assert client.patch(url, data=json.dumps(unmask), headers={**PATCH, **martin}).status_code == 200
    assert document_ids(client, bearer("doctor", sub=INTERNIST)) == {world["ldl"], world["bio"]}
    for change in (mask, unmask):
        answer = client.patch(url, data=json.dumps(change), headers={**PATCH, **biologist})
        assert answer.status_code == 200, answer.json
    assert document_ids(client, bearer("doctor", sub=INTERNIST)) == {world["ldl"], world["bio"]}


def test_a_replacement_keeps_the_masking_of_the_document_it_replaces(client, bearer):
    """The patient masked a report from professionals; its author sent a new version, whose own
    labels (the feed's) said nothing of it, and every professional the patient authorises read
    it. A replacement keeps the masking and the hiding from legal representatives of what it
    replaces; INVISIBLE_PATIENT is the author's to state again (test_hl7v2_feed's T10)."""
    lefevre, internist = bearer("patient", patient=LEFEVRE), bearer("doctor", sub=INTERNIST)
    radiologist = bearer("doctor", sub=RADIOLOGIST)
    first = client.post("/cda", data=sample("cr-imagerie-irm-lefevre.xml"), headers={**XML, **radiologist}).json
    for professional in (INTERNIST, RADIOLOGIST):
        client.post("/fhir/Consent", data=consent("professional", "permit", professional), headers={**FHIR, **lefevre})
    assert document_ids(client, internist) == {first["id"]}
    mask = [{"op": "add", "path": "/securityLabel/-",
             "value": {"coding": [{"system": codes.VISIBILITY_SYSTEM, "code": "MASQUE_PS"}]}}]
    assert client.patch(f"/fhir/DocumentReference/{first['id']}", data=json.dumps(mask),
                        headers={**PATCH, **lefevre}).status_code == 200
    assert document_ids(client, internist) == set()
    second = client.post("/cda", data=sample("cr-imagerie-irm-lefevre-v2.xml"), headers={**XML, **radiologist})
    assert second.status_code == 201, second.json
    assert [label["coding"][0]["code"] for label in second.json["securityLabel"]] == ["MASQUE_PS", "N"]
    assert document_ids(client, internist) == set()
    assert document_ids(client, radiologist, status="current") == {second.json["id"]}   # its author
    assert document_ids(client, lefevre, status="current") == {second.json["id"]}
    # The mask it took is still the patient's: its author may not lift it, she may.
    position = label_position(second.json, "MASQUE_PS")
    unmask = [{"op": "remove", "path": f"/securityLabel/{position}"}]
    url = f"/fhir/DocumentReference/{second.json['id']}"
    assert client.patch(url, data=json.dumps(unmask), headers={**PATCH, **radiologist}).status_code == 403
    assert document_ids(client, internist) == set()
    assert client.patch(url, data=json.dumps(unmask), headers={**PATCH, **lefevre}).status_code == 200
    assert document_ids(client, internist) == {second.json["id"]}
    if profiles.available():
        checked = profiles.Collected()
        checked.add(client.get(f"/fhir/DocumentReference/{second.json['id']}", headers=lefevre).json)
        assert not checked.errors(), "\n".join(checked.errors())


def test_invisible_to_the_patient_until_announced(client, bearer, world):
    martin, internist = bearer("patient", patient=MARTIN), bearer("doctor", sub=INTERNIST)
    client.post("/fhir/Consent", data=consent("professional", "permit", INTERNIST), headers={**FHIR, **martin})
    hide = [{"op": "add", "path": "/securityLabel/-",
             "value": {"coding": [{"system": codes.VISIBILITY_SYSTEM, "code": "INVISIBLE_PATIENT"}]}}]
    # The patient may not set it; a professional who sees the document may.
    refused = client.patch(f"/fhir/DocumentReference/{world['ldl']}", data=json.dumps(hide), headers={**PATCH, **martin})
    assert refused.status_code == 403
    def trail():
        return client.get("/fhir/AuditEvent", query_string={"entity": f"DocumentReference/{world['ldl']}"},
                          headers=martin).json["total"]

    hidden = client.patch(f"/fhir/DocumentReference/{world['ldl']}", data=json.dumps(hide),
                          headers={**PATCH, **internist})
    assert hidden.status_code == 200
    assert document_ids(client, martin) == {world["bio"]}
    # While it is hidden, its accesses are hidden from the patient's trail too.
    before = trail()
    client.get(f"/fhir/DocumentReference/{world['ldl']}", headers=internist)
    assert trail() == before
    position = label_position(hidden.json, "INVISIBLE_PATIENT")
    announce = [{"op": "remove", "path": f"/securityLabel/{position}"}]
    assert client.patch(f"/fhir/DocumentReference/{world['ldl']}", data=json.dumps(announce),
                        headers={**PATCH, **internist}).status_code == 200
    assert document_ids(client, martin) == {world["ldl"], world["bio"]}
    assert trail() >= before + 3  # announced: the hiding, the read and the announcement appear
    # Nothing but the labels may change.
    other = [{"op": "replace", "path": "/status", "value": "superseded"}]
    assert client.patch(f"/fhir/DocumentReference/{world['ldl']}", data=json.dumps(other),
                        headers={**PATCH, **internist}).status_code == 422


def test_break_the_glass_unless_the_patient_opposed(client, bearer, world, database):
    martin = bearer("patient", patient=MARTIN)
    client.patch(f"/fhir/DocumentReference/{world['bio']}", headers={**PATCH, **martin}, data=json.dumps(
        [{"op": "add", "path": "/securityLabel/-",
          "value": {"coding": [{"system": codes.VISIBILITY_SYSTEM, "code": "MASQUE_PS"}]}}]))
    emergency = bearer("doctor", sub=SURGEON, purpose="emergency", patient=MARTIN)
    assert document_ids(client, emergency) == {world["ldl"]}  # never the masked document
    assert document_ids(client, bearer("doctor", sub=SURGEON)) == set()  # without the emergency purpose
    # The patient sees the break-the-glass in the trail, with its purpose and the decision.
    trail = client.get("/fhir/AuditEvent", query_string={"purpose": "BTG"}, headers=martin).json
    profiles = {e["resource"]["meta"]["profile"][0].rsplit(".", 1)[1] for e in trail["entry"]}
    assert {"PatientQuery", "AuthZconsent"} <= profiles
    requesters = [next(a for a in e["resource"]["agent"] if a["requestor"]) for e in trail["entry"]]
    assert all(a["who"]["identifier"]["value"] == SURGEON for a in requesters)
    regulator = bearer("regulator", sub="899900000099", purpose="regulation", patient=MARTIN)
    assert document_ids(client, regulator) == {world["ldl"]}
    client.post("/fhir/Consent", data=consent("emergency-access", "deny"), headers={**FHIR, **martin})
    assert document_ids(client, emergency) == set()
    assert document_ids(client, regulator) == {world["ldl"]}  # SAMU access has its own opposition
    client.post("/fhir/Consent", data=consent("regulation-access", "deny"), headers={**FHIR, **martin})
    assert document_ids(client, regulator) == set()


def test_a_closed_record_takes_no_document_and_no_professional(client, bearer, world):
    martin, gp = bearer("patient", patient=MARTIN), bearer("doctor", sub=GP)
    client.post("/fhir/Consent", data=consent("attending-physician", "permit", GP), headers={**FHIR, **martin})
    closed = client.post("/fhir/Consent", data=consent("record", "deny"), headers={**FHIR, **martin}).json
    assert document_ids(client, gp) == set()
    assert document_ids(client, martin) == {world["ldl"], world["bio"]}  # the patient still reads it
    refused = client.post("/cda", data=sample("cr-biologie-martin.xml").replace(b"1.2.250.1.213.1.1.9.2.7.1",
                                                                                 b"1.2.250.1.213.1.1.9.2.7.9"),
                          headers={**XML, **gp})
    assert refused.status_code == 422 and "closed" in refused.json["issue"][0]["diagnostics"]
    client.put(f"/fhir/Consent/{closed['id']}", data=consent("record", "deny", status="inactive", res_id=closed["id"]),
               headers={**FHIR, **martin})
    assert document_ids(client, gp) == {world["ldl"], world["bio"]}


def test_insurers_admins_and_systems_see_no_patient_data(client, bearer, world, database):
    martin = bearer("patient", patient=MARTIN)
    client.post("/fhir/Consent", data=consent("professional", "permit", "insurer-1"), headers={**FHIR, **martin})
    insurer = bearer("insurer", sub="insurer-1")
    before = audit_count(database[0])
    for path in ("/fhir/DocumentReference", f"/fhir/DocumentReference/{world['ldl']}", "/fhir/Patient",
                 "/fhir/Practitioner"):
        response = client.get(path, headers=insurer)
        assert response.status_code == 403 and response.json["issue"][0]["code"] == "forbidden"
    assert client.post("/cda", data=sample("ldl-ses-martin.xml"), headers={**XML, **insurer}).status_code == 403
    assert audit_count(database[0]) == before + 5  # each refusal is in the trail (AuthZ-Role)
    for role in ("admin", "system"):
        assert document_ids(client, bearer(role)) == set()
        assert client.get(f"/fhir/DocumentReference/{world['ldl']}", headers=bearer(role)).status_code == 404
    assert client.get("/fhir/Practitioner", headers=bearer("admin")).json["total"] == 2
    # Operators manage messages; feeding systems post them; no one else does either.
    assert client.get("/hl7v2/messages", headers=bearer("admin")).status_code == 200
    assert client.get("/hl7v2/messages", headers=bearer("doctor", sub=GP)).status_code == 403
    message = "MSH|^~\\&|A|B|C|D|20260101||ADT^A01|X1|P|2.5\rPID|1\r"
    assert client.post("/hl7v2", data=message, content_type="x-application/hl7-v2+er7",
                       headers=bearer("admin")).status_code == 403
    assert client.post("/hl7v2", data=message, content_type="x-application/hl7-v2+er7",
                       headers=bearer("system")).status_code == 200


def test_a_write_the_requester_may_not_do_is_refused_before_anything_is_kept(client, bearer, world, database):
    """The write policy opens every unit of work: a requester who may not feed is refused before the
    raw copy, and one who may read a document but not change it is refused before its new version."""
    def kept() -> int:
        with database[0].connect() as conn:
            return conn.execute(select(func.count()).select_from(raw_inputs)).scalar_one()

    before = kept()
    document = sample("ldl-ses-martin.xml").replace(b"1.2.250.1.213.1.1.9.2.1.1", b"1.2.250.1.213.1.1.9.2.1.7")
    for headers in (bearer("patient", patient=MARTIN), bearer("admin"), bearer("occupational-doctor", sub=INTERNIST),
                    bearer("doctor", sub=SURGEON, purpose="emergency", patient=MARTIN)):
        for path, body, content_type in (("/cda", document, XML), ("/fhir/DocumentReference", b"{}", FHIR),
                                          ("/fhir", b"{}", FHIR)):
            response = client.post(path, data=body, headers={**content_type, **headers})
            assert response.status_code == 403 and response.json["issue"][0]["code"] == "forbidden", path
    assert kept() == before
    # The emergency doctor reads the document but may neither archive nor mask it.
    emergency = bearer("doctor", sub=SURGEON, purpose="emergency", patient=MARTIN)
    target = f"/fhir/DocumentReference/{world['ldl']}"
    version = client.get(target, headers=emergency).json["meta"]["versionId"]
    archive = [{"op": "add", "path": "/extension", "value": [{"url": codes.PDSM_IS_ARCHIVED, "valueBoolean": True}]}]
    for patch in (archive,
                  [{"op": "add", "path": "/securityLabel/-",
                    "value": {"coding": [{"system": codes.VISIBILITY_SYSTEM, "code": "INVISIBLE_PATIENT"}]}}]):
        response = client.patch(target, headers={**PATCH, **emergency}, data=json.dumps(patch))
        assert response.status_code == 403 and response.json["issue"][0]["code"] == "forbidden"
    assert client.get(target, headers=emergency).json["meta"]["versionId"] == version


def test_each_request_leaves_its_audit_events(client, bearer, world, database):
    engine = database[0]
    martin, gp = bearer("patient", patient=MARTIN), bearer("doctor", sub=GP)
    client.post("/fhir/Consent", data=consent("attending-physician", "permit", GP), headers={**FHIR, **martin})

    def new_events(request) -> list[dict]:
        with engine.connect() as conn:
            known = set(conn.execute(select(resources.c.res_id).where(resources.c.res_type == "AuditEvent")).scalars())
        request()
        with engine.connect() as conn:
            rows = conn.execute(select(resources.c.res_id, resources.c.body)
                                .where(resources.c.res_type == "AuditEvent")).all()
        return [json.loads(body) for res_id, body in rows if res_id not in known]

    def summary(events):
        return sorted((e["meta"].get("profile", ["none"])[0].rsplit(".", 1)[-1], e["action"], e["outcome"],
                       [x["what"]["reference"] for x in e["entity"] if "what" in x]) for e in events)

    patient_ref = f"Patient/{world['martin_patient']}"
    doc_ref = f"DocumentReference/{world['ldl']}"
    assert summary(new_events(lambda: client.get(f"/fhir/{doc_ref}", headers=gp))) == [
        ("PatientRead", "R", "0", [patient_ref, doc_ref])]
    query = new_events(lambda: client.get("/fhir/DocumentReference", headers=gp,
                                          query_string={"patient.identifier": MARTIN}))
    assert summary(query) == [("PatientQuery", "E", "0", [patient_ref])]
    assert query[0]["agent"][0]["altId"] == GP and query[0]["purposeOfEvent"][0]["coding"][0]["code"] == "TREAT"
    refused = new_events(lambda: client.get(f"/fhir/{doc_ref}", headers=bearer("doctor", sub=SURGEON)))
    # BALP's Read profile fixes outcome 0: a refused read is recorded alike, claiming no profile.
    assert summary(refused) == [("none", "R", "4", [patient_ref, doc_ref])]
    created = new_events(lambda: client.post("/cda", data=sample("cr-operatoire-garnier.xml"), headers={**XML, **gp}))
    # One event per resource created (BALP: one data entity each): the record's with the patient,
    # the directory's (practitioner, organisation) without.
    kinds = {(e["meta"]["profile"][0].rsplit(".", 1)[1], e["action"],
              next(x["what"]["reference"].split("/")[0] for x in e["entity"] if x["type"]["code"] == "2"))
             for e in created}
    assert kinds == {("PatientCreate", "C", "Patient"), ("PatientCreate", "C", "Binary"), ("PatientCreate", "C", "DocumentReference"),
                     ("PatientCreate", "C", "List"), ("Create", "C", "Practitioner"), ("Create", "C", "Organization")}
    # A patient reads their own trail, never another's.
    mine = client.get("/fhir/AuditEvent", headers=martin, query_string={"_count": 200}).json
    assert mine["total"] >= 4 and all(patient_ref in json.dumps(e["resource"]["entity"]) for e in mine["entry"])
    theirs = client.get("/fhir/AuditEvent", headers=bearer("patient", patient=LEFEVRE)).json
    assert theirs["total"] >= 1 and patient_ref not in json.dumps(theirs)


def test_audit_verify_finds_an_edited_removed_or_inserted_entry(client, bearer, world, database):
    engine = database[0]
    client.get(f"/fhir/DocumentReference/{world['ldl']}", headers=bearer("patient", patient=MARTIN))
    report = verify_chain(engine)
    assert report.reason is None and report.entries >= 2

    def last_entry(conn):
        return conn.execute(select(audit_chain.c.seq, audit_chain.c.event_id, audit_chain.c.chain,
                                   audit_chain.c.hash).order_by(audit_chain.c.seq.desc()).limit(1)).one()

    with engine.begin() as conn:
        seq, event_id, chain, _ = last_entry(conn)
        body = conn.execute(select(resources.c.body).where(resources.c.res_id == event_id)).scalar_one()
        conn.execute(update(resources).where(resources.c.res_id == event_id)
                     .values(body=body.replace('"outcome":"0"', '"outcome":"4"')))
    edited = verify_chain(engine)
    assert (edited.broken_at, edited.event_id) == (seq, event_id) and "changed" in edited.reason
    with engine.begin() as conn:
        conn.execute(update(resources).where(resources.c.res_id == event_id).values(body=body))
    assert verify_chain(engine).reason is None

    # Removed: the entry after it in its chain no longer follows.
    client.get(f"/fhir/DocumentReference/{world['ldl']}", headers=bearer("patient", patient=MARTIN))
    with engine.begin() as conn:
        first = conn.execute(select(audit_chain).order_by(audit_chain.c.seq).limit(1)).one()
        following = conn.execute(select(audit_chain.c.seq).where(
            audit_chain.c.chain == first.chain, audit_chain.c.seq > first.seq)
            .order_by(audit_chain.c.seq).limit(1)).scalar_one()
        conn.execute(audit_chain.delete().where(audit_chain.c.seq == first.seq))
    removed = verify_chain(engine)
    assert removed.broken_at == following and "removed or inserted" in removed.reason
    with engine.begin() as conn:
        conn.execute(audit_chain.insert().values(**first._asdict()))
    assert verify_chain(engine).reason is None

    # Inserted: a forged AuditEvent linked after the last entry breaks the entry written next in
    # that chain; one left out of every chain is named as such.
    forged = body.replace(event_id, "forged-event")
    with engine.begin() as conn:
        _, _, chain, head = last_entry(conn)
        conn.execute(resources.insert().values(res_type="AuditEvent", res_id="forged-event", version=1,
                                               last_updated="2026-01-01T00:00:00", deleted=False, body=forged))
    unchained = verify_chain(engine)
    assert unchained.event_id == "forged-event" and "in no chain" in unchained.reason
    with engine.begin() as conn:
        conn.execute(audit_chain.insert().values(chain=chain, event_id="forged-event", previous_hash=head,
                                                 hash="f" * 64))
    client.get(f"/fhir/DocumentReference/{world['ldl']}", headers=bearer("patient", patient=MARTIN))
    inserted = verify_chain(engine)
    assert inserted.reason is not None and inserted.event_id == "forged-event"


def test_what_names_a_document_follows_its_visibility(client, bearer, settings, world):
    """A trail entry, a SubmissionSet and a signature name a document: each is hidden from whoever
    the document is hidden from, whenever they were written, and shown again once it is."""
    from gateway.demo import signed_submission

    martin, internist = bearer("patient", patient=MARTIN), bearer("doctor", sub=INTERNIST)
    client.post("/fhir/Consent", data=consent("professional", "permit", INTERNIST), headers={**FHIR, **martin})
    doc = f"DocumentReference/{world['ldl']}"

    def trail_names_document():
        trail = client.get("/fhir/AuditEvent", query_string={"_count": 200}, headers=martin).json
        return doc in json.dumps(trail)

    client.get(f"/fhir/{doc}", headers=internist)
    assert trail_names_document()   # its creation and the internist's read, before any label
    hide = [{"op": "add", "path": "/securityLabel/0", "value": {"coding": [
        {"system": codes.VISIBILITY_SYSTEM, "code": "INVISIBLE_PATIENT"}]}}]
    assert client.patch(f"/fhir/{doc}", data=json.dumps(hide), headers={**PATCH, **internist}).status_code == 200
    assert not trail_names_document()
    announce = [{"op": "remove", "path": "/securityLabel/0"}]
    assert client.patch(f"/fhir/{doc}", data=json.dumps(announce), headers={**PATCH, **internist}).status_code == 200
    assert trail_names_document()

    # A signed submission: its SubmissionSet and its signature follow the signed document.
    response = client.post("/fhir", data=json.dumps(signed_submission(settings, sample("synthese-moreau.xml"))),
                           headers={**FHIR, **bearer("system", sub="hospital")})
    assert response.status_code == 200, response.json
    locations = [e["response"]["location"].rsplit("/_history", 1)[0] for e in response.json["entry"]
                 if "location" in e["response"]]
    submission_set = next(ref for ref in locations if ref.startswith("List/"))
    signed, signature = [ref for ref in locations if ref.startswith("DocumentReference/")]
    minor = "212057501802305"
    parent = bearer("representative", patient=minor)
    surgeon = bearer("doctor", sub=SURGEON)   # authorised by the parent, not an author of the document
    client.post("/fhir/Consent", data=consent("professional", "permit", SURGEON), headers={**FHIR, **parent})
    signature_binary = client.get(f"/fhir/{signature}", headers=parent).json["content"][0]["attachment"]["url"]
    mask = [{"op": "add", "path": "/securityLabel/0", "value": {"coding": [
        {"system": codes.VISIBILITY_SYSTEM, "code": "MASQUE_PS"}]}}]
    assert client.get(f"/fhir/{signature}", headers=surgeon).status_code == 200
    assert client.patch(f"/fhir/{signed}", data=json.dumps(mask), headers={**PATCH, **parent}).status_code == 200
    for hidden in (signed, signature, submission_set, signature_binary.replace("http://gateway.test/fhir/", "")):
        assert client.get(f"/fhir/{hidden}", headers=surgeon).status_code == 404, hidden
    lists = client.get("/fhir/List", query_string={"patient.identifier": minor}, headers=surgeon).json
    assert lists["total"] == 0
    assert client.get(f"/fhir/{signature}", headers=parent).status_code == 200


@pytest.mark.parametrize("preference", [None, "return=representation", "return=minimal", "return=OperationOutcome",
                                        'handling=lenient; return="minimal"'])
def test_writes_answer_as_prefer_return_asks(client, bearer, world, preference):
    """A create, an update and a patch answer with the resource, nothing, or an OperationOutcome,
    as `Prefer: return=` asks (R4 http), their version and place in the headers either way: every
    answer was the resource, whatever was asked."""
    martin = bearer("patient", patient=MARTIN)
    prefer = {"Prefer": preference} if preference else {}
    mask = [{"op": "add", "path": "/securityLabel/-",
             "value": {"coding": [{"system": codes.VISIBILITY_SYSTEM, "code": "MASQUE_PS"}]}}]
    answers = {
        "created": client.post("/fhir/Consent", data=consent("professional", "permit", INTERNIST),
                               headers={**FHIR, **martin, **prefer}),
        "patched": client.patch(f"/fhir/DocumentReference/{world['bio']}", data=json.dumps(mask),
                                headers={**PATCH, **martin, **prefer})}
    consent_id = answers["created"].headers["Location"].split("/Consent/")[1].split("/")[0]
    answers["updated"] = client.put(f"/fhir/Consent/{consent_id}", headers={**FHIR, **martin, **prefer},
                                    data=consent("professional", "permit", INTERNIST, status="inactive",
                                                 res_id=consent_id))
    expected = {"created": (201, "Consent", "1"), "patched": (200, "DocumentReference", "2"),
                "updated": (200, "Consent", "2")}
    for name, answer in answers.items():
        status, res_type, version = expected[name]
        assert answer.status_code == status, (name, answer.data[:300])
        assert answer.headers["ETag"] == f'W/"{version}"' and answer.headers["Last-Modified"].endswith("GMT")
        if name == "created":
            assert answer.headers["Location"].endswith(f"/fhir/Consent/{consent_id}/_history/1")
        returned = (preference or "return=representation").rpartition("=")[2].strip('"')
        if returned == "minimal":
            assert answer.data == b"" and "Content-Type" not in answer.headers, (name, answer.data[:200])
        elif returned == "OperationOutcome":
            issue = answer.json["issue"][0]
            assert answer.json["resourceType"] == "OperationOutcome" and issue["severity"] == "information"
            assert issue["diagnostics"].startswith(f"{res_type}/") and f"/_history/{version}: " in issue["diagnostics"]
        else:
            assert answer.json["resourceType"] == res_type and answer.json["meta"]["versionId"] == version


def test_a_history_is_served_page_after_page_and_since_an_instant(client, bearer, world):
    """Every version of a resource is served, `_count` at a time, by following `next`, and `total`
    counts them all: the versions past a page were not served, and `total` counted the page.
    `_since` keeps those made at or after an instant; it was ignored."""
    martin = bearer("patient", patient=MARTIN)
    made = client.post("/fhir/Consent", data=consent("professional", "permit", INTERNIST), headers={**FHIR, **martin})
    for number in range(6):
        status = "inactive" if number % 2 == 0 else "active"
        client.put(f"/fhir/Consent/{made.json['id']}", headers={**FHIR, **martin},
                   data=consent("professional", "permit", INTERNIST, status=status, res_id=made.json["id"]))
    url, versions, totals = f"/fhir/Consent/{made.json['id']}/_history?_count=3", [], set()
    while url:
        page = client.get(url.replace("http://gateway.test", ""), headers=martin).json
        assert len(page["entry"]) <= 3
        versions += [int(e["resource"]["meta"]["versionId"]) for e in page["entry"]]
        totals.add(page["total"])
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
    assert versions == [7, 6, 5, 4, 3, 2, 1] and totals == {7}
    fourth = client.get(f"/fhir/Consent/{made.json['id']}/_history/4", headers=martin).json["meta"]["lastUpdated"]
    since = client.get(f"/fhir/Consent/{made.json['id']}/_history", query_string={"_since": fourth}, headers=martin).json
    assert [e["resource"]["meta"]["versionId"] for e in since["entry"]] == ["7", "6", "5", "4"] and since["total"] == 4
    for refused in ({"_since": "yesterday"}, {"_at": fourth}, {"_count": "-1"}, {"_below": "x"}):
        answer = client.get(f"/fhir/Consent/{made.json['id']}/_history", query_string=refused, headers=martin)
        assert answer.status_code == 400, refused
    # A type's history is not served: it was read as the resource of id "_history", "not known".
    whole = client.get("/fhir/Consent/_history", headers=martin)
    assert whole.status_code == 404 and whole.json["issue"][0]["code"] == "not-supported"
    assert whole.json["issue"][0]["diagnostics"] == ("the history of every Consent is not served: ask for one "
                                                     "resource's, Consent/[id]/_history")
