"""Read, vread, history, create, errors and operations endpoints."""
import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import attend_all, sample

XML = {"Content-Type": "application/xml"}
FHIR = {"Content-Type": "application/fhir+json"}


def doc(client, database):
    created = client.post("/cda", data=sample("ldl-ses-martin.xml"), headers=XML).json
    attend_all(database[0])
    return created


def test_read_vread_etag_last_modified(client, database):
    created = doc(client, database)
    response = client.get(f"/fhir/DocumentReference/{created['id']}")
    assert response.status_code == 200 and response.json == created
    assert response.headers["ETag"] == 'W/"1"' and response.headers["Last-Modified"].endswith("GMT")
    assert client.get(f"/fhir/DocumentReference/{created['id']}",
                      headers={"If-None-Match": 'W/"1"'}).status_code == 304
    assert client.get(f"/fhir/DocumentReference/{created['id']}/_history/1").json["id"] == created["id"]
    assert client.get(f"/fhir/DocumentReference/{created['id']}/_history/9").status_code == 404
    # Past the version column's range (32 bits on PostgreSQL, 64 on SQLite): a 500 on each before.
    for version in (2**31, 2**63, 10**20):
        assert client.get(f"/fhir/DocumentReference/{created['id']}/_history/{version}").status_code == 404


def test_a_conditional_read_is_answered_304_as_http_compares_versions_and_dates(client, database):
    """If-None-Match names tags, weakly compared, or `*`; without it, If-Modified-Since a date not
    before the last change: each is 304, for a resource and for a document's bytes. Only `W/"1"`,
    written exactly so, was 304, and If-Modified-Since was not read."""
    created = doc(client, database)
    binary = created["content"][0]["attachment"]["url"].replace("http://gateway.test", "")
    for path in (f"/fhir/DocumentReference/{created['id']}", binary):
        modified = client.get(path).headers["Last-Modified"]
        for headers, status in (({"If-None-Match": 'W/"1"'}, 304), ({"If-None-Match": '"1"'}, 304),
                                ({"If-None-Match": 'W/"7", W/"1"'}, 304), ({"If-None-Match": "*"}, 304),
                                ({"If-None-Match": 'W/"2"'}, 200), ({"If-Modified-Since": modified}, 304),
                                ({"If-Modified-Since": "Sat, 01 Jan 2000 00:00:00 GMT"}, 200),
                                ({"If-Modified-Since": "yesterday"}, 200),   # an invalid date is ignored
                                ({"If-None-Match": 'W/"2"', "If-Modified-Since": modified}, 200)):
            answer = client.get(path, headers=headers)
            assert answer.status_code == status, (path, headers, answer.status_code)
            assert answer.headers["ETag"] == 'W/"1"'
            if status == 304:
                assert answer.data == b""
    statement = client.get("/fhir/metadata").json["rest"][0]["resource"]
    assert {r["conditionalRead"] for r in statement} == {"full-support"}


def test_a_part_of_a_document_is_served_as_a_range_asks(client, database):
    """A client whose download of a large document broke off asks for the rest (Range, RFC 9110
    14): it got the whole document again. A part is served from the document's bytes, never from
    the Binary resource."""
    created = doc(client, database)
    binary = created["content"][0]["attachment"]["url"].replace("http://gateway.test", "")
    whole = sample("ldl-ses-martin.xml")
    size = len(whole)
    full = client.get(binary)
    assert full.status_code == 200 and full.headers["Accept-Ranges"] == "bytes" and full.data == whole
    modified = full.headers["Last-Modified"]
    for headers, status, part in (
            ({"Range": "bytes=0-99"}, 206, (0, 99)),
            ({"Range": "bytes=100-"}, 206, (100, size - 1)),
            ({"Range": "bytes=-10"}, 206, (size - 10, size - 1)),
            ({"Range": f"bytes=100-{size * 2}"}, 206, (100, size - 1)),
            ({"Range": "bytes=0-99", "If-Range": modified}, 206, (0, 99)),
            ({"Range": "bytes=0-99", "If-Range": "Sat, 01 Jan 2000 00:00:00 GMT"}, 200, None),
            ({"Range": "bytes=0-99", "If-Range": 'W/"1"'}, 206, (0, 99)),
            ({"Range": "bytes=0-99", "If-Range": 'W/"2"'}, 200, None),
            ({"Range": "bytes=0-9,20-29"}, 200, None),
            ({"Range": "lines=0-9"}, 200, None),
            ({"Range": "bytes=9-0"}, 200, None),
            ({"Range": "bytes=0-99", "Accept": "application/fhir+json"}, 200, None)):
        answer = client.get(binary, headers=headers)
        assert answer.status_code == status, (headers, answer.status_code, answer.data[:200])
        assert answer.headers["ETag"] == 'W/"1"'
        if part is None:
            assert "Content-Range" not in answer.headers
            continue
        first, last = part
        assert answer.data == whole[first:last + 1] and answer.headers["Content-Length"] == str(last + 1 - first)
        assert answer.headers["Content-Range"] == f"bytes {first}-{last}/{size}"
    past_the_end = client.get(binary, headers={"Range": f"bytes={size}-"})
    assert past_the_end.status_code == 416 and past_the_end.headers["Content-Range"] == f"bytes */{size}"
    assert past_the_end.json["resourceType"] == "OperationOutcome"
    assert past_the_end.json["issue"][0]["diagnostics"].startswith(f"the document is {size} bytes long")


@pytest.mark.parametrize("query, accept, answered", [
    ("", "application/fhir+json", "json"),
    ("", "application/json", "json"),
    ("", "application/fhir+xml", "xml"),
    ("", "application/fhir+xml; fhirVersion=4.0", "xml"),
    ("?_format=xml", None, "xml"),
    ("?_format=application/fhir+xml", "*/*", "xml"),   # the '+' left unencoded, as curl sends it
    ("?_format=json", "application/fhir+xml", "json"),
    ("?_format=html", "application/fhir+xml", "xml"),  # no format this server serves: Accept decides
    ("", None, "document"),
    ("", "*/*", "document"),
    ("", "application/fhir+json, */*", "document"),     # a browser's
    ("", "application/xml", "document"),                # the CDA's own type
    ("?_format=html", None, "document")])
def test_binary_as_fhir_resource(client, database, query, accept, answered):
    """R4 Binary: a client naming a FHIR format, by Accept or _format, gets the Binary resource in
    it; any other gets the document. Only JSON was served: application/fhir+xml got the document,
    and _format=xml did too unless Accept named FHIR JSON, which then got XML."""
    import base64

    from lxml import etree

    created = doc(client, database)
    binary_path = created["content"][0]["attachment"]["url"].replace("http://gateway.test", "")
    response = client.get(binary_path + query, headers={"Accept": accept} if accept else {})
    assert response.status_code == 200
    if answered == "document":
        assert response.mimetype == "text/xml" and response.data == sample("ldl-ses-martin.xml")
        return
    assert response.mimetype == f"application/fhir+{answered}", response.data[:200]
    if answered == "json":
        resource = response.json
        assert resource["resourceType"] == "Binary" and resource["contentType"] == "text/xml"
        data = resource["data"]
    else:
        root = etree.fromstring(response.data)
        assert root.tag == "{http://hl7.org/fhir}Binary"
        data = root.find("{http://hl7.org/fhir}data").get("value")
    assert base64.b64decode(data) == sample("ldl-ses-martin.xml")


@pytest.mark.parametrize("query, answered", [
    ("_format=application/fhir+json", "application/fhir+json"),
    ("_format=application/fhir+xml", "application/fhir+xml"),
    ("_format=APPLICATION/FHIR%2BXML", "application/fhir+xml"),
    ("_format=application/fhir+xml;+fhirVersion=4.0", "application/fhir+xml"),
    ("_format=text/xml", "application/fhir+xml"),
    ("_format=application/fhir%2Bjson%3B%20fhirVersion%3D5.0", None),
    ("_format=application/fhir+xml;+fhirVersion=3.0", None),
    ("_format=html", None),
    ("_format=application/pdf", None)])
def test_format_is_read_as_a_url_gives_it(client, query, answered):
    """_format as a URL typed without encoding its '+' gives it (`curl '…?_format=application/fhir+json'`
    sends `application/fhir json`), in any case, with its parameters: it was refused 406. One naming
    another FHIR version, or no FHIR format, is refused."""
    answer = client.get(f"/fhir/metadata?{query}", headers={"Accept": "application/fhir+json"})
    if answered is None:
        assert answer.status_code == 406 and "FHIR 4.0" in answer.json["issue"][0]["diagnostics"]
    else:
        assert answer.status_code == 200 and answer.mimetype == answered, (query, answer.status_code)


def test_pretty_answers_hold_the_same_values_indented(client, database):
    """`_pretty=true` was taken and did nothing."""
    from lxml import etree

    created = client.post("/cda", data=sample("ldl-ses-martin.xml"), headers=XML).json
    attend_all(database[0])
    for path in (f"/fhir/DocumentReference/{created['id']}", "/fhir/DocumentReference?status=current",
                 "/fhir/DocumentReference?_count=x", "/fhir/metadata"):
        def get(**params):
            return client.get(path + ("&" if "?" in path else "?") + "&".join(f"{k}={v}" for k, v in params.items()))

        # A searchset's links repeat what it was asked with, _pretty and _format included.
        plain, pretty = client.get(path), get(_pretty="true")
        assert pretty.data.startswith(b'{\n  "resourceType": '), path
        assert dict(pretty.json, link=None) == dict(plain.json, link=None), path
        plain, pretty = get(_format="xml"), get(_format="xml", _pretty="true")
        assert pretty.status_code == plain.status_code and b">\n  <" in pretty.data, path

        def unlinked(data: bytes) -> bytes:
            root = etree.fromstring(data, etree.XMLParser(remove_blank_text=True))
            for link in root.findall("{http://hl7.org/fhir}link"):
                root.remove(link)
            return etree.tostring(root)
        assert unlinked(pretty.data) == unlinked(plain.data), path
    assert b"\n" not in client.get("/fhir/metadata", query_string={"_pretty": "false"}).data


def test_error_statuses_are_operation_outcomes(client, database):
    created = doc(client, database)
    cases = [
        (client.get("/fhir/DocumentReference/unknown"), 404),
        (client.get("/fhir/Observation/1"), 404),
        (client.put(f"/fhir/DocumentReference/{created['id']}", data="{}", headers=FHIR), 405),
        (client.post("/fhir/List", data="{}", headers=FHIR), 405),
        (client.post("/fhir/DocumentReference", data="{}", headers=FHIR), 400),   # ITI-105 needs a DocumentReference
        (client.get("/fhir/metadata", headers={"Accept": "text/csv"}), 406),
        (client.get("/fhir/DocumentReference?_format=csv"), 406),
        (client.post("/fhir/Patient", data="<Patient/>", headers={"Content-Type": "application/xml"}), 400),
        (client.post("/fhir/Patient", data="a,b", headers={"Content-Type": "text/csv"}), 415),
        (client.post("/fhir/Patient", data=json.dumps({"resourceType": "Patient", "birthDate": "1985-13-45"}),
                     headers=FHIR), 422),
    ]
    for response, status in cases:
        assert response.status_code == status, (status, response.data[:200])
        assert response.json["resourceType"] == "OperationOutcome"
        assert response.headers["Content-Type"].startswith("application/fhir+json")
    # werkzeug's 405 said "The method is not allowed for the requested URL": which, and which are?
    replaced = cases[2][0]
    assert replaced.json["issue"][0]["diagnostics"] == \
        f"PUT is not served at /fhir/DocumentReference/{created['id']}: it takes DELETE, GET, PATCH", replaced.json
    assert set(replaced.headers["Allow"].split(", ")) == {"DELETE", "PATCH", "GET", "HEAD", "OPTIONS"}


@pytest.mark.parametrize("accept, answered", [
    # As Firely's .NET client sent it by default (2.0 to 3.6), and HAPI's core client does.
    ("application/fhir+json; charset=utf-8; fhirVersion=4.0", "application/fhir+json"),
    ("application/fhir+json; fhirVersion=4.0", "application/fhir+json"),
    ("application/fhir+xml; fhirVersion=4.0", "application/fhir+xml"),
    ("application/fhir+json; charset=utf-8", "application/fhir+json"),
    ("application/fhir+xml; fhirVersion=4.0, application/fhir+json; q=0.8", "application/fhir+xml"),
    ("application/fhir+xml; fhirVersion=3.0, application/fhir+json; q=0.8", "application/fhir+json"),
    ("application/fhir+json; fhirVersion=3.0", None),
    ("application/fhir+xml; fhirVersion=5.0", None),
    # DSTU2's names, which R4 encourages servers to take, as HAPI's client sends them.
    ("application/xml+fhir", "application/fhir+xml"),
    ("application/json+fhir", "application/fhir+json"),
    ("application/json+fhir;q=0.5, application/xml+fhir", "application/fhir+xml"),
    ("application/fhir+xml;q=1.0, application/fhir+json;q=1.0, application/xml+fhir;q=0.9, "
     "application/json+fhir;q=0.9", "application/fhir+json")])
def test_accept_is_read_with_its_parameters(client, accept, answered):
    """A media type's parameters do not hide it; one naming another FHIR version than 4.0 cannot be
    served. Both fhirVersion=4.0 and charset=utf-8 were answered 406, and XML preferred with
    fhirVersion was answered in JSON; application/xml+fhir was answered in JSON."""
    answer = client.get("/fhir/metadata", headers={"Accept": accept})
    if answered is None:
        assert answer.status_code == 406 and "FHIR 4.0" in answer.json["issue"][0]["diagnostics"]
    else:
        assert answer.status_code == 200 and answer.mimetype == answered, (accept, answer.status_code)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mime=st.sampled_from(["application/fhir+json", "application/json", "application/fhir+xml", "application/xml"]),
       params=st.lists(st.tuples(st.sampled_from(["charset", "fhirVersion", "q", "profile", "x"]),
                                 st.sampled_from(["utf-8", "UTF-8", "4.0", "4.0.1", "1", "0.5", '"a;b"', "v"])),
                       max_size=3))
def test_any_parameters_of_a_served_type_get_that_type(client, mime, params):
    """Whatever parameters a client adds to one FHIR media type of version 4.0, the answer is in it."""
    if any(name == "q" and value not in ("1", "0.5") for name, value in params):
        return   # not a quality
    if any(name == "fhirVersion" and value not in ("4.0", "4.0.1") for name, value in params):
        return   # another version: 406, as test_accept_is_read_with_its_parameters shows
    accept = "; ".join([mime, *(f"{name}={value}" for name, value in params)])
    answer = client.get("/fhir/metadata", headers={"Accept": accept})
    assert answer.status_code == 200, (accept, answer.data[:200])
    assert answer.mimetype == ("application/fhir+xml" if mime.endswith("xml") else "application/fhir+json"), accept


def test_dstu2_names_of_the_formats_are_taken_for_bodies_and_binaries(client, database):
    """A body sent as application/json+fhir was refused 415 where one sent as application/xml+fhir was
    read; a Binary asked for as application/xml+fhir was answered in JSON, and as
    application/json+fhir with the document instead of the resource."""
    patient = {"resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10",
                                                           "value": "177091305504102"}], "gender": "male"}
    created = client.post("/fhir/Patient", data=json.dumps(patient), content_type="application/json+fhir")
    assert created.status_code == 201, created.data[:300]
    binary = doc(client, database)["content"][0]["attachment"]["url"].split("/fhir")[1]
    as_xml = client.get(f"/fhir{binary}", headers={"Accept": "application/xml+fhir"})
    assert as_xml.mimetype == "application/fhir+xml" and b"<Binary" in as_xml.data[:300], as_xml.data[:300]
    as_json = client.get(f"/fhir{binary}", headers={"Accept": "application/json+fhir"})
    assert as_json.mimetype == "application/fhir+json" and as_json.json["resourceType"] == "Binary"


def test_a_body_of_another_fhir_version_is_refused(client):
    consent = json.dumps({"resourceType": "Consent"})
    refused = client.post("/fhir/Consent", data=consent, content_type="application/fhir+json; fhirVersion=3.0")
    assert refused.status_code == 415 and "FHIR 4.0" in refused.json["issue"][0]["diagnostics"]
    read = client.post("/fhir/Consent", data=consent, content_type="application/fhir+json; fhirVersion=4.0")
    assert read.status_code != 415


def test_conditional_create(client, database):
    patient = {"resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10",
                                                           "value": "177091305504102"}], "gender": "male"}
    condition = {"If-None-Exist": "identifier=urn:oid:1.2.250.1.213.1.4.10|177091305504102", **FHIR}
    first = client.post("/fhir/Patient", data=json.dumps(patient), headers=condition)
    assert first.status_code == 201 and first.headers["Location"].startswith("http://gateway.test/fhir/Patient/")
    attend_all(database[0])  # the search of If-None-Exist sees only what the requester may see
    second = client.post("/fhir/Patient", data=json.dumps(patient), headers=condition)
    assert second.status_code == 200 and second.json["id"] == first.json["id"]
    assert client.post("/fhir/Patient", data=json.dumps(patient), headers=FHIR).status_code == 409
    other = dict(patient, identifier=[{"system": "urn:oid:1.2.250.1.213.1.4.10", "value": "185067511204554"}])
    client.post("/fhir/Patient", data=json.dumps(other), headers=FHIR)
    attend_all(database[0])
    many = client.post("/fhir/Patient", data=json.dumps(other), headers={"If-None-Exist": "gender=male", **FHIR})
    assert many.status_code == 412


@pytest.mark.parametrize("condition, status", [
    ("Patient?identifier=urn:oid:1.2.250.1.213.1.4.10|177091305504102", 200),   # as HAPI's client sends it
    ("http://gateway.test/fhir/Patient?identifier=urn:oid:1.2.250.1.213.1.4.10|177091305504102", 200),
    ("?identifier=urn:oid:1.2.250.1.213.1.4.10|177091305504102", 200),
    ("identifier=urn:oid:1.2.250.1.213.1.4.10|177091305504102&name=", 400),
    ("identifier=", 400),   # a client's empty variable: the one patient it sees was answered as the match
    ("", 400),
    ("&", 400),
    ("identifier=urn:oid:1.2.250.1.213.1.4.10|177091305504102&_summary=count", 400),   # was created anyway
    ("_count=1", 400),
    ("Practitioner?identifier=urn:oid:1.2.250.1.213.1.4.10|177091305504102", 400),
    ("identifier=urn:oid:1.2.250.1.213.1.4.10|a?b", 201)])
def test_conditional_create_names_the_resource_that_must_not_exist(client, database, condition, status):
    """If-None-Exist is a search that names what must not exist: by its parameters, after a
    `[base/]Type?` too (HAPI's client and tests send `Patient?identifier=…`: it was refused). One
    naming no criterion, or a result parameter, is refused: `identifier=` left empty matched any
    patient the requester sees, and the create of another patient answered with that one."""
    patient = {"resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10",
                                                           "value": "177091305504102"}], "gender": "male"}
    first = client.post("/fhir/Patient", data=json.dumps(patient), headers=FHIR)
    attend_all(database[0])
    other = dict(patient, identifier=[{"system": "urn:oid:1.2.250.1.213.1.4.10", "value": "185067511204554"}])
    answer = client.post("/fhir/Patient", data=json.dumps(other), headers={"If-None-Exist": condition, **FHIR})
    assert answer.status_code == status, answer.json
    if status == 200:
        assert answer.json["id"] == first.json["id"]
    elif status == 201:
        assert answer.json["identifier"] == other["identifier"]
    else:
        assert answer.json["issue"][0]["diagnostics"].startswith("If-None-Exist: ")


def test_capability_statement(client):
    statement = client.get("/fhir/metadata").json
    assert statement["fhirVersion"] == "4.0.1"
    assert "https://profiles.ihe.net/ITI/MHD/CapabilityStatement/IHE.MHD.DocumentResponder" in statement["instantiates"]
    docref = next(r for r in statement["rest"][0]["resource"] if r["type"] == "DocumentReference")
    names = {p["name"] for p in docref["searchParam"]}
    assert {"patient", "patient.identifier", "status", "type", "category", "date", "period", "setting", "facility",
            "event", "security-label", "format", "related", "identifier", "creation", "author.given",
            "author.family", "isArchived", "period-start", "period-end", "_id", "_lastUpdated"} <= names


def test_health_fails_when_the_database_takes_no_writer(client, database, backend):
    """A writer holding SQLite's lock (a stalled transaction) makes /health fail, not pass."""
    if backend != "sqlite":
        pytest.skip("SQLite's single writer")
    from gateway.storage.database import write_transaction
    import threading

    held, release = threading.Event(), threading.Event()

    def hold():
        with write_transaction(database[0]):
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(10)
        response = client.get("/health")
        assert response.status_code == 503 and response.json["status"] == "fail"
    finally:
        release.set()
        holder.join(30)
    assert client.get("/health").status_code == 200


def test_health_and_metrics(client, database):
    health = client.get("/health").json
    assert health["status"] == "pass" and health["database"] == client.application.config["ENGINE"].dialect.name
    assert health["database_version"].split()[0] in ("SQLite", "PostgreSQL")
    doc(client, database)
    metrics = client.get("/metrics").data.decode()
    assert 'gateway_ingests_total{channel="cda",outcome="processed"}' in metrics
    assert "gateway_http_request_seconds_bucket" in metrics


def test_request_id_is_echoed(client):
    assert client.get("/health", headers={"X-Request-Id": "abc123"}).headers["X-Request-Id"] == "abc123"


def test_bodies_are_bounded_by_what_each_endpoint_takes(client):
    """A document where one is sent; 1 MiB anywhere else: a larger body is refused before it is read."""
    big = json.dumps({"resourceType": "Patient", "name": [{"text": "x" * (2 * 1024 * 1024)}]})
    for path in ("/fhir/Patient", "/fhir/Consent"):
        response = client.post(path, data=big, headers=FHIR)
        assert response.status_code == 413, path
    form = client.post("/fhir/DocumentReference/_search", data={"type": "x" * (2 * 1024 * 1024)})
    assert form.status_code == 413
    deep = "[" * 100_000 + "]" * 100_000
    assert client.patch("/fhir/DocumentReference/x", data=deep,
                        headers={"Content-Type": "application/json-patch+json"}).status_code in (400, 413)


def test_a_web_application_of_a_configured_origin_may_call_the_api_from_a_browser(settings, database, bearer):
    """CORS (GATEWAY_CORS_ORIGINS): the preflight of a configured origin is answered without a
    token (a browser sends none: it was 401) with the headers FHIR's interactions send, and the
    answers let the page read their version and place. Another origin, or none configured, gets
    no CORS header: the browser keeps the answer from the page."""
    from dataclasses import replace

    from gateway.app import create_app

    app = "https://app.example.test"
    preflight = {"Origin": app, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type, content-encoding, if-none-exist, prefer"}
    allowed = create_app(replace(settings, cors_origins=(app,)), database[0]).test_client()
    answer = allowed.options("/fhir/Patient", headers=preflight)
    assert answer.status_code == 200 and answer.headers["Access-Control-Allow-Origin"] == app
    assert {"authorization", "content-type", "content-encoding", "if-none-exist", "prefer"} <= {
        h.strip().lower() for h in answer.headers["Access-Control-Allow-Headers"].split(",")}
    assert {m.strip() for m in answer.headers["Access-Control-Allow-Methods"].split(",")} == {
        "GET", "HEAD", "POST", "PUT", "PATCH"}   # what the API serves: no DELETE
    assert "Access-Control-Allow-Credentials" not in answer.headers   # bearer tokens, never cookies
    created = allowed.post("/fhir/Patient", headers={"Origin": app, **FHIR, **bearer("system", sub="hospital")},
                           data=json.dumps({"resourceType": "Patient", "identifier": [{
                               "system": "urn:oid:1.2.250.1.213.1.4.10", "value": "177091305504102"}]}))
    assert created.status_code == 201 and created.headers["Access-Control-Allow-Origin"] == app
    assert {"etag", "location", "last-modified"} <= {
        h.strip().lower() for h in created.headers["Access-Control-Expose-Headers"].split(",")}
    refused = allowed.get("/fhir/Patient", headers={"Origin": app})   # no token: 401, readable by the page
    assert refused.status_code == 401 and refused.headers["Access-Control-Allow-Origin"] == app
    for client, origin in ((allowed, "https://elsewhere.example.test"),
                           (create_app(settings, database[0]).test_client(), app)):
        answer = client.options("/fhir/Patient", headers={**preflight, "Origin": origin})
        assert "Access-Control-Allow-Origin" not in answer.headers
    space = allowed.get("/connexion", headers={"Origin": app})   # the patient space is not the API's
    assert "Access-Control-Allow-Origin" not in space.headers
    assert allowed.get("/fhir/metadata").json["rest"][0]["security"]["cors"] is True
    assert create_app(settings, database[0]).test_client().get("/fhir/metadata").json["rest"][0]["security"]["cors"] is False


@pytest.mark.parametrize("form", ["json", "xml"])
def test_a_repeated_primitive_with_an_item_of_extensions_only_is_kept_and_searched(client, database, bearer, form):
    """`given: ["Jean", null, "Marc"]` with its `_given`, or in XML a `<given>` holding extensions
    only: the null was indexed as a name, a 500 at the write."""
    from gateway.fhir.formats import to_xml

    qualifier = {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-qualifier",
                                "valueCode": "CL"}]}
    patient = {"resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10",
                                                           "value": "177091305504102"}],
               "name": [{"family": "TROIS", "given": ["Jean", None, "Marc"], "_given": [None, qualifier, None]}]}
    body, content_type = ((json.dumps(patient), "application/fhir+json") if form == "json"
                          else (to_xml(patient), "application/fhir+xml"))
    created = client.post("/fhir/Patient", data=body, headers={"Content-Type": content_type,
                                                               **bearer("system", sub="hospital")})
    assert created.status_code == 201, created.data[:300]
    assert created.json["name"] == patient["name"]
    attend_all(database[0])
    found = client.get("/fhir/Patient", query_string={"given": "Marc"}).json
    assert [e["resource"]["id"] for e in found.get("entry", [])] == [created.json["id"]]


def test_summary_and_elements_subset_reads_and_searches_in_json_and_xml(client, database):
    """PDSm's OpenAPI offers _summary and _elements on every read and search: `_summary=true` was a
    400, `_elements` ignored (the whole resource), and `_summary=`, an empty value it allows, a 400."""
    from lxml import etree

    created = doc(client, database)
    path = f"/fhir/DocumentReference/{created['id']}"
    subsetted = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED",
                 "display": "subsetted"}
    summary = client.get(path, query_string={"_summary": "true"}).json
    assert "authenticator" not in summary and summary["masterIdentifier"] == created["masterIdentifier"]
    assert summary["meta"]["tag"][-1] == subsetted
    # The contained resources the kept author refers to, and those they refer to, not the authenticator's.
    assert {c["id"] for c in summary["contained"]} == {"source-patient", "author1", "author1-person",
                                                        "author1-organization"}
    assert client.get(f"{path}/_history/1", query_string={"_summary": "true"}).json == summary
    elements = client.get(path, query_string={"_elements": "description"}).json
    assert "identifier" not in elements and "authenticator" not in elements
    assert elements["custodian"] == created["custodian"]   # not asked for, but PDSm requires it
    # XML: the same subset.
    xml = etree.fromstring(client.get(path, query_string={"_summary": "true", "_format": "xml"}).data)
    ns = {"f": "http://hl7.org/fhir"}
    assert xml.find("f:authenticator", ns) is None and xml.find("f:masterIdentifier", ns) is not None
    assert xml.find("f:meta/f:tag/f:code", ns).get("value") == "SUBSETTED"

    # A search subsets its matches, not what _include adds, and its links keep the subset asked.
    found = client.get("/fhir/DocumentReference", query_string={
        "status": "current", "_elements": "identifier", "_include": "DocumentReference:subject", "_count": 1}).json
    [match] = [e["resource"] for e in found["entry"] if e["search"]["mode"] == "match"]
    [patient] = [e["resource"] for e in found["entry"] if e["search"]["mode"] == "include"]
    assert "identifier" in match and "authenticator" not in match and match["meta"]["tag"][-1] == subsetted
    assert "tag" not in patient["meta"] and "birthDate" in patient
    assert all("_elements=identifier" in link["url"] for link in found["link"])

    # The Binary's contentType without its bytes.
    binary = created["content"][0]["attachment"]["url"].replace("http://gateway.test", "")
    described = client.get(binary, query_string={"_summary": "true"}, headers={"Accept": "application/fhir+json"}).json
    assert "data" not in described and described["contentType"] == "text/xml"

    # Empty values ask for nothing; what cannot be honoured is a 400 that says why.
    assert client.get(f"{path}?_summary=&_elements=").json == created
    assert client.get("/fhir/DocumentReference?status=current&_summary=&_elements=").status_code == 200
    for query, said in (("_summary=yes", "not 'yes'"),
                        ("_elements=stauts", "_elements: stauts is not an element of DocumentReference"),
                        ("_summary=true&_elements=date", "give one of them")):
        for target in (path, "/fhir/DocumentReference"):
            refused = client.get(f"{target}?{query}")
            assert refused.status_code == 400 and said in refused.json["issue"][0]["diagnostics"], (target, query)


def test_a_path_ending_in_a_slash_is_the_path_without_it(client, database):
    """`GET /fhir/DocumentReference/?status=current` (a base URL ending in a slash, a query typed by
    hand) was a 404 asking to check the spelling; HAPI answers it as the search. A path served
    nowhere is a 404 that names it."""
    created = doc(client, database)
    assert client.get("/fhir/DocumentReference/?status=current").json["total"] == 1
    assert client.get(f"/fhir/DocumentReference/{created['id']}/").json["id"] == created["id"]
    assert client.get("/fhir/metadata/").json["resourceType"] == "CapabilityStatement"
    nowhere = client.get("/fhir/DocumentReference/x/y/z")
    assert nowhere.status_code == 404 and nowhere.json["issue"][0]["diagnostics"] == \
        "nothing is served at /fhir/DocumentReference/x/y/z"


@pytest.mark.parametrize("method, path, said", [
    ("GET", "/fhir/Patient/$everything", "the operation $everything is not served"),
    ("POST", "/fhir/DocumentReference/123/$validate", "the operation $validate is not served"),
    ("GET", "/fhir/Patient/123/$everything", "the operation $everything is not served"),
    ("GET", "/fhir/$export", "the operation $export is not served"),
    ("GET", "/fhir?_type=Patient", "a search of every type at once is not served"),
    ("GET", "/fhir/_history", "the history of the whole server is not served")])
def test_what_r4_defines_and_this_server_does_not_serve_is_said(client, method, path, said):
    """Patient/$everything was read as a Patient of id "$everything" (404 "is not known"), $export as
    a resource type, a search of every type a werkzeug 405 "The method is not allowed"."""
    answer = client.open(path, method=method, data="{}", headers=FHIR)
    assert answer.status_code == 404 and answer.json["issue"][0]["code"] == "not-supported"
    assert answer.json["issue"][0]["diagnostics"].startswith(said), answer.json
