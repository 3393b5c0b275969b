"""Searches give the same answers on SQLite (after ANALYZE, as a long-running gateway has it) and on
PostgreSQL as an oracle written in Python over the stored resources: random filters, sorts, page
sizes, every page followed. Debian's SQLite 3.40.1 answered `AuditEvent?patient=…&_sort=-date` with
65 of 173 events once statistics existed; the gateway brings its own SQLite."""
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from conftest import GP, attend_all, sample
from gateway.storage.database import SQLITE_VERSION, refresh_statistics
from gateway.storage.schema import resources

SAMPLES = ["ldl-ses-martin.xml", "cr-hospitalisation-lefevre.xml", "cr-operatoire-garnier.xml",
           "cr-imagerie-irm-lefevre.xml", "cr-imagerie-scanner-garnier.xml", "cr-imagerie-echographie-moreau.xml",
           "cr-biologie-martin.xml"]
XML = {"Content-Type": "application/xml"}


def all_pages(client, url: str, headers: dict) -> list[dict]:
    found = []
    while url:
        page = client.get(url, headers=headers).json
        assert page["resourceType"] == "Bundle", page
        found += [e["resource"] for e in page.get("entry", []) if e["search"]["mode"] == "match"]
        url = next((link["url"].replace("http://gateway.test", "") for link in page["link"]
                    if link["relation"] == "next"), None)
    return found


def test_random_searches_agree_with_an_oracle(client, database, bearer, backend):
    engine = database[0]
    for name in SAMPLES:
        assert client.post("/cda", data=sample(name), headers=XML).status_code == 201
    attend_all(engine)
    gp = bearer("doctor", sub=GP)
    # A trail long enough for the planner to have statistics about: reads of every document.
    documents = all_pages(client, "/fhir/DocumentReference?_count=50", gp)
    for _ in range(3):
        for doc in documents:
            client.get(f"/fhir/DocumentReference/{doc['id']}", headers=gp)
    refresh_statistics(engine)
    with engine.connect() as conn:
        stored = [json.loads(b) for b, in conn.execute(select(resources.c.body).where(
            resources.c.res_type.in_(("DocumentReference", "AuditEvent")), resources.c.deleted.is_(False)))]
    docrefs = [r for r in stored if r["resourceType"] == "DocumentReference"]
    events = [r for r in stored if r["resourceType"] == "AuditEvent"]
    patients = sorted({d["subject"]["reference"] for d in docrefs})
    cutoff = max(e["recorded"] for e in events)
    types = sorted({d["type"]["coding"][0]["code"] for d in docrefs})

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(patient=st.sampled_from(patients), sort=st.sampled_from(["date", "-date", "_lastUpdated", "-_lastUpdated"]),
           count=st.integers(1, 7))
    def trail(patient, sort, count):
        # Every page the GP reads adds to the trail: the search is bounded to what was there before.
        expected = [e for e in events if any(x.get("what", {}).get("reference") == patient for x in e["entity"])]
        got = all_pages(client, f"/fhir/AuditEvent?patient={patient}&date=le{cutoff}&_sort={sort}&_count={count}", gp)
        assert sorted(e["id"] for e in got) == sorted(e["id"] for e in expected), (backend, SQLITE_VERSION, sort, count)
        if sort.endswith("date"):
            values = [e["recorded"] for e in got]
            assert values == sorted(values, reverse=sort.startswith("-"))

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(type_=st.one_of(st.none(), st.sampled_from(types)), year=st.sampled_from([None, "2026", "2025"]),
           sort=st.sampled_from(["date", "-date", "_id"]), count=st.integers(1, 5))
    def documents_search(type_, year, sort, count):
        params = [f"_sort={sort}", f"_count={count}"] + ([f"type={type_}"] if type_ else []) + (
            [f"date={year}"] if year else [])
        expected = [d for d in docrefs if (not type_ or d["type"]["coding"][0]["code"] == type_)
                    and (not year or d["date"].startswith(year))]
        got = all_pages(client, "/fhir/DocumentReference?" + "&".join(params), gp)
        assert sorted(d["id"] for d in got) == sorted(d["id"] for d in expected), (backend, params)
        field = "date" if sort.endswith("date") else "id"
        values = [d[field] for d in got]
        assert values == sorted(values, reverse=sort.startswith("-")) or field == "date", (backend, params)

    trail()
    documents_search()
