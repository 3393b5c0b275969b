"""Bundle.total: exact when asked (_total=accurate, _summary=count), left out when asked
(_total=none), and by default exact up to a bound, left out beyond it (a count of every match of a
broad search cost more than its page)."""
import pytest

from conftest import GP, attend_all, sample
from gateway.storage import repository

XML = {"Content-Type": "application/xml"}
DOCUMENTS = ("ldl-ses-martin.xml", "cr-biologie-martin.xml", "cr-imagerie-echographie-moreau.xml")


@pytest.fixture
def three_documents(client, bearer, database):
    system = bearer("system", sub="hospital")
    for name in DOCUMENTS:
        assert client.post("/cda", data=sample(name), headers={**XML, **system}).status_code == 201
    attend_all(database[0])
    return bearer("doctor", sub=GP)


def total(client, headers, **params):
    bundle = client.get("/fhir/DocumentReference", query_string={"status": "current", **params}, headers=headers).json
    return bundle.get("total", "absent"), len(bundle.get("entry", []))


def test_the_total_is_exact_up_to_the_bound_and_left_out_beyond_it(client, three_documents, monkeypatch):
    doctor = three_documents
    assert total(client, doctor) == (3, 3)
    monkeypatch.setattr(repository, "TOTAL_BOUND", 2)
    assert total(client, doctor) == ("absent", 3)
    assert total(client, doctor, _total="accurate") == (3, 3)
    assert total(client, doctor, _total="estimate", _count="1") == ("absent", 1)
    assert total(client, doctor, _total="none") == ("absent", 3)
    assert client.get("/fhir/DocumentReference", query_string={"_summary": "count"},
                      headers=doctor).json["total"] == 3
    # The next link carries _total on.
    bundle = client.get("/fhir/DocumentReference", query_string={"_count": "1", "_total": "accurate"},
                        headers=doctor).json
    following = next(link["url"] for link in bundle["link"] if link["relation"] == "next")
    assert "_total=accurate" in following
