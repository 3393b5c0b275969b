"""A bounded fuzz of every entry: random JSON bodies on each FHIR write, mutated FHIRPath Patches,
random request headers, random search parameters, random operator queries, random XML to /cda and as
FHIR XML, mutated HL7v2 messages and batches, byte streams to the MLLP listener, and the patient space's forms
and pages. No input may get a 5xx, on either backend: PostgreSQL refuses what SQLite keeps (a NUL, a
string longer than its column), which the fuzz ran on SQLite alone did not see. The default run is
short enough for `make test`; `make fuzz` runs GATEWAY_FUZZ_EXAMPLES (default 2,000) per target."""
import io
import json
import os
import re
import socket
import time
from datetime import datetime
from urllib.parse import quote, urlsplit

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from conftest import GP, REPORT, ROOT, SAMPLES, attend_all, every_version, patch_operation, patch_parameters
from test_patient_space import MARTIN, PASSWORD, csrf, fed_with_accounts, sign_in

from gateway.hl7v2 import mllp
from gateway.storage.schema import raw_inputs

EXAMPLES = int(os.environ.get("GATEWAY_FUZZ_EXAMPLES", "200"))
TRIED = {"inputs": 0, "5xx": 0, "slowest_ms": 0.0}
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=False),
                    st.text(max_size=30), st.sampled_from(["", "²", "١٢", "current", "Patient/x", "urn:uuid:1",
                                                           "\r\n", "../..", "%00", "\x00", "9" * 300,
                                                           "9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+14:00"]))
keys = st.one_of(st.text(max_size=12), st.sampled_from(
    ["resourceType", "entry", "resource", "request", "method", "url", "subject", "reference", "content",
     "attachment", "data", "contentType", "type", "masterIdentifier", "value", "system", "provision", "category",
     "coding", "code", "securityLabel", "status", "id", "fullUrl", "identifier", "relatesTo", "target", "op", "path"]))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(keys, inner, max_size=5)), max_leaves=25)
# A date search value anywhere in the years 1 to 9999, at any precision, with offsets past FHIR's.
dates = st.builds(lambda prefix, moment, length, offset: f"{prefix}{moment.isoformat()[:length]}{offset}",
                  st.sampled_from(["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"]),
                  st.one_of(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)),
                            st.sampled_from([datetime(1, 1, 1), datetime(9999, 12, 31, 23, 59, 59)])),
                  st.sampled_from([4, 7, 10, 16, 19]),
                  st.sampled_from(["", "Z", "+14:00", "-12:00", "+24:00", "-00:60"]))
resource_types = st.sampled_from(["Bundle", "DocumentReference", "Patient", "Consent", "Parameters", "List", "X"])
resources = st.builds(lambda t, body: {**(body if isinstance(body, dict) else {"x": body}), "resourceType": t},
                      resource_types, json_values)


def send(client, method: str, path: str, **kwargs):
    started = time.perf_counter()
    response = client.open(path, method=method, **kwargs)
    TRIED["slowest_ms"] = max(TRIED["slowest_ms"], (time.perf_counter() - started) * 1000)
    TRIED["inputs"] += 1
    if response.status_code >= 500:
        TRIED["5xx"] += 1
    assert response.status_code < 500, (method, path, kwargs.get("data", kwargs.get("query_string")), response.data[:500])
    return response


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    REPORT.append(f"fuzz: {TRIED['inputs']} inputs tried, {TRIED['5xx']} 5xx, 0 stalls "
                  f"(slowest answer {TRIED['slowest_ms']:.0f} ms)")


def test_random_fhir_bodies(client, bearer):
    patient = bearer("patient", patient="185067511204554")

    @FUZZ
    @given(body=st.one_of(resources, json_values), target=st.sampled_from([
        ("POST", "/fhir", None), ("POST", "/fhir/DocumentReference", None), ("POST", "/fhir/Patient", None),
        ("POST", "/fhir/Consent", "patient"), ("PUT", "/fhir/Consent/x", "patient"),
        ("PATCH", "/fhir/DocumentReference/x", None), ("PATCH", "/fhir/DocumentReference?identifier=a|b", None)]))
    # Found by test_long_values: a resource of an unknown type inside a Bundle (fhir.resources' KeyError).
    @example(body={"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": {"resourceType": "Nope"}}]},
             target=("POST", "/fhir", None))
    def run(body, target):
        method, path, who = target
        content_type = "application/json-patch+json" if method == "PATCH" else "application/fhir+json"
        headers = {"Content-Type": content_type, **(patient if who else {})}
        send(client, method, path, data=json.dumps(body), headers=headers)

    run()


def _nodes(value, path=()):
    """Every place in a JSON value: the paths to its members and items."""
    if isinstance(value, dict):
        for key, member in value.items():
            yield path + (key,)
            yield from _nodes(member, path + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield path + (index,)
            yield from _nodes(item, path + (index,))


LEFT_OUT = object()
GIVEN_TWICE = object()   # an item of a list given again after the others
# A string with something at its edges or inside (… stands for the string): each found a value that
# the models took and the official check did not (a uri with a space, an accented MIME type).
EDGES = ["… ", " …", "…\n", "…é", "… …", "…" + "x" * 300]


def mutate(body, place: tuple, value):
    """Change a JSON body at `place`: the member or item left out, an item given twice, a string
    changed at its edges (EDGES), or the value replaced; what was done, to name the change."""
    *parents, last = place
    container = body
    for step in parents:
        container = container[step]
    if value is LEFT_OUT:
        del container[last]
        return "left out"
    if value is GIVEN_TWICE:
        if isinstance(container, list):
            container.append(json.loads(json.dumps(container[last])))
        return "given twice"
    if value in EDGES and isinstance(container[last], str):
        value = container[last] = value.replace("…", container[last])
    elif value not in EDGES:
        container[last] = value
    return value


EXAMPLES_DIR = ROOT.parent / "shared" / "reference" / "pdsm4dmp" / "input" / "examples"
DEFINITIONS = ROOT.parent / "shared" / "fhir-definitions"


def cda_submission(name: str):
    """An ITI-65 submission of a sample CDA, the document under an id of its own for each n."""
    from gateway.demo import build_submission

    cda = (SAMPLES / "cda" / name).read_text()
    root = cda.split('<id root="', 1)[1].split('"', 1)[0]
    return lambda n: build_submission(cda.replace(root, f"1.2.250.1.213.1.1.9.98.{n}").encode(), 5 * 1024 * 1024)


def with_folder(submission):
    """The submission with a Folder of its document, under a uniqueId of its own, listed by the SubmissionSet."""
    def body(n: int) -> dict:
        bundle = submission(n)
        bundle["entry"][0]["resource"]["entry"].append({"item": {"reference": "urn:uuid:folder"}})
        bundle["entry"].append({"fullUrl": "urn:uuid:folder", "request": {"method": "POST", "url": "List"},
                                "resource": {
            "resourceType": "List", "status": "current", "mode": "working", "title": "Suivi",
            "identifier": [{"use": "usual", "system": "urn:ietf:rfc:3986", "value": f"urn:oid:1.2.250.1.999.7.{n}"}],
            "code": {"coding": [{"system": "https://profiles.ihe.net/ITI/MHD/CodeSystem/MHDlistTypes",
                                 "code": "folder"}]},
            "date": "2026-12-01T10:00:00+01:00", "entry": [{"item": {"reference": bundle["entry"][1]["fullUrl"]}}]}})
        return bundle
    return body


def guide_example(name: str):
    """The PDSM4DMP example: its patient made the samples' (the guide's INS has a wrong key), its
    document id its own for each n."""
    text = (EXAMPLES_DIR / name).read_text().replace("urn:oid:1.2.250.1.213.1.4.8|123456789012345",
                                                     "urn:oid:1.2.250.1.213.1.4.10|185067511204554")
    return lambda n: json.loads(text.replace("urn:oid:1.2.250.1.213.1.4.8.99999.", f"urn:oid:1.2.250.1.213.1.4.8.9999{n}."))


def fr_core_patient(n: int) -> dict:
    """FR Core's example Patient, under an INS of its own (its own INS has a wrong key)."""
    patient = json.loads((DEFINITIONS / "frcore" / "package" / "example" / "Patient-ExampleFRCorePatient001.json")
                         .read_text())
    number = 1850675110000 + n
    patient["identifier"][0]["value"] = f"{number}{97 - number % 97:02d}"
    return patient


def submission_bodies() -> list:
    """(path, body for n) of the valid ITI-65 submissions the fuzz changes."""
    bodies = [("/fhir", cda_submission(name)) for name in ("cr-biologie-martin.xml", "ldl-ses-martin.xml")]
    bodies.append(("/fhir", with_folder(cda_submission("cr-biologie-martin.xml"))))
    if EXAMPLES_DIR.exists():
        bodies.append(("/fhir", guide_example("Bundle-example-td2-iti65-lot-soumission.json")))
    return bodies


def _kept_pass_the_profiles(client, database, kept, written) -> None:
    """What the fuzz kept passes the official profiles. `written` maps what a transaction wrote to
    the change that made it, and `kept` what a POST answered with to its change: a failure names
    the change, as hypothesis cannot (the check runs once, after every example)."""
    import profiles

    attend_all(database[0])
    for location, change in written.items():
        if location.startswith(("DocumentReference/", "List/")):
            resource = send(client, "GET", f"/fhir/{location}").json
            kept[f"{resource['resourceType']}-{resource['id']}"] = (resource, change)
    if not profiles.available():
        return
    collected = profiles.Collected()
    for resource, _ in kept.values():
        collected.add(resource)
    errors = collected.errors()
    made_by = {name: f"{name} made by {change!r}:\n{json.dumps(resource, ensure_ascii=False)[:3000]}"
               for name, (resource, change) in kept.items()}
    assert not errors, "\n".join(errors + sorted({made_by[name] for error in errors for name in made_by
                                                   if f"-{name}.json " in error}))


def json_bodies(bearer) -> list:
    """(path, headers, body for n) of every valid JSON body the fuzz changes."""
    from gateway.services.consents import decision

    patient = bearer("patient", patient="185067511204554")
    bodies = [(path, {}, body) for path, body in submission_bodies()]
    if (DEFINITIONS / "frcore").exists():
        bodies.append(("/fhir/Patient", {}, fr_core_patient))
    bodies.append(("/fhir/Consent", patient, lambda n: decision("professional", "deny", "899900000012")))
    if EXAMPLES_DIR.exists():
        bodies.append(("/fhir/DocumentReference", {}, guide_example("DocumentReference-example-td2-iti105-publication-"
                                                                    "simplifiee.json")))
    return bodies


ABSENT = {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}]}


def extensions_only(changed: dict, place: tuple) -> bool:
    """The primitive at `place` given as FHIR's JSON gives one with extensions only: a null in its
    list, aligned with the `_` list beside it, or its `_` member alone. False where there is no
    primitive (an object, a list, a resource's type)."""
    *parents, last = place
    container = changed
    for step in parents:
        container = container[step]
    if isinstance(container[last], (dict, list)):
        return False
    if isinstance(container, list):
        if not parents or not isinstance(parents[-1], str):
            return False
        holder = changed
        for step in parents[:-1]:
            holder = holder[step]
        container[last] = None
        holder["_" + parents[-1]] = [ABSENT if index == last else None for index in range(len(container))]
        return True
    if last in ("resourceType", "url") or last.startswith("_"):
        return False
    del container[last]
    container["_" + last] = ABSENT
    return True


def _written(response, change, kept: dict, written: dict) -> None:
    """What a POST made, by the change that made it: a created resource, or a transaction's."""
    if response.status_code == 201:
        kept[f"{response.json['resourceType']}-{response.json['id']}"] = (response.json, change)
    elif response.status_code == 200 and response.json.get("type") == "transaction-response":
        written.update((e["response"]["location"].rsplit("/_history/", 1)[0], change)
                       for e in response.json["entry"] if e["response"]["status"] == "201 Created")


def test_every_primitive_given_with_extensions_only(client, bearer, database):
    """Each primitive of each body, one at a time, given with extensions only (a data-absent-reason),
    as FHIR's JSON allows: refused, or kept as the official profiles pass it. Found by this sweep: a
    name's given so was a 500 at the write that indexed it, and a SubmissionSet's profile so was
    kept as a bare null."""
    bodies = json_bodies(bearer)
    assert send(client, "POST", "/cda", data=(SAMPLES / "cda" / "ldl-ses-martin.xml").read_bytes(),
                headers={"Content-Type": "application/xml"}).status_code == 201   # the patient's record
    kept, written = {}, {}
    for index, (path, headers, body) in enumerate(bodies):
        for place in _nodes(body(0)):
            changed = body(TRIED["inputs"])
            if extensions_only(changed, place):
                response = send(client, "POST", path, data=json.dumps(changed),
                                headers={"Content-Type": "application/fhir+json", **headers})
                _written(response, (index, place, "extensions only"), kept, written)
    _kept_pass_the_profiles(client, database, kept, written)


def test_mutated_fhir_submissions(client, bearer, database):
    """Valid bodies with one place changed to any JSON value, left out, given twice (an item of a
    list) or, a string, changed at its edges (EDGES), each under a document id of its own: they
    reach the checks and mappings behind the models' own, which random bodies do not. What is kept
    must pass the official profiles. Found by this test: a DocumentReference's category null in an
    ITI-65 submission (a 500); a SubmissionSet without a date, with a status other than current or
    an identifier without a system; a document's uniqueId without its system, or two classes; a
    Patient claiming FR Core's INS profile without what it requires; and, by a sweep of the same
    changes at every place, a Consent's uri with a space, an accented contentType and an FR Core
    extension's part given twice: each registered, and failing the profiles."""
    bodies = json_bodies(bearer)
    places = [list(_nodes(body(0))) for _, _, body in bodies]
    assert send(client, "POST", "/cda", data=(SAMPLES / "cda" / "ldl-ses-martin.xml").read_bytes(),
                headers={"Content-Type": "application/xml"}).status_code == 201   # the patient's record
    kept, written = {}, {}

    @FUZZ
    @given(index=st.integers(0, len(bodies) - 1), place=st.integers(0, 10**6),
           value=st.one_of(st.just(LEFT_OUT), st.just(GIVEN_TWICE), st.just(None), st.just({}), st.just([]),
                           st.sampled_from(EDGES), json_values))
    def run(index, place, value):
        path, headers, body = bodies[index]
        changed = body(TRIED["inputs"])
        at = places[index][place % len(places[index])]
        change = (index, at, mutate(changed, at, value))
        response = send(client, "POST", path, data=json.dumps(changed),
                        headers={"Content-Type": "application/fhir+json", **headers})
        _written(response, change, kept, written)

    run()
    _kept_pass_the_profiles(client, database, kept, written)


VISIBILITY = "https://mos.esante.gouv.fr/NOS/TRE_A07-StatutVisibiliteDocument/FHIR/TRE-A07-StatutVisibiliteDocument"
IS_ARCHIVED = "https://interop.esante.gouv.fr/ig/fhir/pdsm/StructureDefinition/pdsm-ext-is-archived"
MASKING = {"coding": [{"system": VISIBILITY, "code": "MASQUE_PS"}]}


# The FHIRPath Patches of a document's changes (TD3.3a, TD3.3d), in each form a path takes.
FHIRPATH_PATCHES = [patch_parameters(operation) for operation in (
    patch_operation("add", "DocumentReference", name="securityLabel", valueCodeableConcept=MASKING),
    patch_operation("delete", "DocumentReference.securityLabel.where(coding.code = 'MASQUE_PS')"),
    patch_operation("replace", "DocumentReference.securityLabel[0]", valueCodeableConcept={
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"}]}),
    patch_operation("add", "DocumentReference", name="extension", value_parts=[
        {"name": "url", "valueUri": IS_ARCHIVED}, {"name": "value", "valueBoolean": True}]),
    patch_operation("replace", f"DocumentReference.extension('{IS_ARCHIVED}').value", valueBoolean=False),
    patch_operation("insert", "DocumentReference.securityLabel", index=0, valueCodeableConcept=MASKING),
    patch_operation("move", "DocumentReference.securityLabel", source=0, destination=1),
)]


def test_mutated_fhirpath_patches(client, bearer, database):
    """A document's FHIRPath Patches (masking, unmasking, archiving) with one place changed to any
    JSON value, left out, given twice or changed at its edges, sent by its patient and by their
    attending doctor:
    a refusal or the patched document, never a 5xx, and what each patch kept passes the official
    profiles."""
    document = send(client, "POST", "/cda", data=(SAMPLES / "cda" / "ldl-ses-martin.xml").read_bytes(),
                    headers={"Content-Type": "application/xml"})
    assert document.status_code == 201, document.json
    url = f"/fhir/DocumentReference/{document.json['id']}"
    attend_all(database[0])
    requesters = [bearer("patient", patient="185067511204554"), bearer("doctor", sub=GP)]
    places = [list(_nodes(body)) for body in FHIRPATH_PATCHES]
    kept = {}

    @FUZZ
    @given(index=st.integers(0, len(FHIRPATH_PATCHES) - 1), place=st.integers(0, 10**6), who=st.integers(0, 1),
           value=st.one_of(st.just(LEFT_OUT), st.just(GIVEN_TWICE), st.sampled_from(EDGES), json_values))
    def run(index, place, who, value):
        changed = json.loads(json.dumps(FHIRPATH_PATCHES[index]))
        at = places[index][place % len(places[index])]
        change = (index, at, mutate(changed, at, value))
        response = send(client, "PATCH", url, data=json.dumps(changed),
                        headers={"Content-Type": "application/fhir+json", **requesters[who]})
        if response.status_code == 200 and response.json.get("resourceType") == "DocumentReference":
            kept[f"DocumentReference-{response.json['id']}-{response.json['meta']['versionId']}"] = (
                response.json, change)

    run()
    _kept_pass_the_profiles(client, database, kept, {})


def _element(root, place: int):
    """One element below the root, by its place in document order (wrapping around)."""
    elements = [e for e in root.iter() if isinstance(e.tag, str) and e is not root]
    return elements[place % len(elements)]


def _change_structure(element, change: str, move_to) -> None:
    """An element left out, given twice, moved to the end of `move_to`, or stripped of its attributes."""
    import copy

    parent = element.getparent()
    if change == "leave out":
        parent.remove(element)
    elif change == "give twice":
        parent.insert(parent.index(element), copy.deepcopy(element))
    elif change == "move":
        move_to.append(element)
    else:
        assert change == "strip", change
        element.attrib.clear()


def test_mutated_fhir_xml_submissions(client, database):
    """The same submissions in FHIR's XML, read by the gateway's own reader (xml_reader), with one
    element left out, given twice, moved to its parent's end, stripped of its attributes, or given
    another value or an attribute FHIR does not have: refused, or kept as the official profiles
    pass it."""
    from lxml import etree

    from gateway.fhir.formats import to_xml

    bodies = submission_bodies()
    assert send(client, "POST", "/cda", data=(SAMPLES / "cda" / "ldl-ses-martin.xml").read_bytes(),
                headers={"Content-Type": "application/xml"}).status_code == 201   # the patient's record
    kept, written = {}, {}
    values = st.one_of(st.text(max_size=20), st.sampled_from(
        ["", " ", "true", "-1", "1.5", "9" * 30, "2026-13-01", "2026", "urn:uuid:x", "current", "POST", "PUT",
         "List", "Patient/x", "#", "urn:oid:1.2.3", "text/xml"]))

    @FUZZ
    @given(index=st.integers(0, len(bodies) - 1), place=st.integers(0, 10**6),
           change=st.sampled_from(["leave out", "give twice", "move", "strip", "value", "attribute"]), value=values)
    def run(index, place, change, value):
        path, body = bodies[index]
        root = etree.fromstring(to_xml(body(TRIED["inputs"])))
        element = _element(root, place)
        try:
            if change == "value":
                element.set("value", value)
            elif change == "attribute":
                element.set("unknown", value)
            else:   # moved to its parent's end: out of FHIR's order
                _change_structure(element, change, element.getparent())
        except ValueError:   # a character XML cannot hold
            return
        response = send(client, "POST", path, data=etree.tostring(root, xml_declaration=True, encoding="UTF-8"),
                        headers={"Content-Type": "application/fhir+xml", "Accept": "application/fhir+json"})
        if response.status_code == 200 and response.json.get("type") == "transaction-response":
            change = (index, root.getroottree().getpath(element), change, value)
            written.update((e["response"]["location"].rsplit("/_history/", 1)[0], change)
                           for e in response.json["entry"] if e["response"]["status"] == "201 Created")

    run()
    _kept_pass_the_profiles(client, database, kept, written)


def test_mutated_cda_documents(client):
    """Valid CDA with one element left out, given twice, moved, stripped of its attributes, or
    one attribute or text changed, each under an id of its own: refused, or registered as a
    DocumentReference that the official profiles pass. Found by this test: a document without
    languageCode, a care facility type or a practice setting was registered, and failed them."""
    import profiles
    from lxml import etree

    documents = [path.read_bytes() for path in sorted((SAMPLES / "cda").glob("*.xml"))]
    kept = profiles.Collected()
    texts = st.one_of(st.text(max_size=20), st.sampled_from(
        ["", " ", "-1", "9" * 30, "20261301", "2026", "1.2.250.1.213.1.4.10", "urn:uuid:x", "N", "R", "V",
         "19000101000000+2400", "text/xml", "application/pdf"]))

    @FUZZ
    @given(index=st.integers(0, len(documents) - 1), place=st.integers(0, 10**6),
           change=st.sampled_from(["leave out", "give twice", "move", "strip", "attribute", "text"]),
           attribute=st.sampled_from(["root", "extension", "code", "codeSystem", "value", "nullFlavor", "mediaType",
                                      "representation", "typeCode", "qualifier"]), text=texts)
    def run(index, place, change, attribute, text):
        root = etree.fromstring(documents[index])
        root.find("{urn:hl7-org:v3}id").set("root", f"1.2.250.1.213.1.1.9.99.{TRIED['inputs']}")
        element = _element(root, place)
        try:
            if change == "attribute":
                element.set(attribute, text)
            elif change == "text":
                element.text = text
            else:   # moved to the document's end
                _change_structure(element, change, root)
        except ValueError:   # a character XML cannot hold
            return
        response = send(client, "POST", "/cda", data=etree.tostring(root, xml_declaration=True, encoding="UTF-8"),
                        headers={"Content-Type": "application/xml"})
        if response.status_code == 201:
            kept.add(response.json)

    run()
    if profiles.available():
        errors = kept.errors()
        assert not errors, "\n".join(errors)


def test_random_search_parameters(client):
    @FUZZ
    @given(res_type=st.sampled_from(["DocumentReference", "AuditEvent", "Patient", "List", "Consent"]),
           params=st.lists(st.tuples(st.one_of(st.sampled_from(
               ["patient", "patient.identifier", "status", "type", "date", "_count", "_sort", "_cursor", "_include",
                "_revinclude", "_summary", "identifier", "author.family", "_id", "_lastUpdated", "security-label",
                "_format", "isArchived", "period", "code", "title", "source.family", "source:Patient.given:exact",
                "source:PractitionerRole.practitioner:Practitioner.family", "source:x:y"]), st.text(max_size=10)),
               st.one_of(st.text(max_size=40), dates,
                         st.sampled_from(["²", "-1", "9" * 30, "ge2026-13-45", "eyJrIjpbXX0.x", "a|b|c", ",,,", "xml",
                                          "DocumentReference:subject", "a\x00", "9" * 300,
                                          ",".join(["date", "-date"] * 60)]))),
               max_size=5))
    # Found by this test: a control character echoed in an XML OperationOutcome (XML cannot hold it).
    @example(res_type="DocumentReference", params=[("date", "\x08"), ("_format", "xml")])
    def run(res_type, params):
        send(client, "GET", f"/fhir/{res_type}", query_string=params)

    run()


def test_random_reads_and_versions(client, database):
    """Found by this test: a version past the column's range (2^31 on PostgreSQL) was a 500."""
    document = client.post("/cda", data=(SAMPLES / "cda" / "ldl-ses-martin.xml").read_bytes(),
                           headers={"Content-Type": "application/xml"}).json["id"]
    attend_all(database[0])   # the reader sees the document: its versions are looked up

    @FUZZ
    @given(res_type=st.sampled_from(["DocumentReference", "Binary", "Patient", "List", "AuditEvent", "Consent"]),
           res_id=st.one_of(st.just(document), st.text(min_size=1, max_size=70)),
           version=st.one_of(st.none(), st.integers(-1, 2**70).map(str), st.sampled_from([str(2**31), str(2**63)]),
                             st.text(max_size=12)))
    def run(res_type, res_id, version):
        history = "" if version is None else f"/_history/{quote(version, safe='')}"
        send(client, "GET", f"/fhir/{res_type}/{quote(res_id, safe='')}{history}")

    run()


def test_random_operator_queries(client, bearer):
    admin = bearer("admin", sub="operator")
    numbers = st.one_of(st.integers(-2**70, 2**70).map(str), st.text(max_size=12))

    @FUZZ
    @given(path=st.sampled_from(["/hl7v2/messages", "/documents/received"]),
           params=st.lists(st.tuples(st.sampled_from(["_count", "before", "status"]), st.one_of(
               numbers, st.sampled_from(["failed", "received", "processed", "refused"]))), max_size=3),
           raw_id=st.one_of(st.none(), st.integers(0, 2**70)), reprocess=st.booleans())
    def run(path, params, raw_id, reprocess):
        if raw_id is None:
            send(client, "GET", path, query_string=params, headers=admin)
        else:
            send(client, "POST" if reprocess else "GET", f"{path}/{raw_id}" + ("/reprocess" if reprocess else ""),
                 headers=admin)

    run()


def test_random_request_headers(client, bearer, database):
    """The FHIR, CDA and HL7v2 entries with random request headers (content negotiation, conditional
    requests, Prefer, encodings, a proxy's): an answer, never a 5xx."""
    cda = (SAMPLES / "cda" / "ldl-ses-martin.xml").read_bytes()
    document = client.post("/cda", data=cda, headers={"Content-Type": "application/xml"}).json["id"]
    attend_all(database[0])
    system = bearer("system", sub="fuzz")
    requests = {   # target: (body, headers it is sent with unless the example gives others)
        ("GET", f"/fhir/DocumentReference/{document}"): (None, {}),
        ("GET", "/fhir/DocumentReference?status=current"): (None, {}), ("GET", "/fhir/metadata"): (None, {}),
        ("GET", "/fhir/AuditEvent"): (None, {}), ("GET", "/health"): (None, {}),
        ("POST", "/fhir/Patient"): (b'{"resourceType": "Patient", "name": [{"family": "X"}]}',
                                    {"Content-Type": "application/fhir+json"}),
        ("PATCH", f"/fhir/DocumentReference/{document}"): (
            b'[{"op": "add", "path": "/securityLabel/-", "value": {"coding": [{"system": "x", "code": "y"}]}}]',
            {"Content-Type": "application/json-patch+json"}),
        ("POST", "/cda"): (cda, {"Content-Type": "application/xml"}),
        ("POST", "/hl7v2"): (b"MSH|^~\\&|A|B|C|D|20260101||ADT^A28|X1|P|2.5\rPID|1||1^^^CH&1.2.3&ISO^PI||X^Y\r",
                             {"Content-Type": "x-application/hl7-v2+er7", **system})}
    names = ["Accept", "Content-Type", "Content-Encoding", "If-Match", "If-None-Match", "If-None-Exist",
             "If-Modified-Since", "Prefer", "X-Request-Id", "Accept-Charset", "Accept-Encoding", "Origin",
             "X-Forwarded-For", "X-Forwarded-Proto", "Forwarded", "Range"]
    values = st.one_of(st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=60), st.sampled_from([
        "application/fhir+json", "application/fhir+xml; charset=iso-8859-1", "application/json;q=0", "*/*;q=abc",
        "text/html, application/xhtml+xml;q=0.9", 'W/"1"', '"1"', "*", 'W/"99999999999999999999"', 'W/"', "",
        "identifier=urn:oid:1.2|x", "identifier=", "return=minimal", "return=OperationOutcome",
        "return=representation; respond-async", "gzip", "deflate, br", "identity;q=0", "x" * 5000,
        "Thu, 01 Jan 1970 00:00:00 GMT", "Fri, 31 Dec 9999 23:59:59 GMT", "yesterday", "bytes=-1",
        "1.2.3.4, ::1", "for=1.2.3.4;proto=https"]))

    @FUZZ
    @given(target=st.sampled_from(sorted(requests)),
           headers=st.dictionaries(st.sampled_from(names), values, max_size=4))
    def run(target, headers):
        (method, path), (body, usual) = target, requests[target]
        send(client, method, path, data=body, headers={**usual, **headers})

    run()


def test_random_xml(client):
    @FUZZ
    @given(text=st.one_of(st.text(max_size=200), st.builds(
        lambda tag, inner, doctype: f'<?xml version="1.0"?>{doctype}<{tag} xmlns="urn:hl7-org:v3">{inner}</{tag}>',
        st.sampled_from(["ClinicalDocument", "Patient", "x"]), st.text(max_size=50),
        st.sampled_from(["", "<!DOCTYPE x>", '<!DOCTYPE x [<!ENTITY e "y">]>']))),
        target=st.sampled_from([("/cda", "application/xml"), ("/fhir/Patient", "application/fhir+xml"),
                                ("/fhir", "application/fhir+xml")]))
    def run(text, target):
        path, content_type = target
        send(client, "POST", path, data=text.encode("utf-8", "surrogatepass"), headers={"Content-Type": content_type})

    run()


def test_mutated_hl7v2_messages(client, bearer, database):
    """Sample messages with bytes changed: an ACK, never a 5xx or an internal error; and what they
    kept passes the official profiles."""
    import profiles

    system = bearer("system", sub="fuzz")
    messages = [path.read_bytes() for path in sorted((SAMPLES / "hl7v2").glob("*.hl7"))]

    @FUZZ
    @given(index=st.integers(0, len(messages) - 1), cuts=st.lists(st.tuples(
        st.integers(0, 2000), st.one_of(st.binary(max_size=8), st.sampled_from(
            [b"\\X00\\", b"\\X4100\\", b"\\X0D0A\\", b"\\E\\", b"\\XZZ\\", b"\x00", b"\xa0", b"\xc2\xa0"]))),
        max_size=4))
    def run(index, cuts):
        # Its own control id: a copy of an earlier example would be answered with its first ACK.
        head, rest = messages[index][:4000].split(b"|", 10)[:10], messages[index][:4000].split(b"|", 10)[10:]
        data = bytearray(b"|".join(head[:9] + [b"F%d" % TRIED["inputs"]] + rest))
        for position, insert in cuts:
            position %= max(len(data), 1)
            data[position:position + len(insert)] = insert
        response = send(client, "POST", "/hl7v2", data=bytes(data),
                        headers={"Content-Type": "x-application/hl7-v2+er7", **system})
        assert response.status_code in (200, 204, 400, 413)
        # A failure is an ACK, not a 5xx: kept as failed, it is an input this gateway cannot keep.
        assert b"internal error: the message" not in response.data, (bytes(data), response.data)
        assert b"\x00" not in response.data, (bytes(data), response.data)   # no HL7v2 field holds one

    run()
    attend_all(database[0])
    collected = profiles.Collected()   # every version: each message's identity, as it was kept
    for res_type, res_id, version in every_version(database[0], ["Patient", "DocumentReference", "List"]):
        read = send(client, "GET", f"/fhir/{res_type}/{res_id}/_history/{version}")
        if read.status_code == 200:
            collected.add(read.json)
    if profiles.available():
        errors = collected.errors()
        assert not errors, "\n".join(errors)


def test_mutated_hl7v2_batches(client, bearer, database):
    """Batches of sample messages with their envelope changed: a header or trailer left out, given
    twice or moved, a count any number, a message cut or its segments out of place. The answer is
    a batch of ACKs, never a 5xx or an internal error, and never half a batch: one that is not whole
    is kept raw once and none of its messages is."""
    system = bearer("system", sub="fuzz")
    messages = [path.read_bytes().replace(b"\n", b"\r").strip(b"\r") + b"\r"
                for path in sorted((SAMPLES / "hl7v2").glob("*.hl7"))]
    counts = st.one_of(st.integers(0, 5), st.sampled_from([b"", b"x", b"-1", b"9" * 30]))

    @FUZZ
    @given(chosen=st.lists(st.integers(0, len(messages) - 1), max_size=4), batch_count=counts, file_count=counts,
           changes=st.lists(st.tuples(st.sampled_from(["drop", "twice", "first", "last", "cut"]), st.integers(0, 20)),
                            max_size=3))
    def run(chosen, batch_count, file_count, changes):
        sent = [re.sub(rb"^((?:[^|\r]*\|){9})[^|\r]*", rb"\g<1>" + b"B%d-%d" % (TRIED["inputs"], n), messages[i])
                for n, i in enumerate(chosen)]
        parts = [b"FHS|^~\\&|GAM|CH||||||||F1\r", b"BHS|^~\\&|GAM|CH||||||||B1\r", *sent,
                 b"BTS|%s\r" % str(batch_count).encode(), b"FTS|%s\r" % str(file_count).encode()]
        for change, at in changes:
            part = parts[at % len(parts)] if parts else b""
            if change == "drop" and parts:
                parts.remove(part)
            elif change == "twice":
                parts.insert(at % (len(parts) + 1), part)
            elif change in ("first", "last") and parts:
                parts.remove(part)
                parts.insert(0 if change == "first" else len(parts), part)
            elif change == "cut" and parts:
                parts[at % len(parts)] = part[:len(part) // 2]
        before = _raw_inputs(database)
        response = send(client, "POST", "/hl7v2", data=b"".join(parts),
                        headers={"Content-Type": "x-application/hl7-v2+er7", **system})
        assert response.status_code in (200, 204, 400), response.data[:500]
        assert b"internal error: the message" not in response.data, (parts, response.data)
        kept = _raw_inputs(database)[len(before):]
        if b"the batch is not whole" in response.data:
            assert [status for status, _ in kept] == ["refused"], (parts, kept)

    run()


def _raw_inputs(database) -> list[tuple[str, str | None]]:
    with database[0].connect() as conn:
        return [tuple(row) for row in conn.execute(select(raw_inputs.c.status, raw_inputs.c.control_id)
                                                   .order_by(raw_inputs.c.id))]


def test_random_patient_space_forms(app, settings, client, bearer, database):
    """Every form and page of the patient space, signed in, and its sign-in pages, by a visitor:
    each form filled in as its page asks, with fields changed, left out or added, random files,
    links and referrers. A page or a message, never a 5xx, a redirection only to the space's own
    pages; and what the forms kept (decisions, contacts, documents, labels) passes the official
    profiles."""
    import profiles

    record = fed_with_accounts(client, bearer, database[0])
    browser, visitor = sign_in(app, settings), app.test_client()   # Paul signed in; someone who is not
    tokens = {browser: csrf(browser.get("/documents").text), visitor: csrf(visitor.get("/connexion").text)}
    documents = [record["ldl-ses-martin.xml"], record["cr-biologie-martin.xml"]]
    filled_in = {   # each form as its page sends it: a field's choices (its page's list), or its value
        "POST /espace-personnel/documents": {"titre": "Mes directives", "type": ["EXPPAT_3", "EXPPAT_2"]},
        "POST /espace-personnel/contacts": {"nom": "DUPONT", "prenom": "Marie", "lien": ["SIB", "PRN", "FRND"],
                                            "telephone": "06 01 02 03 04"},
        "POST /espace-personnel/contacts/{}/retirer": {"confirmation": "oui"},
        "POST /documents/{}/masquage": {"label": ["MASQUE_PS", "INVISIBLE_REPRESENTANTS_LEGAUX"],
                                        "action": ["masquer", "demasquer"], "confirmation": "oui"},
        "POST /dossier/verifier": {}, "POST /dossier/notifications": {"notifications": ["oui", "non"]},
        "POST /dossier/fermer": {"confirmation": "oui"}, "POST /dossier/rouvrir": {},
        "POST /dossier/destruction": {"confirmation": "oui"}, "POST /dossiers": {"dossier": MARTIN},
        "POST /acces/professionnel": {"professionnel": ["10000000002", "810000000002", "0759912345"],
                                      "decision": ["autoriser", "bloquer", "medecin-traitant"], "confirmation": "oui"},
        "POST /acces/retirer/{}": {"confirmation": "oui"},
        "POST /acces/opposition/{}": {"decision": ["opposer", "autoriser"], "confirmation": "oui"},
        "GET /documents": {}, "GET /documents/{}": {}, "GET /documents/{}/fichier": {"telechargement": ["1", ""]},
        "GET /documents/{}/original": {}, "GET /historique": {"vue": ["documents", "professionnels"], "page": "x"},
        "GET /acces": {"q": ["NOEL", "camille", "8"]}, "GET /espace-personnel": {}, "GET /dossier": {},
        "GET /dossiers": {}, "GET /compte/mot-de-passe": {},
        # Signing in, by someone else than Paul (whose account five failures would lock).
        "visitor POST /connexion": {"identifiant": ["sophie", " SOPHIE ", "nobody"], "mot_de_passe": [PASSWORD, "x"]},
        "visitor POST /connexion/code": {"code": ["123456", "000000"]}, "visitor GET /connexion/code": {},
        "visitor GET /connexion": {"next": ["/documents", "//evil.example/", "https://evil.example/",
                                            "/\\evil.example"]},
        "visitor GET /": {}}
    referrers = st.one_of(st.none(), st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=30),
                          st.sampled_from(["http://localhost/acces", "http://localhost.evil.example/",
                                           "http://localhost@evil.example/", "//evil.example/"]))
    values = st.one_of(st.text(max_size=40), st.sampled_from(
        ["oui", "non", "759 912 345", "a,b",
         "\\", "\x00", "9" * 300, *documents]))
    path_parts = st.one_of(st.sampled_from([*documents, "emergency-access", "regulation-access", "x", ".."]),
                           st.text(min_size=1, max_size=20))
    uploads = {"POST /espace-personnel/documents": "fichier", "POST /dossier/verifier": "copie"}
    files = st.one_of(st.none(), st.tuples(st.one_of(st.binary(max_size=300), st.sampled_from(
        [b"%PDF-1.4\n%%EOF\n", b"Mes directives.", b"PK\x03\x04"])), st.text(max_size=20)))

    @FUZZ
    @given(route=st.sampled_from(sorted(filled_in)), part=path_parts, upload=files, referrer=referrers,
           with_token=st.integers(0, 9).map(bool), data=st.data())
    def run(route, part, upload, referrer, with_token, data):
        who = visitor if route.startswith("visitor ") else browser
        method, path = route.removeprefix("visitor ").split(" ")
        path = path.format(quote(part, safe=""))
        form = {name: data.draw(st.sampled_from(value)) if isinstance(value, list) else value
                for name, value in filled_in[route].items()}
        names = st.sampled_from([*sorted(form), "x"])
        for name, value in data.draw(st.lists(st.tuples(names, st.one_of(st.none(), values)), max_size=2)):
            if value is None:   # left out
                form.pop(name, None)
            else:
                form[name] = value
        headers = {"Referer": referrer} if referrer is not None else {}
        if method == "GET":
            answer = send(who, "GET", path, query_string=form, headers=headers)
        else:
            if with_token:
                form["csrf_token"] = tokens[who]
            if upload is not None and route in uploads:
                content, filename = upload
                form[uploads[route]] = (io.BytesIO(content), filename or "directives.pdf")
            answer = send(who, "POST", path, data=form, content_type="multipart/form-data", headers=headers)
        # Whatever was sent, the space sends its visitor nowhere but to its own pages.
        assert not answer.location or urlsplit(answer.location).netloc in ("", "localhost"), answer.location

    run()
    patient = bearer("patient", patient=MARTIN)
    collected = profiles.Collected()
    for res_type, res_id, version in every_version(database[0], ["Consent", "RelatedPerson", "DocumentReference"]):
        read = send(client, "GET", f"/fhir/{res_type}/{res_id}/_history/{version}", headers=patient)
        if read.status_code == 200:
            collected.add(read.json)
    assert len(collected) > len(documents)   # the forms kept something besides the hospital's documents
    if profiles.available():
        errors = collected.errors()
        assert not errors, "\n".join(errors)


def frames_in(stream: bytes) -> int:
    """The frames an MLLP reader finds in a stream: from a <VT> (bytes before it are not a frame's)
    to the first <FS><CR> after it, which may hold other <VT>s; a frame the stream does not end is
    not one."""
    found, position = 0, 0
    while (start := stream.find(b"\x0b", position)) >= 0 and (end := stream.find(b"\x1c\r", start + 1)) >= 0:
        found, position = found + 1, end + 2
    return found


def test_random_mllp_streams(mllp_listener):
    """Byte streams to the running MLLP listener: sample messages, changed or not, framed or not,
    alone or in a batch, among random bytes and stray <VT>, <FS> and <CR>, written in random pieces, then the sending
    side closed. Each whole frame gets one framed ACK, in order, nothing else comes back, the
    listener closes the connection once it has answered, and it takes the next one."""
    messages = [path.read_bytes() for path in sorted((SAMPLES / "hl7v2").glob("*.hl7"))]
    message = st.builds(lambda index, cut: messages[index][:cut], st.integers(0, len(messages) - 1),
                        st.one_of(st.none(), st.integers(0, 400)))
    framed = message.map(mllp.frame)
    batch = st.lists(message, max_size=3).map(lambda sent: mllp.frame(b"BHS|^~\\&|GAM|CH\r" + b"".join(sent)))
    piece = st.one_of(framed, st.binary(max_size=30), framed, message, batch,
                      st.sampled_from([b"\x0b", b"\x1c", b"\r", b"\x1c\r", b"\x0b\x0b", b"\x1c\x1c\r\r", b"MSH|"]))

    @FUZZ
    @given(pieces=st.lists(piece, min_size=1, max_size=6), writes=st.lists(st.integers(1, 64), min_size=1, max_size=8))
    # Found by this test: a control id holding <FS> (before the segment's <CR>) ended the ACK's frame early.
    @example(pieces=[b"\x0bMSH|^~\\&|GAM|CH|GW|DMP|20260310080000||ADT^A01^ADT_A01|", b"\x1c\x1c\r"], writes=[1])
    def run(pieces, writes):
        stream, started = b"".join(pieces), time.perf_counter()
        TRIED["inputs"] += 1
        with socket.create_connection(("127.0.0.1", mllp_listener.mllp_port), timeout=30) as sender:
            sent, turn = 0, 0
            while sent < len(stream):
                size = writes[turn % len(writes)] if turn < 4 * len(writes) else len(stream)
                sender.sendall(stream[sent:sent + size])
                sent, turn = sent + size, turn + 1
            sender.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sender.recv(65536):   # the listener closes once it has answered
                answer += chunk
        TRIED["slowest_ms"] = max(TRIED["slowest_ms"], (time.perf_counter() - started) * 1000)
        acks = answer.split(b"\x1c\r")
        assert acks.pop() == b"", answer[-200:]   # nothing after the last ACK
        assert len(acks) == frames_in(stream), (stream, answer)
        # A batch's answer is a batch (of no ACK when it held no message).
        assert all(ack.startswith(b"\x0bMSH|") and b"\rMSA|" in ack or ack.startswith(b"\x0bBHS|")
                   for ack in acks), answer

    run()
    [ack] = mllp.send_messages("127.0.0.1", mllp_listener.mllp_port, [messages[0]])
    assert b"\rMSA|" in ack
