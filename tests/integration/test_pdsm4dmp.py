"""The DMP's own FHIR API as the ANS guide PDSM4DMP describes it, driven by the guide's own example
requests (`../shared/reference/pdsm4dmp/input/examples`), each answer checked as the guide says and
against the official profiles.

The examples name a patient whose INS (123456789012345) has a wrong key (97 - 1234567890123 mod 97
is 11, not 45): the gateway refuses such an INS, so the tests give the examples a valid one."""
import base64
import json
import os
from pathlib import Path

import pytest

import profiles
from conftest import REPORT, patch_operation as operation, patch_parameters
from gateway.services.consents import decision

EXAMPLES = Path(os.environ.get("GATEWAY_PDSM4DMP_DIR", Path(__file__).resolve().parents[3] / "shared" / "reference"
                               / "pdsm4dmp" / "input" / "examples"))
GUIDE_INS, INS = "123456789012345", "279035121518989"
INS_SYSTEM = "urn:oid:1.2.250.1.213.1.4.8"
AUTHOR = "899700218896"   # the examples' author (IdNatPs)
FHIR = {"Content-Type": "application/fhir+json"}
PATCH = {"Content-Type": "application/json-patch+json"}
CLASS_SYSTEM = "https://mos.esante.gouv.fr/NOS/TRE_A03-ClasseDocument/FHIR/TRE-A03-ClasseDocument"
VISIBILITY = "https://mos.esante.gouv.fr/NOS/TRE_A07-StatutVisibiliteDocument/FHIR/TRE-A07-StatutVisibiliteDocument"


def example(name: str) -> dict:
    if not EXAMPLES.is_dir():
        pytest.skip(f"the PDSM4DMP examples are not present at {EXAMPLES}")
    return json.loads((EXAMPLES / name).read_text().replace(GUIDE_INS, INS))


@pytest.fixture
def lps(client, bearer):
    """The LPS of the examples' author (a professional's software), and the record it works on."""
    author = bearer("doctor", sub=AUTHOR)
    created = client.post("/fhir/Patient", headers={**FHIR, **author}, data=json.dumps({
        "resourceType": "Patient", "identifier": [{"use": "official", "system": INS_SYSTEM, "value": INS}],
        "name": [{"use": "official", "family": "MARTIN", "given": ["MARIE"]}], "gender": "female",
        "birthDate": "1985-04-12"}))
    assert created.status_code == 201, created.json
    client.post("/fhir/Consent", headers={**FHIR, **bearer("patient", patient=INS)}, data=json.dumps({
        "resourceType": "Consent", "status": "active",
        "category": [{"coding": [{"system": "urn:dmp-gateway:consent-kind", "code": "attending-physician"}]}],
        "provision": {"type": "permit", "actor": [{"role": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PRCP"}]},
            "reference": {"identifier": {"system": "urn:oid:1.2.250.1.71.4.2.1", "value": AUTHOR}}}]}}))
    return author


def document_x() -> dict:
    """The guide's document X (TD2.1), which its replacement example replaces: the guide gives its
    DocumentReference as registered, which ITI-105 publishes with its document in the data."""
    x = example("DocumentReference-doc-x-id.json")
    cda = b'<?xml version="1.0" encoding="UTF-8"?><ClinicalDocument xmlns="urn:hl7-org:v3"/>'
    data = base64.b64encode(cda).decode()
    attachment = {k: v for k, v in x["content"][0]["attachment"].items() if k != "url"}
    return dict(x, status="current", content=[{**x["content"][0], "attachment": {**attachment, "data": data}}])


def by_identifier(value: str) -> str:
    return f"/fhir/DocumentReference?identifier=urn:ietf:rfc:3986|{value}"


def test_the_guide_examples_are_answered_as_the_guide_says(client, bearer, lps, database, backend):
    collected = profiles.Collected()
    patient_query = {"patient.identifier": f"{INS_SYSTEM}|{INS}"}

    # TD0.2: the record exists, is open, and this professional is its attending physician.
    td02 = client.get("/fhir/Patient", query_string={"identifier": f"{INS_SYSTEM}|{INS}"}, headers=lps).json
    assert td02["total"] == 1
    record = td02["entry"][0]["resource"]
    assert record["active"] is True
    extensions = {e["url"].rsplit("/", 1)[1]: e for e in record["extension"]}
    assert extensions["dmp-medecin-traitant"]["valueBoolean"] is True
    assert extensions["dmp-rattachement-mes"]["valueBoolean"] is False
    collected.add(td02)

    # TD2, ITI-105: the simplified publication.
    published = client.post("/fhir/DocumentReference", headers={**FHIR, **lps},
                            data=json.dumps(example("DocumentReference-example-td2-iti105-publication-simplifiee.json")))
    assert published.status_code == 201, published.json
    assert published.headers["Location"].startswith("http://gateway.test/fhir/DocumentReference/")
    collected.add(published.json)

    # TD2, ITI-65: the submission set.
    submitted = client.post("/fhir", headers={**FHIR, **lps},
                            data=json.dumps(example("Bundle-example-td2-iti65-lot-soumission.json")))
    assert submitted.status_code == 200, submitted.json
    assert [e["response"]["status"] for e in submitted.json["entry"]] == ["201 Created"] * 3
    assert [e["response"]["location"].split("/")[0] for e in submitted.json["entry"]] == ["List", "DocumentReference", "Binary"]
    collected.add(submitted.json, profiles.PROVIDE_RESPONSE)

    # TD2.1: document X, then its replacement Y with the UpdateDocumentRefs PATCH entry.
    x_id = client.post("/fhir/DocumentReference", headers={**FHIR, **lps}, data=json.dumps(document_x())).json["id"]
    replacement = json.dumps(example("Bundle-example-td2-1-remplacement.json")).replace("doc-x-id", x_id)
    replaced = client.post("/fhir", headers={**FHIR, **lps}, data=replacement)
    assert replaced.status_code == 200, replaced.json
    statuses = {e["response"]["location"].split("/")[0]: e["response"]["status"] for e in replaced.json["entry"]}
    assert statuses == {"List": "201 Created", "DocumentReference": "200 OK", "Binary": "201 Created"} or \
        sorted(e["response"]["status"] for e in replaced.json["entry"]) == ["200 OK", "201 Created", "201 Created", "201 Created"]
    collected.add(replaced.json, profiles.PROVIDE_RESPONSE)
    assert client.get(f"/fhir/DocumentReference/{x_id}", headers=lps).json["status"] == "superseded"

    # TD3.1a: the current documents; TD3.1b: one of them by its uniqueId.
    current = client.get("/fhir/DocumentReference", query_string={**patient_query, "status": "current"}, headers=lps).json
    assert current["total"] == 3
    collected.add(current, profiles.FIND_DOCUMENT_REFERENCES)
    y = next(e["resource"] for e in current["entry"] if e["resource"].get("relatesTo"))
    assert y["relatesTo"] == [{"code": "replaces", "target": {"reference": f"DocumentReference/{x_id}"}}]
    one = client.get("/fhir/DocumentReference", headers=lps, query_string={
        **patient_query, "identifier": "urn:ietf:rfc:3986|urn:oid:1.2.250.1.213.1.4.8.99999.0"}).json
    assert one["total"] == 1 and one["entry"][0]["resource"]["id"] == x_id

    # TD3.2: the document as received, or as a Binary.
    url = y["content"][0]["attachment"]["url"].replace("http://gateway.test", "")
    assert client.get(url, headers={**lps, "Accept": "application/xml"}).data.startswith(b"<?xml")
    binary = client.get(url, headers={**lps, "Accept": "application/fhir+json"}).json
    assert binary["resourceType"] == "Binary" and base64.b64decode(binary["data"]).startswith(b"<?xml")

    # TD3.3a: masked from professionals by its producer, then unmasked, by conditional PATCH.
    mask = [{"op": "replace", "path": "/securityLabel/0", "value": {"coding": [
        {"system": VISIBILITY, "code": "MASQUE_PS", "display": "Masqué aux professionnels de santé"}]}}]
    unmask = [{"op": "replace", "path": "/securityLabel/0", "value": {"coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N", "display": "normal"}]}}]
    target = by_identifier("urn:oid:1.2.250.1.213.1.4.8.99999.3")
    masked = client.patch(target, headers={**PATCH, **lps}, data=json.dumps(mask))
    assert masked.status_code == 200, masked.json
    assert [c["code"] for label in masked.json["securityLabel"] for c in label["coding"]] == ["MASQUE_PS", "N"]
    collected.add(masked.json)
    unmasked = client.patch(target, headers={**PATCH, **lps}, data=json.dumps(unmask)).json
    assert [c["code"] for label in unmasked["securityLabel"] for c in label["coding"]] == ["N"]

    # TD3.3b: invisible to the patient until announced.
    invisible = [{"op": "replace", "path": "/securityLabel/0", "value": {"coding": [
        {"system": VISIBILITY, "code": "INVISIBLE_PATIENT", "display": "Non visible par le patient"}]}}]
    assert client.patch(target, headers={**PATCH, **lps}, data=json.dumps(invisible)).status_code == 200
    patient = bearer("patient", patient=INS)
    assert client.get(f"/fhir/DocumentReference/{y['id']}", headers=patient).status_code == 404
    assert client.patch(target, headers={**PATCH, **lps}, data=json.dumps(unmask)).status_code == 200
    assert client.get(f"/fhir/DocumentReference/{y['id']}", headers=patient).status_code == 200

    # TD3.3d: archived, found by isArchived, then back.
    archive = [{"op": "replace", "value": True, "path":
                "/extension[url:'https://interop.esante.gouv.fr/ig/fhir/pdsm/StructureDefinition/pdsm-ext-is-archived']/valueBoolean"}]
    archived = client.patch(target, headers={**PATCH, **lps}, data=json.dumps(archive))
    assert archived.status_code == 200, archived.json
    collected.add(archived.json)
    found = client.get("/fhir/DocumentReference", query_string={**patient_query, "isArchived": "true"}, headers=lps).json
    assert [e["resource"]["id"] for e in found["entry"]] == [y["id"]]

    # TD3.3c: deletion by the author; another professional is refused (403).
    delete = [{"op": "replace", "path": "/status", "value": "entered-in-error"}]
    stranger = bearer("doctor", sub="899900000099")
    client.post("/fhir/Consent", headers={**FHIR, **patient}, data=json.dumps({
        "resourceType": "Consent", "status": "active",
        "category": [{"coding": [{"system": "urn:dmp-gateway:consent-kind", "code": "professional"}]}],
        "provision": {"type": "permit", "actor": [{"role": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PRCP"}]},
            "reference": {"identifier": {"system": "urn:oid:1.2.250.1.71.4.2.1", "value": "899900000099"}}}]}}))
    assert client.patch(target, headers={**PATCH, **stranger}, data=json.dumps(delete)).status_code == 403
    deleted = client.patch(target, headers={**PATCH, **lps}, data=json.dumps(delete))
    assert deleted.status_code == 200 and deleted.json["resourceType"] == "OperationOutcome"
    assert client.get(f"/fhir/DocumentReference/{y['id']}", headers=lps).status_code == 410

    # ITI-66: the submission sets of the record.
    lists = client.get("/fhir/List", query_string={**patient_query, "code": "submissionset"}, headers=lps).json
    assert lists["total"] == 4
    collected.add(lists, profiles.FIND_LISTS)

    # TD0.2 once the patient closed the record.
    client.post("/fhir/Consent", headers={**FHIR, **patient}, data=json.dumps({
        "resourceType": "Consent", "status": "active",
        "category": [{"coding": [{"system": "urn:dmp-gateway:consent-kind", "code": "record"}]}],
        "provision": {"type": "deny"}}))
    closed = client.get("/fhir/Patient", query_string={"identifier": f"{INS_SYSTEM}|{INS}"}, headers=patient).json
    record = closed["entry"][0]["resource"]
    assert record["active"] is False
    assert any(e["url"].endswith("dmp-fermeture") for e in record["extension"])
    collected.add(closed)

    if profiles.available():
        errors = collected.errors()
        REPORT.append(f"PDSM4DMP examples ({backend}): 9 transactions run, {len(collected)} answers validated, "
                      f"{len(errors)} profile errors")
        assert not errors, "\n".join(errors[:30])


def test_the_guide_examples_in_xml(client, lps):
    """The same requests as FHIR XML, answered in XML (MHD: JSON and XML)."""
    from lxml import etree

    from gateway.fhir.formats import to_xml

    xml = {"Content-Type": "application/fhir+xml", "Accept": "application/fhir+xml"}
    ns = "{http://hl7.org/fhir}"
    published = client.post("/fhir/DocumentReference", headers={**xml, **lps},
                            data=to_xml(example("DocumentReference-example-td2-iti105-publication-simplifiee.json")))
    assert published.status_code == 201, published.data[:400]
    assert etree.fromstring(published.data).tag == ns + "DocumentReference"
    submitted = client.post("/fhir", headers={**xml, **lps}, data=to_xml(example("Bundle-example-td2-iti65-lot-soumission.json")))
    assert submitted.status_code == 200, submitted.data[:400]
    statuses = [e.get("value") for e in etree.fromstring(submitted.data).iter(ns + "status")]
    assert statuses == ["201 Created"] * 3
    td02 = client.get("/fhir/Patient", headers=lps, query_string={"identifier": f"{INS_SYSTEM}|{INS}", "_format": "xml"})
    assert etree.fromstring(td02.data).find(f"{ns}total").get("value") == "1"


def test_the_guide_submissions_sent_again_register_nothing_new(client, lps):
    """The guide's SubmissionSets carry no identifier, and the one ITI-105 is registered under has
    one the gateway draws, so a submission sent again (an answer lost, a timeout) registered its
    SubmissionSet again: its documents were recognised, and the record held two SubmissionSets
    listing them (the replacement was refused, 422). A SubmissionSet its identifiers do not name
    whose documents were all registered already, one SubmissionSet of the record listing them, is
    that one: 200, nothing new. One that lists a document not yet registered is a new submission."""
    def submission_sets() -> list[str]:
        found = client.get("/fhir/List", headers=lps, query_string={
            "patient.identifier": f"{INS_SYSTEM}|{INS}", "code": "submissionset"}).json
        return sorted(e["resource"]["id"] for e in found.get("entry", []))

    published = json.dumps(example("DocumentReference-example-td2-iti105-publication-simplifiee.json"))
    assert client.post("/fhir/DocumentReference", headers={**FHIR, **lps}, data=published).status_code == 201
    registered = submission_sets()
    published_again = client.post("/fhir/DocumentReference", headers={**FHIR, **lps}, data=published)
    assert published_again.status_code == 200, published_again.json
    assert submission_sets() == registered

    bundle = json.dumps(example("Bundle-example-td2-iti65-lot-soumission.json"))
    first = client.post("/fhir", headers={**FHIR, **lps}, data=bundle)
    assert first.status_code == 200, first.json
    again = client.post("/fhir", headers={**FHIR, **lps}, data=bundle)
    assert again.status_code == 200, again.json
    assert [e["response"]["status"] for e in again.json["entry"]] == ["200 OK"] * 3
    assert [e["response"]["location"] for e in again.json["entry"]] == \
        [e["response"]["location"] for e in first.json["entry"]]
    assert submission_sets() == sorted([*registered, first.json["entry"][0]["response"]["location"].split("/")[1]])

    # The guide's replacement: its new document Y and the PATCH of X, sent twice.
    x_id = client.post("/fhir/DocumentReference", headers={**FHIR, **lps}, data=json.dumps(document_x())).json["id"]
    replacement = json.dumps(example("Bundle-example-td2-1-remplacement.json")).replace("doc-x-id", x_id)
    replaced = client.post("/fhir", headers={**FHIR, **lps}, data=replacement)
    assert replaced.status_code == 200, replaced.json
    registered = submission_sets()
    replaced_again = client.post("/fhir", headers={**FHIR, **lps}, data=replacement)
    assert replaced_again.status_code == 200, replaced_again.json
    assert {e["response"]["status"] for e in replaced_again.json["entry"]} == {"200 OK"}
    assert [e["response"]["location"] for e in replaced_again.json["entry"]] == \
        [e["response"]["location"] for e in replaced.json["entry"]]
    assert submission_sets() == registered

    # The first submission's SubmissionSet, sent with a new document: a submission of its own.
    grown = example("Bundle-example-td2-iti65-lot-soumission.json")
    new_document, its_binary = json.loads(json.dumps(grown["entry"][1:3]).replace("aaaaaaaa-", "cccccccc-"))
    new_document["resource"]["masterIdentifier"]["value"] += ".1"
    grown["entry"][0]["resource"]["entry"].append({"item": {"reference": new_document["fullUrl"]}})
    grown["entry"] += [new_document, its_binary]
    added = client.post("/fhir", headers={**FHIR, **lps}, data=json.dumps(grown))
    assert added.status_code == 200, added.json
    assert [e["response"]["status"] for e in added.json["entry"]] == \
        ["201 Created", "200 OK", "200 OK", "201 Created", "201 Created"]
    assert len(submission_sets()) == len(registered) + 1


@pytest.mark.parametrize("change, where", [
    (lambda d: d["masterIdentifier"].pop("system"), "DocumentReference.masterIdentifier.system"),
    (lambda d: d.__setitem__("category", [{"coding": [{"system": CLASS_SYSTEM, "code": code}]} for code in ("10", "11")]),
     "DocumentReference.category"),
    (lambda d: d["subject"].__setitem__("reference", d["subject"]["reference"].replace(INS, "269054958815780")),
     "DocumentReference.subject"),
    (lambda d: d.__setitem__("authenticator", {"reference": "urn:oid:1.2.3"}), "DocumentReference.authenticator"),
], ids=["uniqueId without system", "two classes", "a patient the gateway does not hold",
        "an authenticator not contained"])
def test_a_document_s_metadata_mhd_refuses_is_refused_not_kept(client, lps, change, where):
    """What MHD's profiles refuse in a document's submitted metadata: a uniqueId without its
    system (UniqueIdIdentifier), two classes (category 0..1), an authenticator that is not a
    resource the DocumentReference contains (PDSm and MHD aggregate it `contained`). Each
    was kept, and every read of the document failed the official check (found by the fuzz, once it
    changed the guide's examples; the authenticator in an ITI-65 submission in FHIR's XML).
    The refusal names the DocumentReference posted, not the Bundle it became (it named
    `Bundle.entry[1].resource -> Bundle.entry[1].resource.masterIdentifier.system`)."""
    published = example("DocumentReference-example-td2-iti105-publication-simplifiee.json")
    change(published)
    refused = client.post("/fhir/DocumentReference", headers={**FHIR, **lps}, data=json.dumps(published))
    assert refused.status_code == 422, refused.data[:400]
    assert refused.json["issue"][0]["expression"] == [where], refused.json
    assert client.get("/fhir/DocumentReference", headers=lps, query_string={"patient.identifier": f"{INS_SYSTEM}|{INS}"}
                      ).json["total"] == 0


TRE_A07_OID = "urn:oid:1.2.250.1.213.1.1.4.13"


@pytest.mark.parametrize("system, code, where", [
    (None, "INVISIBLE_PATIENT", "coding[0].system"),
    ("http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "INVISIBLE_PATIENT", "coding[0].system"),
    (VISIBILITY, "INVISIBLE_REP_LEGAUX", "coding[0]"),
    (VISIBILITY, "MASQUE_PT", "coding[0]"),
], ids=["no system", "another system", "HL7v2's spelling", "outside JDV_J58"])
def test_a_visibility_label_the_gateway_cannot_apply_is_refused(client, bearer, lps, system, code, where):
    """A document to be kept from the patient until it is announced, labelled INVISIBLE_PATIENT
    without TRE_A07's system, or hidden from representatives under HL7v2's spelling, was registered
    and shown: the label was kept (ITI-105) or dropped (a CDA in ITI-65), and not applied. It is
    refused, in a submission and in a PATCH, and nothing of it is kept."""
    label = {"coding": [{**({"system": system} if system else {}), "code": code}]}
    published = example("DocumentReference-example-td2-iti105-publication-simplifiee.json")
    published["securityLabel"] = [label]
    refused = client.post("/fhir/DocumentReference", headers={**FHIR, **lps}, data=json.dumps(published))
    assert refused.status_code == 422, refused.data[:400]
    assert refused.json["issue"][0]["expression"] == [f"DocumentReference.securityLabel[0].{where}"], refused.json
    submission = example("Bundle-example-td2-iti65-lot-soumission.json")
    entry = next(e for e in submission["entry"] if e["resource"]["resourceType"] == "DocumentReference")
    entry["resource"]["securityLabel"] = [label]
    assert client.post("/fhir", headers={**FHIR, **lps}, data=json.dumps(submission)).status_code == 422
    query = {"patient.identifier": f"{INS_SYSTEM}|{INS}"}
    assert client.get("/fhir/DocumentReference", headers=lps, query_string=query).json["total"] == 0

    published["securityLabel"] = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                                               "code": "N"}]}]
    created = client.post("/fhir/DocumentReference", headers={**FHIR, **lps}, data=json.dumps(published))
    assert created.status_code == 201, created.json
    patch = [{"op": "replace", "path": "/securityLabel/0", "value": label}]
    refused = client.patch(f"/fhir/DocumentReference/{created.json['id']}", headers={**PATCH, **lps},
                           data=json.dumps(patch))
    assert refused.status_code == 422, refused.json
    assert client.get(f"/fhir/DocumentReference/{created.json['id']}", headers=lps).json["meta"]["versionId"] == "1"


def test_a_visibility_label_in_meta_security_is_refused(client, lps):
    """meta.security labels the resource, not the document (PDSm puts a document's labels in
    securityLabel): a document sent INVISIBLE_PATIENT there was registered visible to the patient."""
    published = example("DocumentReference-example-td2-iti105-publication-simplifiee.json")
    published["meta"] = {"security": [{"system": VISIBILITY, "code": "INVISIBLE_PATIENT"}]}
    refused = client.post("/fhir/DocumentReference", headers={**FHIR, **lps}, data=json.dumps(published))
    assert refused.status_code == 422, refused.data[:400]
    assert refused.json["issue"][0]["expression"] == ["DocumentReference.meta.security"], refused.json


def test_tre_a07_named_by_its_oid_is_applied(client, bearer, lps):
    """TRE_A07 named by its OID, as XDS and HL7v2 name it: INVISIBLE_PATIENT under it was ignored,
    and the patient read the document before its announcement. It is TRE_A07, kept under its
    canonical URL."""
    published = example("DocumentReference-example-td2-iti105-publication-simplifiee.json")
    published["securityLabel"] = [{"coding": [{"system": TRE_A07_OID, "code": "INVISIBLE_PATIENT"}]}]
    created = client.post("/fhir/DocumentReference", headers={**FHIR, **lps}, data=json.dumps(published))
    assert created.status_code == 201, created.json
    assert created.json["securityLabel"] == [{"coding": [{"system": VISIBILITY, "code": "INVISIBLE_PATIENT"}]}]
    patient = bearer("patient", patient=INS)
    assert client.get(f"/fhir/DocumentReference/{created.json['id']}", headers=patient).status_code == 404
    submission = example("Bundle-example-td2-iti65-lot-soumission.json")
    entry = next(e for e in submission["entry"] if e["resource"]["resourceType"] == "DocumentReference")
    entry["resource"]["securityLabel"] = [{"coding": [{"system": TRE_A07_OID, "code": "INVISIBLE_PATIENT"}]}]
    answer = client.post("/fhir", headers={**FHIR, **lps}, data=json.dumps(submission))
    assert answer.status_code == 200, answer.json
    document = next(e["response"]["location"] for e in answer.json["entry"]
                    if e["response"]["location"].startswith("DocumentReference/")).rsplit("/_history", 1)[0]
    assert client.get(f"/fhir/{document}", headers=patient).status_code == 404
    mask = [{"op": "add", "path": "/securityLabel/-", "value": {"coding": [{"system": TRE_A07_OID,
                                                                            "code": "MASQUE_PS"}]}}]
    masked = client.patch(f"/fhir/{document}", headers={**PATCH, **lps}, data=json.dumps(mask))
    assert masked.status_code == 200, masked.json
    assert {c["code"] for label in masked.json["securityLabel"] for c in label["coding"]
            if c["system"] == VISIBILITY} == {"INVISIBLE_PATIENT", "MASQUE_PS"}
    if profiles.available():
        checked = profiles.Collected()
        checked.add(created.json)
        checked.add(masked.json)
        assert not checked.errors(), "\n".join(checked.errors())


def test_the_guide_s_replacement_keeps_the_masking_of_document_x(client, bearer, lps):
    """TD2.1's replacement of document X, which its patient masked from professionals with TD3.3a's
    PATCH, said nothing of the masking (its DocumentReference is labelled N), and every professional
    the patient authorises read the new version. It keeps the masking of what it replaces."""
    patient, other = bearer("patient", patient=INS), bearer("doctor", sub="899900000012")
    client.post("/fhir/Consent", headers={**FHIR, **patient}, data=json.dumps(decision("professional", "permit",
                                                                                     "899900000012")))
    x_id = client.post("/fhir/DocumentReference", headers={**FHIR, **lps}, data=json.dumps(document_x())).json["id"]
    assert client.get(f"/fhir/DocumentReference/{x_id}", headers=other).status_code == 200
    mask = [{"op": "replace", "path": "/securityLabel/0", "value": {"coding": [
        {"system": VISIBILITY, "code": "MASQUE_PS", "display": "Masqué aux professionnels de santé"}]}}]
    assert client.patch(f"/fhir/DocumentReference/{x_id}", headers={**PATCH, **patient},
                        data=json.dumps(mask)).status_code == 200
    assert client.get(f"/fhir/DocumentReference/{x_id}", headers=other).status_code == 404
    replacement = json.dumps(example("Bundle-example-td2-1-remplacement.json")).replace("doc-x-id", x_id)
    replaced = client.post("/fhir", headers={**FHIR, **lps}, data=replacement)
    assert replaced.status_code == 200, replaced.json
    y = next(e["response"]["location"] for e in replaced.json["entry"]
             if e["response"]["status"] == "201 Created" and e["response"]["location"].startswith("DocumentReference/"))
    y = client.get(f"/fhir/{y.rsplit('/_history', 1)[0]}", headers=lps).json
    assert y["relatesTo"][0]["target"]["reference"] == f"DocumentReference/{x_id}"
    assert [c["code"] for label in y["securityLabel"] for c in label["coding"]] == ["MASQUE_PS", "N"]
    assert client.get(f"/fhir/DocumentReference/{y['id']}", headers=other).status_code == 404
    assert client.get(f"/fhir/DocumentReference/{y['id']}", headers=patient).status_code == 200
    if profiles.available():
        checked = profiles.Collected()
        checked.add(y)
        assert not checked.errors(), "\n".join(checked.errors())


def test_a_fhir_document_is_read_at_its_bundle_url_through_its_document_s_rules(client, bearer, lps):
    """A FHIR document (a Bundle of type document) published with ITI-105 is kept in a Binary and
    read at Bundle/[id] (TD3.2). That Binary follows its DocumentReference's labels as any other
    does: the patient read there a document kept from them (INVISIBLE_PATIENT) while its
    DocumentReference answered 404."""
    document = {"resourceType": "Bundle", "type": "document", "timestamp": "2026-03-10T17:30:00+01:00"}
    published = example("DocumentReference-example-td2-iti105-publication-simplifiee.json")
    published["content"][0]["attachment"] = {
        "contentType": "application/fhir+json", "title": "Compte rendu de consultation",
        "data": base64.b64encode(json.dumps(document).encode()).decode()}
    published["securityLabel"] = [{"coding": [{"system": VISIBILITY, "code": "INVISIBLE_PATIENT"}]}]
    created = client.post("/fhir/DocumentReference", headers={**FHIR, **lps}, data=json.dumps(published))
    assert created.status_code == 201, created.json
    path = created.json["content"][0]["attachment"]["url"].removeprefix("http://gateway.test")
    assert path.startswith("/fhir/Bundle/")

    assert client.get(path, headers=lps).json == document
    patient = bearer("patient", patient=INS)
    assert client.get(f"/fhir/DocumentReference/{created.json['id']}", headers=patient).status_code == 404
    assert client.get(path, headers=patient).status_code == 404
    assert client.get(path.replace("/Bundle/", "/Binary/"), headers=patient).status_code == 404


def test_a_fhir_document_sent_as_a_bundle_entry_is_read_at_its_bundle_url(client, bearer, lps):
    """MHD's ITI-65 carries a FHIR document as a Bundle entry (its FhirDocuments, IHE's own example
    comprehensiveProvideDocumentBundleDocument), where a Binary carries any other document: it was
    refused, "Bundle is not part of an ITI-65 submission". It is kept as its JSON, read at
    Bundle/[id] as one sent in a Binary is, its size and hash the gateway's; the answer passes MHD's
    response profile and the DocumentReference PDSm's."""
    document = example("Bundle-example-annexe-fhir-document.json")
    submission = example("Bundle-example-td2-iti65-lot-soumission.json")
    entries = submission["entry"]
    binary = next(e for e in entries if e["resource"]["resourceType"] == "Binary")
    binary["resource"] = document
    binary["request"] = {"method": "POST", "url": "Bundle"}
    reference = next(e["resource"] for e in entries if e["resource"]["resourceType"] == "DocumentReference")
    attachment = reference["content"][0]["attachment"]
    for name in ("size", "hash"):
        attachment.pop(name, None)
    attachment["contentType"] = "application/fhir+json"
    reference["content"][0]["format"] = {"system": "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode",
                                         "code": "urn:ihe:iti:xds:2017:mimeTypeSufficient"}
    submitted = client.post("/fhir", headers={**FHIR, **lps}, data=json.dumps(submission))
    assert submitted.status_code == 200, submitted.json
    locations = [e["response"]["location"] for e in submitted.json["entry"]]
    assert [location.split("/")[0] for location in locations] == ["List", "DocumentReference", "Bundle"]
    registered = client.get(f"/fhir/{locations[1].rsplit('/_history', 1)[0]}", headers=lps).json
    path = registered["content"][0]["attachment"]["url"].removeprefix("http://gateway.test")
    assert path == f"/fhir/{locations[2]}"
    assert client.get(path, headers=lps).json == document
    assert registered["content"][0]["attachment"]["size"] > 0 and registered["content"][0]["attachment"]["hash"]
    if profiles.available():
        checked = profiles.Collected()
        checked.add(submitted.json, profiles.PROVIDE_RESPONSE)
        checked.add(registered)
        assert not checked.errors(), "\n".join(checked.errors())
    # A size its sender gave is of a JSON the gateway does not keep byte for byte: told.
    binary["resource"] = dict(document, id="another")
    attachment["size"] = 1
    reference["masterIdentifier"] = {"system": "urn:ietf:rfc:3986", "value": "urn:oid:1.2.250.1.999.73.2"}
    refused = client.post("/fhir", headers={**FHIR, **lps}, data=json.dumps(submission))
    assert refused.status_code == 422 and "leave it out" in refused.json["issue"][0]["diagnostics"], refused.json


def fhirpath_patch(*operations: dict) -> str:
    """A FHIRPath Patch's body, as the client sends it."""
    return json.dumps(patch_parameters(*operations))


def test_the_guide_s_changes_are_made_by_a_fhirpath_patch_as_pdsm_takes_it(client, bearer, lps):
    """PDSm's OpenAPI takes a PATCH's body as a JSON Patch or as a FHIRPath Patch, a Parameters
    resource in FHIR JSON or XML, which HAPI's and Firely's clients send: it was refused 415, "send
    application/json-patch+json". Each change of TD3.3a-d made so is made as the guide's JSON Patch
    makes it, by the same rules: masking and unmasking, invisibility to the patient, archiving,
    deletion (a stranger refused), each answer passing the official profiles. What a patch may not
    change, a path that is not FHIRPath or names no element, and a function whose work a client
    could make unbounded are refused, with the operation's place."""
    collected = profiles.Collected()
    publication = example("DocumentReference-example-td2-iti105-publication-simplifiee.json")
    published = client.post("/fhir/DocumentReference", headers={**FHIR, **lps}, data=json.dumps(publication))
    assert published.status_code == 201, published.json
    document = published.json
    identifier = document["masterIdentifier"]
    target = f"/fhir/DocumentReference?identifier={identifier['system']}|{identifier['value']}"
    by_id = f"/fhir/DocumentReference/{document['id']}"

    def patched(body: str, url: str = target, content_type: str = "application/fhir+json", who=None):
        return client.patch(url, headers={"Content-Type": content_type, **(who or lps)}, data=body)

    def labels(answer) -> list[str]:
        assert answer.status_code == 200, answer.json
        return [c["code"] for label in answer.json["securityLabel"] for c in label["coding"]]

    masking = {"coding": [{"system": VISIBILITY, "code": "MASQUE_PS",
                           "display": "Masqué aux professionnels de santé"}]}
    masked = patched(fhirpath_patch(operation("add", "DocumentReference", name="securityLabel",
                                              valueCodeableConcept=masking)))
    assert labels(masked) == ["MASQUE_PS", "N"]
    collected.add(masked.json)
    unmasked = patched(fhirpath_patch(operation("delete", "DocumentReference.securityLabel.where(coding.code = "
                                                          "'MASQUE_PS')")), url=by_id)
    assert labels(unmasked) == ["N"]

    # The guide's own form, the first label replaced, in FHIR XML.
    invisible = ('<Parameters xmlns="http://hl7.org/fhir"><parameter><name value="operation"/>'
                 '<part><name value="type"/><valueCode value="replace"/></part>'
                 '<part><name value="path"/><valueString value="DocumentReference.securityLabel[0]"/></part>'
                 f'<part><name value="value"/><valueCodeableConcept><coding><system value="{VISIBILITY}"/>'
                 '<code value="INVISIBLE_PATIENT"/></coding></valueCodeableConcept></part></parameter></Parameters>')
    assert labels(patched(invisible, content_type="application/fhir+xml")) == ["INVISIBLE_PATIENT", "N"]
    patient = bearer("patient", patient=INS)
    assert client.get(by_id, headers=patient).status_code == 404
    assert labels(patched(fhirpath_patch(operation("delete", "DocumentReference.securityLabel.first()")))) == ["N"]
    assert client.get(by_id, headers=patient).status_code == 200

    archived_url = "https://interop.esante.gouv.fr/ig/fhir/pdsm/StructureDefinition/pdsm-ext-is-archived"
    archived = patched(fhirpath_patch(operation("add", "DocumentReference", name="extension", value_parts=[
        {"name": "url", "valueUri": archived_url}, {"name": "value", "valueBoolean": True}])))
    assert archived.status_code == 200 and archived.json["extension"] == [{"url": archived_url, "valueBoolean": True}]
    collected.add(archived.json)
    restored = patched(fhirpath_patch(operation("replace", f"DocumentReference.extension('{archived_url}').value",
                                                valueBoolean=False)))
    assert restored.status_code == 200 and restored.json["extension"] == [{"url": archived_url, "valueBoolean": False}]

    refusals = {
        # what a PATCH may not change
        fhirpath_patch(operation("add", "DocumentReference", name="description", valueString="autre")):
            (422, "a PATCH changes one of securityLabel, status (deletion) or the isArchived extension"),
        fhirpath_patch(operation("replace", "DocumentReference.description", valueString="autre")):
            (422, "its path names 0 elements, not one"),
        fhirpath_patch(operation("replace", "DocumentReference.status.", valueCode="entered-in-error")):
            (400, "is not FHIRPath"),
        fhirpath_patch(operation("delete", "DocumentReference.securityLabel.where(descendants().exists())")):
            (422, "the function descendants() in where() is not taken"),
        fhirpath_patch(operation("delete", "DocumentReference.securityLabel.where(%resource.status = 'current')")):
            (422, "a %variable is not taken"),
        fhirpath_patch(operation("move", "DocumentReference.securityLabel")):
            (400, "the operation has no source part"),
        json.dumps({"resourceType": "Basic", "code": {"text": "x"}}):
            (400, "a FHIRPath Patch is a Parameters resource"),
    }
    for body, (status, reason) in refusals.items():
        refused = patched(body)
        assert refused.status_code == status and reason in refused.json["issue"][0]["diagnostics"], (body, refused.json)
    xml_patch = patched("<diff/>", content_type="application/xml-patch+xml")
    assert xml_patch.status_code == 415 and "FHIRPath Patch" in xml_patch.json["issue"][0]["diagnostics"]
    assert labels(client.get(by_id, headers=lps)) == ["N"]

    deletion = fhirpath_patch(operation("replace", "DocumentReference.status", valueCode="entered-in-error"))
    assert patched(deletion, who=bearer("doctor", sub="899900000099")).status_code in (403, 404)
    deleted = patched(deletion)
    assert deleted.status_code == 200 and deleted.json["issue"][0]["code"] == "deleted", deleted.json
    assert client.get(by_id, headers=lps).status_code == 410
    assert client.get("/fhir/metadata").json["patchFormat"] == [
        "application/json-patch+json", "application/fhir+json", "application/fhir+xml"]
    if profiles.available():
        errors = collected.errors()
        assert not errors, "\n".join(errors[:30])


def test_a_fhir_delete_deletes_a_document_as_the_guide_s_patch_does(client, bearer, lps):
    """The guide's deletion (TD3.3c) is a PATCH of the status to entered-in-error, and its open
    question names a FHIR delete as the alternative: a client that took it was answered 405, "it
    takes GET, PATCH". A DELETE, by id or conditional on identifier, is the same deletion: a producer
    only, If-Match held, the document gone from every search and read 410; sent again, it deleted
    already. A decision's DELETE says it is revoked with a PUT."""
    def published(unique_id: str = "urn:oid:1.2.250.1.999.71.1"):
        submitted = example("DocumentReference-example-td2-iti105-publication-simplifiee.json")
        submitted["masterIdentifier"] = {"system": "urn:ietf:rfc:3986", "value": unique_id}
        return client.post("/fhir/DocumentReference", headers={**FHIR, **lps}, data=json.dumps(submitted))

    first = published().json
    path = f"/fhir/DocumentReference/{first['id']}"
    patient = bearer("patient", patient=INS)
    for refused in (bearer("doctor", sub="899900000099"), patient):
        assert client.delete(path, headers=refused).status_code in (403, 404)
    assert client.delete(path, headers={**lps, "If-Match": 'W/"7"'}).status_code == 412
    deleted = client.delete(path, headers=lps)
    assert deleted.status_code == 200 and deleted.json["issue"][0]["code"] == "deleted", deleted.json
    assert client.get(path, headers=lps).status_code == 410
    assert "entry" not in client.get("/fhir/DocumentReference", headers=lps, query_string={
        "patient.identifier": f"{INS_SYSTEM}|{INS}", "status": "current,superseded,entered-in-error"}).json
    again = client.delete(path, headers=lps)
    assert again.status_code == 200 and again.json["issue"][0]["diagnostics"] == "the document was deleted already"
    history = client.get(f"{path}/_history", headers=lps).json
    assert history["total"] >= 1

    # Published again, it was answered 200 with the deleted document, which no one could read.
    again = published()
    assert again.status_code == 409 and "was deleted on" in again.json["issue"][0]["diagnostics"], again.json
    second = published("urn:oid:1.2.250.1.999.71.2").json
    identifier = second["masterIdentifier"]
    conditional = f"/fhir/DocumentReference?identifier={identifier['system']}|{identifier['value']}"
    assert client.delete(conditional, headers=lps).status_code == 200
    assert client.get(f"/fhir/DocumentReference/{second['id']}", headers=lps).status_code == 410
    nothing = client.delete(conditional, headers=lps)
    assert nothing.status_code == 200 and nothing.json["issue"][0]["code"] == "not-found", nothing.json
    assert client.delete("/fhir/DocumentReference?status=current", headers=lps).status_code == 400
    assert "delete" in {i["code"] for r in client.get("/fhir/metadata").json["rest"][0]["resource"]
                        if r["type"] == "DocumentReference" for i in r["interaction"]}

    decision_id = client.get("/fhir/Consent", headers=patient).json["entry"][0]["resource"]["id"]
    revoked = client.delete(f"/fhir/Consent/{decision_id}", headers=patient)
    assert revoked.status_code == 405 and revoked.headers["Allow"] == "GET, PUT"
    assert "PUT it with status inactive" in revoked.json["issue"][0]["diagnostics"]


def test_a_described_document_whose_source_patient_is_someone_else_is_refused(client, lps):
    """The guide's ITI-65 gives its patient's identity in context.sourcePatientInfo (a contained
    Patient). Given as another person's (a man born in 1990, where the record is a woman born in
    1985), the document is refused there, and nothing is registered; the same person, her name
    spelt otherwise and her birth date to the month, is registered."""
    submission = example("Bundle-example-td2-iti65-lot-soumission.json")
    docref = next(e["resource"] for e in submission["entry"] if e["resource"]["resourceType"] == "DocumentReference")
    named = docref["context"]["sourcePatientInfo"]["reference"]
    source = next(c for c in docref["contained"] if f"#{c['id']}" == named)
    source.update(gender="male", birthDate="1990-01-01")
    refused = client.post("/fhir", headers={**FHIR, **lps}, data=json.dumps(submission))
    assert refused.status_code == 422, refused.json
    issue = refused.json["issue"][0]
    assert issue["expression"][0].endswith(".context.sourcePatientInfo"), issue
    assert "sex and birth date" in issue["diagnostics"], issue
    documents = {"patient.identifier": f"{INS_SYSTEM}|{INS}"}
    assert client.get("/fhir/DocumentReference", query_string=documents, headers=lps).json["total"] == 0
    source.update(gender="female", birthDate="1985-04", name=[{"family": "MARTIN-DURAND", "given": ["MARIE"]}])
    assert client.post("/fhir", headers={**FHIR, **lps}, data=json.dumps(submission)).status_code == 200
    assert client.get("/fhir/DocumentReference", query_string=documents, headers=lps).json["total"] == 1
