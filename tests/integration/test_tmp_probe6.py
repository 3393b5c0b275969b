import json, time
from conftest import sample, attend_all
from gateway.services.consents import decision

def test_p(client, bearer, database):
    for name in ("ldl-ses-martin.xml", "cr-biologie-martin.xml"):
        assert client.post("/cda", data=sample(name), content_type="application/xml").status_code == 201
    martin = bearer("patient", patient="185067511204554")
    for n, effect in ((10, "deny"), (4000, "deny"), (4000, "permit")):
        consent = {**decision("professional", effect, "899900000020"), "status": "active"}
        actor = consent["provision"]["actor"][0]
        consent["provision"]["actor"] = [json.loads(json.dumps(actor).replace("899900000020", f"8999{i:08d}")) for i in range(n)]
        body = json.dumps(consent)
        t = time.perf_counter()
        r = client.post("/fhir/Consent", data=body, content_type="application/fhir+json", headers=martin)
        print("\nRESULT post", n, effect, len(body), r.status_code, round(time.perf_counter() - t, 2), r.data[:150] if r.status_code >= 300 else "")
        for who in ("89990000004", "899900000020"):
            t = time.perf_counter()
            r = client.get("/fhir/DocumentReference?patient.identifier=urn:oid:1.2.250.1.213.1.4.10|185067511204554", headers=bearer("doctor", sub=who))
            print("RESULT search", who, r.status_code, r.json.get("total"), round(time.perf_counter() - t, 3))
        t = time.perf_counter()
        r = client.get("/fhir/Consent", headers=martin)
        print("RESULT consents", r.status_code, round(time.perf_counter() - t, 3), len(r.data))
