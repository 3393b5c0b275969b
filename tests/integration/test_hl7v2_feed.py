"""HL7v2 over POST /hl7v2 on both backends: identity, consents, documents, duplicates, refusals."""
import base64
import hashlib
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, insert, select, text, update

from conftest import GP, attend_all
from gateway.access.audit import verify_chain
from gateway.mapping import codes
from gateway.storage import repository
from gateway.storage.schema import raw_inputs, resources

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "hl7v2"
PATIENTS = json.loads((SAMPLES.parent / "patients.json").read_text())
HOSPITAL = "urn:oid:1.2.250.1.213.1.1.9.1001"
ZFA = "urn:hl7-france:pam-fr:zfa"


@pytest.fixture
def client(app, bearer):
    """Messages are posted by a feeding system (this client's token); FHIR is read by the patients'
    attending physician (`fhir_get`) and messages are managed by an operator (`ADMIN`)."""
    test_client = app.test_client()
    test_client.environ_base["HTTP_AUTHORIZATION"] = bearer("system", sub="GAM CH-SAINT-AUBIN")["Authorization"]
    test_client.doctor = bearer("doctor", sub=GP)
    test_client.admin = bearer("admin", sub="operator")
    test_client.bearer = bearer
    return test_client


def fhir_get(client, path: str):
    """Read as Dr NOEL, once he is the attending physician of every patient fed so far."""
    attend_all(client.application.config["ENGINE"])
    return client.get(path, headers=client.doctor)


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def post(client, data: bytes | str, content_type: str = "x-application/hl7-v2+er7"):
    body = data.encode() if isinstance(data, str) else data
    response = client.post("/hl7v2", data=body, content_type=content_type)
    assert response.status_code == 200, response.data
    text = response.data.decode("utf-8", "replace")
    segments = [s.split("|") for s in text.strip("\r").split("\r")]
    return segments[1][1], segments


def errors(segments):
    return [s for s in segments if s[0] == "ERR"]


def search(client, query: str) -> dict:
    response = fhir_get(client, f"/fhir/{query}")
    assert response.status_code == 200, response.data
    return response.get_json()


def adt(event: str, control: str, pid: str, *extra: str) -> str:
    return "\r".join([f"MSH|^~\\&|GAM|CH-SAINT-AUBIN|GW|DMP|20260310080000||ADT^{event}^ADT_A01|{control}|P|2.5^FRA^2.11"
                      "|||||FRA|UNICODE UTF-8", "EVN||20260310080000", pid, *extra]) + "\r"


def merge_lefevre_into_dubois(control: str) -> str:
    """A40: Claire Lefevre's record (her IPP) merged into a new patient's, Claire Dubois, IPP 900000090."""
    return adt("A40", control, "PID|1||900000090^^^CH-SAINT-AUBIN&1.2.250.1.213.1.1.9.1001&ISO^PI||DUBOIS^CLAIRE^^^^^L"
               "||19920823|F", f"MRG|{PATIENTS['lefevre']['ipp']}^^^CH-SAINT-AUBIN&1.2.250.1.213.1.1.9.1001&ISO^PI")


def pid(ipp: str, family: str, ins: str | None = None) -> str:
    ids = f"{ipp}^^^CH-SAINT-AUBIN&1.2.250.1.213.1.1.9.1001&ISO^PI"
    if ins:
        ids += f"~{ins}^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS"
    return f"PID|1||{ids}||{family}^PAUL^^^^^L||19850612|M"


def test_adt_creates_then_updates_the_patient_with_its_consents(client):
    code, _ = post(client, sample("adt-a01-martin.hl7"))
    assert code == "AA"
    martin = PATIENTS["martin"]
    found = search(client, f"Patient?identifier={martin['ins_system']}|{martin['ins']}")
    assert found["total"] == 1
    patient = found["entry"][0]["resource"]
    assert {"system": HOSPITAL, "value": martin["ipp"]} in [
        {k: i[k] for k in ("system", "value")} for i in patient["identifier"]]
    reliability = next(e for e in patient["extension"] if e["url"].endswith("fr-core-identity-reliability"))
    assert reliability["extension"][0]["valueCoding"]["code"] == "VALI"
    # The patient reads their own decisions (after an opposition to consultation no doctor may).
    as_martin = client.bearer("patient", patient=martin["ins"])
    consents = client.get(f"/fhir/Consent?category={ZFA}|consultation,{ZFA}|alimentation", headers=as_martin).json
    assert consents["total"] == 2
    by_kind = {c["resource"]["category"][1]["coding"][0]["code"]: c["resource"] for c in consents["entry"]}
    assert by_kind["consultation"]["provision"]["type"] == "permit"
    assert by_kind["alimentation"]["provision"]["type"] == "permit"

    update = adt("A08", "UPD1", pid(martin["ipp"], "MARTIN-DURAND", martin["ins"]),
                 "ZFA|ACTIF|20260312080000|||||||INO|20260312080000|INC|20260312080000")
    assert post(client, update)[0] == "AA"
    patient = client.get(f"/fhir/Patient/{patient['id']}", headers=as_martin).get_json()
    assert patient["meta"]["versionId"] == "2" and patient["name"][0]["family"] == "MARTIN-DURAND"
    # ZFA-11 INC: the patient opposed consultation, so even the attending physician sees nothing now.
    assert fhir_get(client, f"/fhir/Patient/{patient['id']}").status_code == 404
    consents = client.get(f"/fhir/Consent?category={ZFA}|consultation", headers=as_martin).json
    assert consents["total"] == 1 and consents["entry"][0]["resource"]["provision"]["type"] == "deny"
    # The patient's app lifts the opposition, sending back the Consent it read: what the ZFA stated
    # (its action, its value) stays as it was; the decision is the patient's own now.
    lifted = consents["entry"][0]["resource"]
    lifted["provision"]["type"] = "permit"
    answer = client.put(f"/fhir/Consent/{lifted['id']}", data=json.dumps(lifted),
                        headers={**as_martin, "Content-Type": "application/fhir+json"})
    assert answer.status_code == 200 and answer.json["provision"]["code"] == lifted["provision"]["code"], answer.json
    assert fhir_get(client, f"/fhir/Patient/{patient['id']}").status_code == 200
    # The hospital's next message repeats the ZFA it collected on 12 March, before the patient's
    # decision: the decision stays (it was undone, and the record closed again), and the ACK says
    # the ZFA was not applied.
    code, segments = post(client, adt("A08", "UPD2", pid(martin["ipp"], "MARTIN-DURAND", martin["ins"]),
                                      "ZFA|ACTIF|20260312080000|||||||INO|20260312080000|INC|20260312080000"))
    assert code == "AA" and [(e[2], e[3].split("^")[0], e[4]) for e in errors(segments)] == [("ZFA^1^11", "0", "W")]
    assert "patient's own decision" in errors(segments)[0][8], segments
    assert fhir_get(client, f"/fhir/Patient/{patient['id']}").status_code == 200
    kept = client.get(f"/fhir/Consent/{lifted['id']}", headers=as_martin).json
    assert kept["provision"]["type"] == "permit" and kept["meta"]["versionId"] == answer.json["meta"]["versionId"]
    # One collected after the decision (the patient told the hospital again) is applied.
    later = (datetime.now(timezone.utc) + timedelta(days=1)).strftime("%Y%m%d%H%M%S+0000")
    code, segments = post(client, adt("A08", "UPD3", pid(martin["ipp"], "MARTIN-DURAND", martin["ins"]),
                                      f"ZFA|ACTIF|{later}|||||||INO|20260312080000|INC|{later}"))
    assert code == "AA" and not errors(segments), segments
    assert fhir_get(client, f"/fhir/Patient/{patient['id']}").status_code == 404


def dupont(ipp: str) -> str:
    return f"PID|1||{ipp}^^^CH-SAINT-AUBIN&1.2.250.1.213.1.1.9.1001&ISO^PI||DUPONT^JEANNE^^^^^L||19700101|F"


def zfa(when: str, consultation: str, record: str = "ACTIF") -> str:
    return f"ZFA|{record}|{when}080000|||||||INO|{when}080000|{consultation}|{when}080000"


def dupont_read(client, ipp: str) -> int:
    """How many records the attending physician finds by this IPP (none under an opposition)."""
    return fhir_get(client, f"/fhir/Patient?identifier={HOSPITAL}|{ipp}").json["total"]


def consultation_consents(client) -> list[dict]:
    """The ZFA consultation Consents stored (their patient, without an INS, signs in nowhere)."""
    with client.application.config["ENGINE"].connect() as conn:
        bodies = conn.execute(select(resources.c.body).where(resources.c.res_type == "Consent")).scalars()
        return [c for c in map(json.loads, bodies) if {"system": ZFA, "code": "consultation"} in
                [coding for category in c["category"] for coding in category["coding"]]]


@pytest.mark.parametrize("not_collected", ["NA", ""])
def test_a_zfa_that_did_not_collect_a_consent_leaves_the_one_collected_before(client, not_collected):
    """ZFA-11 NA (not collected), or nothing, at a later admission: the patient's opposition to
    consultation collected before stays, and professionals still read nothing. It was replaced by
    a Consent stating nothing, and the record opened. What the ZFA says of the record itself (it
    is closed, ZFA-1) is applied: it takes no document, and opens nothing."""
    assert post(client, adt("A28", "NA1", dupont("900000081"), zfa("20260101", "IC")))[0] == "AA"
    assert dupont_read(client, "900000081") == 1
    assert post(client, adt("A08", "NA2", dupont("900000081"), zfa("20260201", "INC")))[0] == "AA"
    assert dupont_read(client, "900000081") == 0
    assert post(client, adt("A08", "NA3", dupont("900000081"), zfa("20260301", not_collected)))[0] == "AA"
    assert dupont_read(client, "900000081") == 0
    [consent] = consultation_consents(client)
    assert consent["provision"]["type"] == "deny" and consent["dateTime"].startswith("2026-02-01"), consent
    assert post(client, adt("A08", "NA4", dupont("900000081"), zfa("20260401", not_collected, "FERME")))[0] == "AA"
    [consent] = consultation_consents(client)
    assert consent["status"] == "active" and consent["provision"]["type"] == "deny"
    assert dupont_read(client, "900000081") == 0
    assert post(client, adt("A08", "NA5", dupont("900000081"), zfa("20260501", "IC")))[0] == "AA"
    assert dupont_read(client, "900000081") == 1


def test_a_record_a_feed_reports_closed_takes_no_document_and_opens_nothing(client):
    """The hospital repeats the patient's opposition to consultation (ZFA-11 INC) and reports their
    record closed (ZFA-1 FERME, ZFA-3): both Consents were made inactive, the opposition stopped
    applying, and the attending physician read the record again. Closed, it takes no document; the
    opposition holds until a ZFA collects another decision."""
    assert post(client, adt("A28", "CL1", dupont("900000082"), zfa("20260101", "IC")))[0] == "AA"
    assert post(client, adt("A08", "CL2", dupont("900000082"), zfa("20260201", "INC")))[0] == "AA"
    assert dupont_read(client, "900000082") == 0
    closed = "ZFA|FERME|20260301080000|20260301080000||||||INO|20260301080000|INC|20260301080000"
    assert post(client, adt("A08", "CL3", dupont("900000082"), closed))[0] == "AA"
    assert dupont_read(client, "900000082") == 0
    [consent] = consultation_consents(client)
    assert (consent["status"], consent["provision"]["type"]) == ("active", "deny")
    with client.application.config["ENGINE"].connect() as conn:
        bodies = [json.loads(body) for body in conn.execute(select(resources.c.body).where(
            resources.c.res_type == "Consent")).scalars()]
    [feeding] = [c for c in bodies if {"system": ZFA, "code": "alimentation"} in
                 [coding for category in c["category"] for coding in category["coding"]]]
    assert feeding["status"] == "inactive"   # a document for this record is refused
    assert post(client, adt("A08", "CL4", dupont("900000082"), zfa("20260401", "IC")))[0] == "AA"
    assert dupont_read(client, "900000082") == 1


@pytest.mark.parametrize("older", ["merged", "survivor"])
def test_a_merge_keeps_the_later_consent_of_each_kind(client, older):
    """Two records of one person, each with its ZFA consultation consent, merged (A40): the later
    statement holds and the other ends inactive. Both stayed in force, so an older opposition of
    the merged record kept the survivor closed whatever it and every later ZFA said."""
    merged, survivor = "900000071", "900000072"
    statements = {"merged": zfa("20260101", "INC"), "survivor": zfa("20260301", "IC")} if older == "merged" else \
        {"merged": zfa("20260301", "IC"), "survivor": zfa("20260101", "INC")}
    assert post(client, adt("A28", "M1", dupont(merged), statements["merged"]))[0] == "AA"
    assert post(client, adt("A28", "M2", dupont(survivor), statements["survivor"]))[0] == "AA"
    assert post(client, adt("A40", "M3", dupont(survivor), f"MRG|{merged}^^^CH-SAINT-AUBIN&{HOSPITAL[8:]}&ISO^PI"))[0] \
        == "AA"
    assert dupont_read(client, survivor) == 1   # the later one says IC
    assert sorted((c["status"], c["provision"]["type"]) for c in consultation_consents(client)) == \
        [("active", "permit"), ("inactive", "deny")]
    assert post(client, adt("A08", "M4", dupont(survivor), zfa("20260401", "INC")))[0] == "AA"
    assert dupont_read(client, survivor) == 0
    assert post(client, adt("A08", "M5", dupont(survivor), zfa("20260501", "IC")))[0] == "AA"
    assert dupont_read(client, survivor) == 1


def test_accented_names_are_identical_from_utf8_and_8859_15(client):
    assert post(client, sample("adt-a28-oeuvray-utf8.hl7"))[0] == "AA"
    assert post(client, sample("adt-a28-oeuvray-8859-15.hl7"))[0] == "AA"
    found = search(client, "Patient?identifier=urn:oid:1.2.250.1.213.1.4.10|285117505612337")
    patient = found["entry"][0]["resource"]
    # The second message reads as the first: it changes nothing, so it writes no second version.
    assert patient["meta"]["versionId"] == "1"
    assert patient["name"][0]["family"] == "ŒUVRAY" and patient["name"][0]["given"] == ["HÉLÈNE"]


def test_an_identity_sent_again_unchanged_writes_no_version(client, database):
    """A feed resends a patient's identity and consents with each admission and update: what
    changes nothing is acknowledged and kept raw, but writes no version, index row or AuditEvent."""
    ipp = "900000073"
    zfa = "ZFA|ACTIF|20260312080000|||||||INO|20260312080000|IC|20260312080000"

    def stored() -> dict:
        """Versions written, per type: each resource's current version number, summed."""
        with database[0].connect() as conn:
            return dict(conn.execute(select(resources.c.res_type, func.sum(resources.c.version))
                                     .group_by(resources.c.res_type)).all())

    assert post(client, adt("A28", "SAME1", pid(ipp, "REPRISE"), zfa))[0] == "AA"
    before = stored()
    assert before["Patient"] == 1 and before["Consent"] == 2
    assert post(client, adt("A01", "SAME2", pid(ipp, "REPRISE"), zfa))[0] == "AA"
    assert stored() == before
    assert post(client, adt("A08", "SAME3", pid(ipp, "REPRISE-NOUVEAU"), zfa))[0] == "AA"
    after = stored()
    assert after["Patient"] == 2 and after["Consent"] == 2 and after["AuditEvent"] == before["AuditEvent"] + 1
    with database[0].connect() as conn:
        assert conn.execute(select(func.count()).select_from(raw_inputs)).scalar_one() == 3


@pytest.mark.parametrize("zfa, where", [
    ("ZFA|ACTIF|20260312080000|||||||INO|20260312080000|OPPOSITION|20260312080000", "ZFA^1^11"),
    ("ZFA|ACTIF|20260312080000|||||||NON|20260312080000|IC|20260312080000", "ZFA^1^9"),
], ids=["consultation", "feeding"])
def test_a_consent_value_the_gateway_does_not_know_is_refused(client, database, zfa, where):
    """An opposition spelt otherwise than the PAM-FR values was taken for "not collected", and the
    record stayed open to consultation (or to feeding): the message is refused, AE with ERR 103."""
    code, segments = post(client, adt("A28", "ZFAX", pid("900000777", "OPPOSE"), zfa))
    assert code == "AE" and errors(segments)[0][2] == where and errors(segments)[0][3].startswith("103"), segments
    with database[0].connect() as conn:
        assert conn.execute(select(func.count()).select_from(resources)).scalar_one() == 0


def test_an_opposition_the_gateway_does_not_read_is_told_in_the_ack(client):
    """ZFA-6 and ZFA-7 (oppositions to break-the-glass and to the regulator) are usage X in PAM-FR
    2.11, and not read. A feed of an earlier PAM-FR that sent one got AA and nothing more: the ACK
    says, as a warning, that the opposition is not recorded. The identity and ZFA-9/11 are."""
    zfa = "ZFA|ACTIF|20260312080000||||Y|N|20260312080000|INO|20260312080000|IC|20260312080000"
    code, segments = post(client, adt("A28", "ZFA6", pid("900000778", "OPPOSE"), zfa))
    assert code == "AA", segments
    assert [(e[2], e[3].split("^")[0], e[4]) for e in errors(segments)] == [("ZFA^1^6", "0", "W")], segments
    assert "break-the-glass" in errors(segments)[0][8]
    assert search(client, "Patient?identifier=urn:oid:1.2.250.1.213.1.1.9.1001|900000778")["total"] == 1
    assert post(client, adt("A28", "ZFA7", pid("900000779", "SANS"), zfa.replace("|Y|N|", "|N|N|")))[1][2:] == []


@pytest.mark.parametrize("answer", ["O", "1", "UNK"])
def test_a_flag_answered_otherwise_than_y_or_n_is_refused(client, database, answer):
    """The document of this T02 is kept from the patient until it is announced (INVISIBLE_PATIENT
    Y). Answered O (oui), 1 or UNK, the flag was taken for N and the patient read the document: the
    message is refused (AE, ERR at the flag's OBX-5), and nothing of it is registered."""
    message = sample("mdm-1-t02-cr-imagerie-irm-lefevre.hl7").replace(
        b"INVISIBLE_PATIENT^Document Non Visible par le patient^MetaDMPMSS||Y^",
        b"INVISIBLE_PATIENT^Document Non Visible par le patient^MetaDMPMSS||" + answer.encode() + b"^")
    code, segments = post(client, message)
    assert code == "AE" and errors(segments)[0][2] == "OBX^3^5" and errors(segments)[0][3].startswith("103"), segments
    with database[0].connect() as conn:
        assert conn.execute(select(func.count()).select_from(resources)
                            .where(resources.c.res_type == "DocumentReference")).scalar_one() == 0


def test_t02_t10_t04_register_replace_and_delete(client):
    lefevre = PATIENTS["lefevre"]
    code, _ = post(client, sample("mdm-1-t02-cr-imagerie-irm-lefevre.hl7"))
    assert code == "AA"
    query = f"DocumentReference?patient.identifier={lefevre['ins_system']}|{lefevre['ins']}"
    first = search(client, query + "&status=current")["entry"][0]["resource"]
    assert any(label["coding"][0]["code"] == "INVISIBLE_PATIENT" for label in first["securityLabel"])
    submission = search(client, f"List?item=DocumentReference/{first['id']}")["entry"][0]["resource"]
    contained = {c["id"]: c for c in submission["contained"]}
    sender = contained[contained[submission["source"]["reference"][1:]]["practitioner"]["reference"][1:]]
    assert any(i["value"] == "899900000038" for i in sender["identifier"])

    assert post(client, sample("mdm-2-t10-cr-imagerie-irm-lefevre.hl7"))[0] == "AA"
    current = search(client, query + "&status=current")["entry"]
    assert len(current) == 1 and current[0]["resource"]["relatesTo"][0] == {
        "code": "replaces", "target": {"reference": f"DocumentReference/{first['id']}"}}
    assert fhir_get(client, f"/fhir/DocumentReference/{first['id']}").get_json()["status"] == "superseded"
    # The first version waited for its announcement (INVISIBLE_PATIENT Y); the new one states N, its
    # author's to state, and the patient reads it: a replacement keeps only the masking of the first.
    as_lefevre = client.bearer("patient", patient=lefevre["ins"])
    assert client.get(f"/fhir/DocumentReference/{current[0]['resource']['id']}", headers=as_lefevre).status_code == 200
    assert client.get(f"/fhir/DocumentReference/{first['id']}", headers=as_lefevre).status_code == 404

    assert post(client, sample("mdm-3-t04-cr-imagerie-irm-lefevre.hl7"))[0] == "AA"
    assert search(client, query + "&status=current")["total"] == 0
    assert search(client, query)["total"] == 1  # the superseded first version; the deleted one is gone
    # Deletion is a FHIR delete (README, "Deletion"): no status serves it, a read answers 410.
    assert search(client, query + "&status=entered-in-error")["total"] == 0
    deleted = current[0]["resource"]["id"]
    assert fhir_get(client, f"/fhir/DocumentReference/{deleted}").status_code == 410
    # The deleted document sent again (another control id: an engine sharing it again) was answered
    # AA, "this document is already registered: nothing new stored", and no one could read it. It is
    # refused, saying why; its replaced version, still registered, is answered as before.
    code, segments = post(client, sample("mdm-2-t10-cr-imagerie-irm-lefevre.hl7").replace(b"|MDM0002|", b"|MDM0002-B|"))
    assert code == "AE" and errors(segments)[0][3].startswith("205"), segments
    assert "was deleted on" in errors(segments)[0][8] and "send it under a new one" in errors(segments)[0][8]
    assert search(client, query + "&status=current")["total"] == 0
    code, segments = post(client, sample("mdm-1-t02-cr-imagerie-irm-lefevre.hl7").replace(b"|MDM0001|", b"|MDM0001-B|"))
    assert code == "AA" and "already registered" in errors(segments)[0][8], segments


def with_cda(message: bytes, change) -> bytes:
    """The message, its OBX-5's CDA changed (`change` of its text), encoded again."""
    found = re.search(rb"\^Base64\^([A-Za-z0-9+/=]+)", message)
    cda = change(base64.b64decode(found.group(1)).decode())
    return message[:found.start(1)] + base64.b64encode(cda.encode()) + message[found.end(1):]


def test_a_document_id_with_an_extension_is_read_from_txa_as_the_ci_sis_volet_fills_it(client):
    """The volet: a CDA id with an extension gives TXA-12.1 (and TXA-13.1) the extension and
    TXA-12.3 the root, ISO. Component 1 alone was read: the T02 was refused (AE 207, "TXA-12 is not
    the id of the CDA"), a T10 naming its parent there alone found none, and a T04 nothing."""
    root = "1.2.250.1.213.1.1.9.2.4"
    lefevre = PATIENTS["lefevre"]
    query = f"DocumentReference?patient.identifier={lefevre['ins_system']}|{lefevre['ins']}"
    first = with_cda(sample("mdm-1-t02-cr-imagerie-irm-lefevre.hl7"), lambda cda: cda.replace(
        f'<id root="{root}.1"/>', f'<id root="{root}" extension="CR-1"/>'))
    first = first.replace(f"|{root}.1|".encode(), f"|CR-1^^{root}^ISO|".encode())
    code, segments = post(client, first)
    assert code == "AA", segments
    registered = search(client, query + "&status=current")["entry"][0]["resource"]
    assert registered["masterIdentifier"] == {"use": "usual", "system": f"urn:oid:{root}", "value": "CR-1"}

    # The new version names its parent in TXA-13 alone (no relatedDocument in its CDA).
    second = with_cda(sample("mdm-2-t10-cr-imagerie-irm-lefevre.hl7"), lambda cda: re.sub(
        r"<relatedDocument.*?</relatedDocument>", "", cda.replace(f'<id root="{root}.2"/>',
                                                                  f'<id root="{root}" extension="CR-2"/>')))
    second = second.replace(f"|{root}.2|{root}.1|".encode(), f"|CR-2^^{root}^ISO|CR-1^^{root}^ISO|".encode())
    code, segments = post(client, second)
    assert code == "AA", segments
    current = search(client, query + "&status=current")["entry"]
    assert [c["resource"]["relatesTo"][0]["target"]["reference"] for c in current] == \
        [f"DocumentReference/{registered['id']}"]

    deletion = sample("mdm-3-t04-cr-imagerie-irm-lefevre.hl7").replace(
        f"|{root}.2|{root}.1|".encode(), f"|CR-2^^{root}^ISO|CR-1^^{root}^ISO|".encode())
    code, segments = post(client, deletion)
    assert code == "AA", segments
    assert search(client, query + "&status=current")["total"] == 0


def test_a_document_whose_base64_leaves_its_final_padding_out_is_registered(client):
    """Five of the ANS's own example messages (hl7V2-exemples: CR-IMG in MDM, CR-BIO in ORU) carry
    their CDA in base64 without its final `=`: each was refused, "OBX-5 declares Base64 but its data
    is not valid base64". What the padding stands for is certain; a last group of one character,
    which stands for no whole byte, is still refused."""
    message = sample("oru-r01-cr-biologie-martin.hl7")
    found = re.search(rb"\^Base64\^([A-Za-z0-9+/=]+)", message)
    data = base64.b64decode(found.group(1))
    data += b" " * (len(data) % 3 == 0)   # a length whose encoding ends with padding
    encoded = base64.b64encode(data)
    assert encoded.endswith(b"=")
    code, segments = post(client, message[:found.start(1)] + encoded.rstrip(b"=") + message[found.end(1):])
    assert code == "AA", segments
    martin = PATIENTS["martin"]
    found_doc = search(client, f"DocumentReference?patient.identifier={martin['ins_system']}|{martin['ins']}")
    url = found_doc["entry"][0]["resource"]["content"][0]["attachment"]["url"]
    assert fhir_get(client, url.replace("http://gateway.test", "")).data == data
    one_over = encoded.rstrip(b"=") + b"Q" * ((1 - len(encoded.rstrip(b"="))) % 4)   # a last group of one
    code, segments = post(client, (message[:found.start(1)] + one_over + message[found.end(1):])
                          .replace(b"|ORU0001|", b"|ORU0001-B|"))
    assert code == "AE" and "not valid base64" in errors(segments)[0][8], segments


def test_what_the_flags_ask_beside_the_shared_record_is_told_and_a_secret_connection_hides_the_document(client):
    """The volet's GESTIONNAIRE mails the document by MSSanté (DESTMSSANTEPS, DESTMSSANTEPAT) and
    sends business acknowledgements (ZAM^Z01 for ACK_RECEPTION, ZAM^Z03 for ACK_LECTURE_MSS): this
    gateway is the shared record and does neither, and each was kept and ignored in silence. The ACK
    says so, a warning at each flag asked (Y). CONNEXION_SECRETE Y (a minor's care kept from their
    legal representatives) was ignored too: the document is hidden from them."""
    flags = "".join(f"OBX|{n}|CE|{flag}^{flag}^MetaDMPMSS||{answer}^^expandedYes-NoIndicator||||||F|\n"
                    for n, (flag, answer) in enumerate([
                        ("CONNEXION_SECRETE", "Y"), ("DESTMSSANTEPS", "Y"), ("DESTMSSANTEPAT", "Y"),
                        ("ACK_RECEPTION", "Y"), ("ACK_LECTURE_MSS", "Y"), ("MODIF_CONF_CODE", "Y"),
                        ("ACK_LECTURE", "N")], start=6))
    code, segments = post(client, sample("oru-r01-cr-biologie-martin.hl7") + flags.encode())
    assert code == "AA", segments
    told = {err[2]: err[8] for err in errors(segments)}
    assert sorted(told) == ["OBX^10^5", "OBX^7^5", "OBX^8^5", "OBX^9^5"]   # MODIF_CONF_CODE: a new document
    assert all(err[4] == "W" for err in errors(segments))
    assert "DESTMSSANTEPS is Y" in told["OBX^7^5"] and "(RCT) were not sent it" in told["OBX^7^5"]
    assert "the patient was not sent it" in told["OBX^8^5"]
    assert "ZAM, event Z01" in told["OBX^9^5"] and "ZAM, event Z03" in told["OBX^10^5"]
    martin = PATIENTS["martin"]
    found = search(client, f"DocumentReference?patient.identifier={martin['ins_system']}|{martin['ins']}")
    labels = [c["code"] for label in found["entry"][0]["resource"]["securityLabel"] for c in label["coding"]]
    assert "INVISIBLE_REPRESENTANTS_LEGAUX" in labels, labels
    # Answered otherwise than Y or N, it is refused as the other flags that decide who sees a document.
    unclear = sample("oru-r01-cr-biologie-martin.hl7").replace(b"|ORU0001|", b"|ORU0001-B|") + \
        b"OBX|6|CE|CONNEXION_SECRETE^Connexion Secrete^MetaDMPMSS||O^^expandedYes-NoIndicator||||||F|\n"
    code, segments = post(client, unclear)
    assert code == "AE" and errors(segments)[0][2] == "OBX^6^5", segments


MODIF_CONF_CODE = (b"OBX|6|CWE|MODIF_CONF_CODE^Modification Confidentiality Code^MetaDMPMSS||Y^^expandedYes-NoIndicator"
                   b"||||||F|\n")


@pytest.mark.parametrize("masked_by", ["its sender", "the patient"])
def test_a_replacement_with_modif_conf_code_lifts_its_sender_s_own_mask_not_the_patient_s(client, masked_by):
    """MODIF_CONF_CODE Y (the volet): the transaction changes the document's visibility, its flags
    saying which. A replacement keeps the masks of the version it replaces (README, "A replacement
    keeps the masking"), and a feed, which has no PATCH, could never lift the mask it set: its
    MASQUE_PS N with MODIF_CONF_CODE Y was ignored. It lifts the sender's own mask; the patient's is
    theirs to lift, kept, and the ACK says so."""
    lefevre = PATIENTS["lefevre"]
    query = f"DocumentReference?patient.identifier={lefevre['ins_system']}|{lefevre['ins']}&status=current"
    # Announced at once (INVISIBLE_PATIENT N), so that its patient reads it.
    first = re.sub(rb"(INVISIBLE_PATIENT\^[^|]*\|\|)Y", rb"\1N", sample("mdm-1-t02-cr-imagerie-irm-lefevre.hl7"))
    if masked_by == "its sender":
        first = re.sub(rb"(MASQUE_PS\^[^|]*\|\|)N", rb"\1Y", first)
    assert post(client, first)[0] == "AA"
    document = search(client, query)["entry"][0]["resource"]
    if masked_by == "the patient":
        mask = [{"op": "add", "path": "/securityLabel/-",
                 "value": {"coding": [{"system": codes.VISIBILITY_SYSTEM, "code": "MASQUE_PS"}]}}]
        masked = client.patch(f"/fhir/DocumentReference/{document['id']}", data=json.dumps(mask),
                              headers={"Content-Type": "application/json-patch+json",
                                       **client.bearer("patient", patient=lefevre["ins"])})
        assert masked.status_code == 200, masked.json
    code, segments = post(client, sample("mdm-2-t10-cr-imagerie-irm-lefevre.hl7") + MODIF_CONF_CODE)
    assert code == "AA", segments
    labels = {c["code"] for label in search(client, query)["entry"][0]["resource"]["securityLabel"]
              for c in label["coding"]}
    if masked_by == "its sender":
        assert "MASQUE_PS" not in labels and errors(segments) == [], (labels, segments)
    else:
        assert "MASQUE_PS" in labels, labels
        assert [err[2] for err in errors(segments)] == ["OBX^6^5"] and "the patient's to lift" in errors(segments)[0][8]


def test_oru_registers_the_document(client):
    code, _ = post(client, sample("oru-r01-cr-biologie-martin.hl7"))
    assert code == "AA"
    martin = PATIENTS["martin"]
    found = search(client, f"DocumentReference?patient.identifier={martin['ins_system']}|{martin['ins']}&status=current")
    assert found["total"] == 1 and found["entry"][0]["resource"]["type"]["coding"][0]["code"] == "11502-2"


def test_a_retransmission_gets_the_original_ack_and_stores_nothing(client, database):
    data = sample("oru-r01-cr-biologie-martin.hl7")
    first = client.post("/hl7v2", data=data, content_type="x-application/hl7-v2+er7").data
    restamped = data.replace(b"|20260310180000|", b"|20260310180500|", 1)  # an engine that restamps MSH-7
    again = client.post("/hl7v2", data=restamped, content_type="x-application/hl7-v2+er7").data
    assert again == first
    with database[0].connect() as conn:
        assert conn.execute(select(func.count()).select_from(raw_inputs)).scalar_one() == 1
        assert conn.execute(select(func.count()).select_from(resources).where(
            resources.c.res_type == "DocumentReference")).scalar_one() == 1


def test_copies_sent_at_the_same_time_are_kept_once(client, database):
    """Six connections send the same message at once: its raw copy is kept once, its document
    stored once; each copy is answered AA (the original ACK) or AE (still being processed: send it
    again), never processed as a second message."""
    data = sample("oru-r01-cr-biologie-martin.hl7")
    start = threading.Barrier(6)

    def send(_):
        sender = client.application.test_client()
        sender.environ_base.update(client.environ_base)
        start.wait(timeout=30)
        return post(sender, data)[0]

    with ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(send, range(6)))
    assert "AA" in codes and set(codes) <= {"AA", "AE"}, codes
    with database[0].connect() as conn:
        assert conn.execute(select(func.count()).select_from(raw_inputs)).scalar_one() == 1
        assert conn.execute(select(func.count()).select_from(resources).where(
            resources.c.res_type == "DocumentReference")).scalar_one() == 1


def test_a_reused_control_id_is_processed_with_a_warning(client):
    assert post(client, adt("A28", "SAME", pid("900000071", "UN")))[0] == "AA"
    code, segments = post(client, adt("A28", "SAME", pid("900000072", "DEUX")))
    assert code == "AA"
    assert errors(segments)[0][3].startswith("205^") and errors(segments)[0][4] == "W"
    assert search(client, f"Patient?identifier={HOSPITAL}|900000072")["total"] == 1


def test_a_patient_who_opposed_feeding_gets_no_document(client):
    assert post(client, sample("adt-a31-garnier-opposition.hl7"))[0] == "AA"
    garnier = PATIENTS["garnier"]
    message = sample("oru-r01-cr-biologie-martin.hl7").decode()
    # The CDA stays Martin's: first the PID check refuses the mismatch.
    mismatch = message.replace(PATIENTS["martin"]["ins"], garnier["ins"]).replace(PATIENTS["martin"]["ipp"], garnier["ipp"])
    code, segments = post(client, mismatch)
    assert code == "AE" and errors(segments)[0][2] == "PID^1^3"
    cda = (SAMPLES.parent / "cda" / "cr-operatoire-garnier.xml").read_text()
    response = client.post("/cda", data=cda, content_type="application/xml")
    assert response.status_code == 422
    assert "opposed feeding" in response.get_json()["issue"][0]["diagnostics"]


def test_merge_moves_documents_and_identifiers_to_the_survivor(client):
    lefevre = PATIENTS["lefevre"]
    assert post(client, sample("mdm-1-t02-cr-imagerie-irm-lefevre.hl7"))[0] == "AA"
    duplicate = search(client, f"Patient?identifier={HOSPITAL}|{lefevre['ipp']}")["entry"][0]["resource"]
    merge = merge_lefevre_into_dubois("MRG1")
    assert post(client, merge)[0] == "AA"
    survivor = search(client, f"Patient?identifier={HOSPITAL}|900000090")["entry"][0]["resource"]
    docs = search(client, f"DocumentReference?patient.identifier={HOSPITAL}|{lefevre['ipp']}&status=current")
    assert docs["total"] == 1
    assert docs["entry"][0]["resource"]["subject"]["reference"] == f"Patient/{survivor['id']}"
    by_ins = search(client, f"DocumentReference?patient.identifier={lefevre['ins_system']}|{lefevre['ins']}")
    assert by_ins["total"] == 1
    merged = fhir_get(client, f"/fhir/Patient/{duplicate['id']}").get_json()
    assert merged["active"] is False and merged["link"][0]["type"] == "replaced-by"


def test_a_merge_leaves_a_deleted_document_deleted_and_the_whole_record_to_the_survivor(client, database, monkeypatch):
    """A40 wrote every resource of the merged patient anew, deleted ones too: a document deleted by
    MDM^T04 came back current under the survivor, and the merged Patient stayed its own record,
    which the survivor's destruction left behind. Now the deleted document stays deleted (410) and,
    with the merged Patient, belongs to the survivor's record as it is. (Read and moved two
    resources at a time here, their AuditEvents linked into the chain as each two are moved.)"""
    monkeypatch.setattr(repository, "PATIENT_PAGE", 2)
    lefevre = PATIENTS["lefevre"]
    for name in ("mdm-1-t02-cr-imagerie-irm-lefevre.hl7", "mdm-2-t10-cr-imagerie-irm-lefevre.hl7",
                 "mdm-3-t04-cr-imagerie-irm-lefevre.hl7"):
        assert post(client, sample(name))[0] == "AA"
    with database[0].connect() as conn:
        [deleted_id] = conn.execute(select(resources.c.res_id).where(
            resources.c.res_type == "DocumentReference", resources.c.deleted)).scalars().all()
    before = search(client, f"DocumentReference?patient.identifier={HOSPITAL}|{lefevre['ipp']}")
    assert [e["resource"]["status"] for e in before["entry"]] == ["superseded"]
    merge = merge_lefevre_into_dubois("MRG2")
    assert post(client, merge)[0] == "AA"
    with database[0].connect() as conn:
        owned = conn.execute(select(resources.c.res_type, resources.c.deleted, resources.c.patient_id).where(
            resources.c.patient_id.is_not(None))).all()
    [owner] = {row.patient_id for row in owned}
    assert sorted(row.res_type for row in owned if row.deleted) == ["Binary", "DocumentReference"]
    assert [row.res_type for row in owned if row.res_type == "Patient"] == ["Patient", "Patient"]
    survivor = search(client, f"Patient?identifier={HOSPITAL}|900000090")["entry"][0]["resource"]
    assert owner == survivor["id"]
    after = search(client, f"DocumentReference?patient.identifier={HOSPITAL}|900000090")
    assert [e["resource"]["status"] for e in after["entry"]] == ["superseded"]
    assert fhir_get(client, f"/fhir/DocumentReference/{deleted_id}").status_code == 410
    assert verify_chain(database[0]).broken_at is None


def test_a_document_sent_for_a_merged_patient_s_id_goes_to_the_survivor_s_record(client):
    """A FHIR client that kept a Patient's id from before an A40 sent a document naming it: it was
    registered under the merged patient, whose rules had moved to the survivor, and neither the
    patient nor their doctors saw it. It goes to the survivor's record."""
    lefevre = PATIENTS["lefevre"]
    assert post(client, sample("mdm-1-t02-cr-imagerie-irm-lefevre.hl7"))[0] == "AA"
    merged_id = search(client, f"Patient?identifier={HOSPITAL}|{lefevre['ipp']}")["entry"][0]["resource"]["id"]
    merge = merge_lefevre_into_dubois("MRG3")
    assert post(client, merge)[0] == "AA"
    pdf = {"resourceType": "DocumentReference",
           "contained": [{"resourceType": "Practitioner", "id": "author",
                          "identifier": [{"system": "urn:oid:1.2.250.1.71.4.2.1", "value": "899900000012"}]}],
           "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": "urn:oid:1.2.250.1.213.1.1.9.79"},
           "status": "current", "type": {"coding": [{"system": "http://loinc.org", "code": "11488-4"}]},
           "subject": {"reference": f"Patient/{merged_id}"}, "author": [{"reference": "#author"}],
           "content": [{"attachment": {"contentType": "application/pdf",
                                       "data": base64.b64encode(b"%PDF-1.4\n%%EOF\n").decode()}}]}
    answer = client.post("/fhir/DocumentReference", data=json.dumps(pdf), content_type="application/fhir+json")
    assert answer.status_code == 201, answer.data
    survivor = search(client, f"Patient?identifier={HOSPITAL}|900000090")["entry"][0]["resource"]
    assert answer.get_json()["subject"]["reference"] == f"Patient/{survivor['id']}"
    docs = search(client, f"DocumentReference?patient.identifier={HOSPITAL}|900000090&status=current")
    assert docs["total"] == 2


def test_a_document_stored_while_its_patient_is_merged_waits_and_goes_to_the_survivor(client, second_gateway, database,
                                                                                      backend, monkeypatch):
    """PostgreSQL, two gateways: a CDA for a patient reaches one while the other merges that
    patient into another (A40). It found the patient by identifiers the merge had moved but not
    committed, and was stored under the merged patient once the merge had moved the record: a
    record whose rules had gone, the document seen by no one. It waits for the merge's end, and goes
    to the survivor's record."""
    if backend == "sqlite":
        pytest.skip("SQLite has one writer: the two transactions cannot overlap")
    martin = PATIENTS["martin"]
    cda = (SAMPLES.parent / "cda" / "cr-biologie-martin.xml").read_bytes()
    assert client.post("/cda", data=cda, content_type="application/xml").status_code == 201
    moved, release = threading.Event(), threading.Event()
    move = repository.UnitOfWork.move_rest_of_record

    def move_then_wait(self, from_id, to_id):
        move(self, from_id, to_id)
        moved.set()
        assert release.wait(60)

    monkeypatch.setattr(repository.UnitOfWork, "move_rest_of_record", move_then_wait)
    survivor_pid = "PID|1||900000090^^^CH-SAINT-AUBIN&1.2.250.1.213.1.1.9.1001&ISO^PI||MARTIN^PAUL^^^^^L||19850612|M"
    merge = adt("A40", "MRG4", survivor_pid, f"MRG|{martin['ins']}^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS")
    second = cda.replace(b'<id root="1.2.250.1.213.1.1.9.2.7.1"/>', b'<id root="1.2.250.1.213.1.1.9.2.7.1.1"/>', 1)
    answers = {}
    merging = threading.Thread(target=lambda: answers.update(merge=post(client, merge)[0]))
    storing = threading.Thread(target=lambda: answers.update(cda=second_gateway.post(
        "/cda", data=second, content_type="application/xml").status_code))

    def waiting_for_a_lock() -> bool:
        with database[0].connect() as conn:
            return conn.execute(select(func.count()).select_from(text("pg_locks")).where(
                text("NOT granted"))).scalar_one() > 0

    try:
        merging.start()
        assert moved.wait(60)
        storing.start()
        deadline = time.monotonic() + 30
        while storing.is_alive() and not waiting_for_a_lock() and time.monotonic() < deadline:
            time.sleep(0.01)
        stored_during_the_merge = not storing.is_alive()
    finally:
        release.set()
        merging.join(60)
        storing.join(60)
    assert answers == {"merge": "AA", "cda": 201}
    assert not stored_during_the_merge
    survivor = search(client, f"Patient?identifier={HOSPITAL}|900000090")["entry"][0]["resource"]
    docs = search(client, f"DocumentReference?patient.identifier={HOSPITAL}|900000090&status=current")
    assert docs["total"] == 2
    assert {e["resource"]["subject"]["reference"] for e in docs["entry"]} == {f"Patient/{survivor['id']}"}


def test_a47_changes_an_identifier(client):
    assert post(client, adt("A28", "C1", pid("900000080", "FAUX")))[0] == "AA"
    change = adt("A47", "C2", pid("900000081", "FAUX"), "MRG|900000080^^^CH-SAINT-AUBIN&1.2.250.1.213.1.1.9.1001&ISO^PI")
    assert post(client, change)[0] == "AA"
    assert search(client, f"Patient?identifier={HOSPITAL}|900000080")["total"] == 0
    assert search(client, f"Patient?identifier={HOSPITAL}|900000081")["total"] == 1


@pytest.mark.parametrize("message, code, error", [
    ("MSH|^~\\&|A|B|C|D|20260101||VXU^V04^VXU_V04|X1|P|2.5.1\rPID|1", "AR", "200"),
    ("MSH|^~\\&|A|B|C|D|20260101||MDM^T01^MDM_T01|X2|P|2.6\rPID|1", "AR", "201"),
    ("MSH|^~\\&|A|B|C|D|20260101||ADT^A01|X3|P|3.0\rPID|1", "AR", "203"),
    ("MSH|^~\\&|A|B|C|D|20260101||ADT^A01||P|2.5\rPID|1", "AR", "101"),
    ("PID|1||x", "AR", "100"),
    ("MSH|^~\\&|A|B|C|D|20260101||ADT^A01|X4|P|2.5\rPID|1||185067511204555^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS",
     "AE", "102"),
    # An INS without its value is no identifier; the patient the refusal names is read without one.
    ("MSH|^~\\&|A|B|C|D|20260101||ADT^A01|X5|P|2.5\rPID|1||^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS",
     "AE", "101"),
])
def test_refusals_are_answered_with_err(client, message, code, error):
    got, segments = post(client, message)
    assert got == code
    assert errors(segments)[0][3].split("^")[0] == error


@pytest.mark.parametrize("charset, body, error", [
    ("", "PID|1||1^^^A&1.2&ISO^PI||HÉLOÏSE^ANA".encode("iso8859-1"), "102"),          # Latin-1, declared as none
    ("UNICODE UTF-8", "PID|1||1^^^A&1.2&ISO^PI||HÉLOÏSE^ANA".encode("iso8859-1"), "102"),
    ("ISO IR87", "PID|1||1^^^A&1.2&ISO^PI||ANA".encode(), "203"),                    # a set not supported
], ids=["latin-1-undeclared", "latin-1-declared-utf-8", "unsupported-set"])
def test_a_message_that_cannot_be_read_whole_is_answered_with_its_control_id(client, charset, body, error):
    """The ACK of a message whose bytes are not of its character set left MSA-2 and the
    receiving application empty: an interface engine matches ACKs by MSA-2, and had none to match."""
    message = f"MSH|^~\\&|GAM|CH-SAINT-AUBIN|DMP|DMP|20260101||ADT^A28^ADT_A05|UNREAD1|P|2.5|||||FRA|{charset}\r"
    got, segments = post(client, message.encode() + body + b"\r")
    assert got == "AR" and errors(segments)[0][3].split("^")[0] == error
    assert segments[1][2] == "UNREAD1"                          # MSA-2
    assert segments[0][2:6] == ["DMP", "DMP", "GAM", "CH-SAINT-AUBIN"]   # MSH-3 to 6, the sender's swapped


def stored_patients(database) -> int:
    with database[0].connect() as conn:
        return conn.execute(select(func.count()).select_from(resources).where(
            resources.c.res_type == "Patient")).scalar_one()


def test_a_line_break_sent_inside_a_field_refuses_the_message_whole(client, database):
    """A field holding a bare LF, in segments ended by CR: what followed it was read as a segment
    of no name and ignored, and the patient stored as DU, born on no date. Now AR at the field
    the line break cut, and only the raw message kept, refused."""
    cut = adt("A28", "CUT1", pid("900000083", "DU\nPONT"))
    code, segments = post(client, cut)
    assert code == "AR" and errors(segments)[0][2:4] == ["PID^1^5", "100^Segment sequence error^HL70357"]
    # A document whose base64 the sender wrapped at 76 characters, with CRLF.
    mdm = sample("mdm-1-t02-cr-imagerie-irm-lefevre.hl7").decode()
    data = mdm.split("^Base64^", 1)[1].split("\r", 1)[0].split("\n", 1)[0]
    wrapped = mdm.replace(data, "\r\n".join(data[i:i + 76] for i in range(0, len(data), 76)))
    code, segments = post(client, wrapped)
    assert code == "AR" and errors(segments)[0][2] == "OBX^1^5"
    assert stored_patients(database) == 0
    with database[0].connect() as conn:
        kept = conn.execute(select(raw_inputs.c.status).where(raw_inputs.c.control_id.in_(["CUT1", "MDM0001"]))).all()
    assert sorted(kept) == [("refused",), ("refused",)]


def test_an_authority_named_with_spaces_names_a_uri_without_them(client):
    """HL7's own v2-to-FHIR examples name PID-3's authority `Homerton Case Note Number`, with no OID:
    the Patient's identifier system held its spaces, which no URI holds, and failed the official
    check (found by test_mutated_hl7v2_messages, with an escaped line break)."""
    import profiles

    ids = "PID|1||999999^^^Homerton Case Note Number^MRN~111111^^^Person ID\\X0D0A\\X^PI||HOMER^JANE||19781030|F"
    assert post(client, adt("A28", "URN1", ids))[0] == "AA"
    patient = search(client, "Patient?identifier=999999")["entry"][0]["resource"]
    assert [i["system"] for i in patient["identifier"]] == [
        "urn:hl7v2-assigning-authority:Homerton%20Case%20Note%20Number", "urn:hl7v2-assigning-authority:Person%20ID%0D%0AX"]
    assert search(client, "Patient?identifier=urn:hl7v2-assigning-authority:Homerton%2520Case%2520Note%2520Number|999999"
                  )["total"] == 1
    if profiles.available():
        collected = profiles.Collected()
        collected.add(patient)
        assert collected.errors() == []


def test_a_second_segment_the_structure_holds_once_is_refused_not_ignored(client, database):
    """A second PID in an ADT or an MDM (another patient), a second MRG in an A40 (another
    merge), a second TXA: only the first was read, and the message acknowledged AA."""
    survivor = pid("900000084", "DEUX")
    merge = "MRG|900000085^^^CH-SAINT-AUBIN&1.2.250.1.213.1.1.9.1001&ISO^PI"
    mdm = sample("mdm-1-t02-cr-imagerie-irm-lefevre.hl7").decode()
    txa = next(line for line in re.split("\r\n|\r|\n", mdm) if line.startswith("TXA"))
    for message, location in [(adt("A28", "TWO1", survivor, pid("900000086", "AUTRE")), "PID^2"),
                              (adt("A40", "TWO2", survivor, merge, survivor, merge.replace("85", "87")), "PID^2"),
                              (adt("A40", "TWO3", survivor, merge, merge.replace("85", "87")), "MRG^2"),
                              (adt("A02", "TWO4", survivor, pid("900000086", "AUTRE"), "ZFA|ACTIF"), "PID^2"),
                              (mdm.replace(txa, txa + "\r" + txa), "TXA^2")]:
        code, segments = post(client, message)
        assert code == "AE" and errors(segments)[0][2:4] == [location, "100^Segment sequence error^HL70357"], segments
    assert stored_patients(database) == 0


def _sqlalchemy_operational_error():
    from sqlalchemy.exc import OperationalError
    return OperationalError("INSERT", {}, Exception("database unavailable"))


def _psycopg_operational_error():
    import psycopg
    return psycopg.OperationalError("the connection is closed")


def _sqlite_operational_error():
    import pysqlite3.dbapi2 as sqlite
    return sqlite.OperationalError("database is locked")


def _database_unavailable(*args, **kwargs):
    """A step of the processing, as it fails when the database goes away."""
    raise _sqlalchemy_operational_error()


# The driver's own errors too: one raised while a connection that broke is used again reaches the
# unit of work unwrapped, and was answered AR (never send again) when the server restarted.
@pytest.mark.parametrize("failure", [_sqlalchemy_operational_error, _psycopg_operational_error,
                                     _sqlite_operational_error])
def test_a_database_failure_answers_ae_then_reprocess_succeeds(client, monkeypatch, failure):
    from gateway.services import patients

    def broken(*args, **kwargs):
        raise failure()

    monkeypatch.setattr(patients, "record_consents", broken)
    code, segments = post(client, sample("adt-a01-martin.hl7"))
    assert code == "AE" and errors(segments)[0][3].startswith("207^")
    assert search(client, "Patient?_summary=count")["total"] == 0  # nothing half-stored
    failed = client.get("/hl7v2/messages?status=failed", headers=client.admin).get_json()["messages"]
    assert len(failed) == 1
    monkeypatch.undo()
    response = client.post(f"/hl7v2/messages/{failed[0]['id']}/reprocess", headers=client.admin)
    assert response.get_json()["ack_code"] == "AA"
    shown = client.get(f"/hl7v2/messages/{failed[0]['id']}", headers=client.admin).get_json()
    assert shown["status"] == "processed" and any(r.startswith("Consent/") for r in shown["resources"])
    assert shown["message"].startswith("MSH|")


def test_a_version_that_arrives_after_its_replacement_is_registered_superseded(client):
    """Messages out of order: the T10 first (its parent kept by identifier), then the T02 it
    replaces, sent again after a failure. The record shows one current version."""
    lefevre = PATIENTS["lefevre"]
    query = f"DocumentReference?patient.identifier={lefevre['ins_system']}|{lefevre['ins']}"
    assert post(client, sample("mdm-2-t10-cr-imagerie-irm-lefevre.hl7"))[0] == "AA"
    assert post(client, sample("mdm-1-t02-cr-imagerie-irm-lefevre.hl7"))[0] == "AA"
    versions = {e["resource"]["masterIdentifier"]["value"]: e["resource"] for e in search(client, query)["entry"]}
    assert {uid: v["status"] for uid, v in versions.items()} == {
        "urn:oid:1.2.250.1.213.1.1.9.2.4.1": "superseded", "urn:oid:1.2.250.1.213.1.1.9.2.4.2": "current"}
    assert versions["urn:oid:1.2.250.1.213.1.1.9.2.4.2"]["relatesTo"][0]["target"] == {
        "identifier": {"system": "urn:ietf:rfc:3986", "value": "urn:oid:1.2.250.1.213.1.1.9.2.4.1"}}


def test_an_operator_reprocesses_a_replacement_that_failed(client, monkeypatch):
    """The MDM^T10 is the hospital's: reprocessed by an operator (an admin token), it replaces the
    document as it would have when it arrived, with the rights of the system that sent it."""
    from gateway.services import document_messages

    lefevre = PATIENTS["lefevre"]
    query = f"DocumentReference?patient.identifier={lefevre['ins_system']}|{lefevre['ins']}&status=current"
    assert post(client, sample("mdm-1-t02-cr-imagerie-irm-lefevre.hl7"))[0] == "AA"
    first = search(client, query)["entry"][0]["resource"]["id"]

    monkeypatch.setattr(document_messages, "register_document", _database_unavailable)
    assert post(client, sample("mdm-2-t10-cr-imagerie-irm-lefevre.hl7"))[0] == "AE"
    monkeypatch.undo()
    failed = client.get("/hl7v2/messages?status=failed", headers=client.admin).get_json()["messages"]
    assert [m["message_type"] for m in failed] == ["MDM^T10"]
    response = client.post(f"/hl7v2/messages/{failed[0]['id']}/reprocess", headers=client.admin)
    assert response.get_json()["ack_code"] == "AA", response.get_json()
    current = search(client, query)["entry"]
    assert [e["resource"]["relatesTo"][0]["target"]["reference"] for e in current] == [f"DocumentReference/{first}"]


def test_reprocessing_every_failed_message_leaves_one_a_listener_finished_meanwhile(client, monkeypatch, database):
    from gateway.services import messages, patients

    monkeypatch.setattr(patients, "record_consents", _database_unavailable)
    assert post(client, sample("adt-a01-martin.hl7"))[0] == "AE"
    monkeypatch.undo()
    reprocess = messages.reprocess

    def finished_first(repo, raw_id, max_bytes):
        # The listener's answer, between the operator's list and the reprocessing.
        with database[0].begin() as conn:
            conn.execute(update(raw_inputs).where(raw_inputs.c.id == raw_id).values(status="processed"))
        return reprocess(repo, raw_id, max_bytes)

    monkeypatch.setattr(messages, "reprocess", finished_first)
    response = client.post("/hl7v2/messages/reprocess-failed", headers=client.admin)
    assert response.status_code == 200 and response.get_json() == {"reprocessed": []}


def test_content_errors_are_answered_once_with_their_location_and_nothing_loops(client, monkeypatch):
    """A message that fails for a lasting reason is refused (AE with the field, or AR), never asked
    again with 207 "send it again"; a passing database failure is the only AE 207."""
    bad_birth = adt("A28", "C1", pid("900000070", "DATE").replace("|19850612|", "|19851345|"))
    code, segments = post(client, bad_birth)
    assert code == "AE" and errors(segments)[0][2] == "PID^1^7" and errors(segments)[0][3].startswith("102^")
    assert post(client, bad_birth)[0] == "AE"   # answered the same, from the first answer
    for field, value in ((15, "XX"), (16, "MAYBE")):
        msh = ["MSH", "^~\\&", "A", "B", "C", "D", "20260101", "", "ADT^A28", f"M{field}", "P", "2.5", "", "", "", ""]
        msh[field - 1] = value   # split on "|", index n is MSH-(n+1)
        code, segments = post(client, "|".join(msh) + "\r" + pid("900000071", "ACK") + "\r")
        assert code == "AR" and errors(segments)[0][2] == f"MSH^1^{field}"
    from gateway.services import patients

    def bug(*args, **kwargs):
        raise RuntimeError("a defect")

    monkeypatch.setattr(patients, "record_consents", bug)
    code, segments = post(client, sample("adt-a01-martin.hl7"))
    assert code == "AR" and errors(segments)[0][3].startswith("207^") and "send it again" not in segments[-1][-1]


def test_the_work_a_message_may_cause_is_bounded(client, database):
    """A message past the bounds (segments, repetitions, control id) is refused AR before anything
    is done with it: 5,000 ZFA held the database for a minute."""
    zfa = "ZFA|ACTIF|20260310080000|||||||INO|20260310080000|IC|20260310080000"
    many_segments = adt("A31", "B1", pid("900000090", "BOUND"), *[zfa] * 5000)
    code, segments = post(client, many_segments)
    assert code == "AR" and errors(segments)[0][3].startswith("100^")
    many_repetitions = adt("A31", "B2", pid("900000091", "BOUND").replace("^PI", "^PI" + "~x^^^A&1.2&ISO^PI" * 300))
    assert post(client, many_repetitions)[0] == "AR"
    long_id = adt("A31", "B" * 300, pid("900000092", "BOUND"))
    code, segments = post(client, long_id)
    assert code == "AR" and errors(segments)[0][2] == "MSH^1^10"
    with database[0].connect() as conn:
        assert conn.execute(select(func.count()).select_from(resources)).scalar_one() == 0


def test_only_a_producer_of_a_document_replaces_or_deletes_it_over_hl7v2(client):
    """MDM^T10 and T04 from a sender that names neither an author of the document nor its
    organisation are refused (AE), and the document stays current."""
    import base64

    assert post(client, sample("mdm-1-t02-cr-imagerie-irm-lefevre.hl7"))[0] == "AA"
    t10 = sample("mdm-2-t10-cr-imagerie-irm-lefevre.hl7").decode()
    b64 = t10.split("^Base64^", 1)[1].split("|", 1)[0]
    foreign = base64.b64decode(b64).replace(b"899900000038", b"899900000020").replace(b"1990000034", b"1990000018")
    forged = t10.replace(b64, base64.b64encode(foreign).decode()).replace("899900000038", "899900000020") \
        .replace("^^^990000034", "^^^990000018")
    code, segments = post(client, forged)
    assert code == "AE" and "author" in errors(segments)[0][8]
    t04 = sample("mdm-3-t04-cr-imagerie-irm-lefevre.hl7").decode().replace("899900000038", "899900000020") \
        .replace("^^^990000034", "^^^990000018")
    code, segments = post(client, t04)
    assert code == "AE"
    lefevre = PATIENTS["lefevre"]
    found = search(client, f"DocumentReference?patient.identifier={lefevre['ins_system']}|{lefevre['ins']}&status=current")
    assert found["total"] == 1 and found["entry"][0]["resource"]["masterIdentifier"]["value"].endswith(".4.1")


def test_a_document_unique_id_conflict_is_a_duplicate_key(client):
    assert post(client, sample("mdm-1-t02-cr-imagerie-irm-lefevre.hl7"))[0] == "AA"
    other = sample("mdm-1-t02-cr-imagerie-irm-lefevre.hl7").decode().replace("MDM0001", "MDM0901")
    import base64
    b64 = other.split("^Base64^", 1)[1].split("|", 1)[0]
    changed = base64.b64encode(base64.b64decode(b64).replace("Gonalgie".encode(), "Douleur".encode())).decode()
    code, segments = post(client, other.replace(b64, changed))
    assert code == "AE" and errors(segments)[0][3].startswith("205^")


def test_operators_see_a_message_s_layout_not_its_patient_data(client):
    """The admin role reads no patient data: /hl7v2/messages shows statuses, ACKs, errors and the
    segments, with identity, the document in OBX-5 and consents redacted."""
    assert post(client, sample("mdm-1-t02-cr-imagerie-irm-lefevre.hl7"))[0] == "AA"
    assert post(client, sample("adt-a01-martin.hl7"))[0] == "AA"
    listed = client.get("/hl7v2/messages", headers=client.admin).get_json()["messages"]
    for summary in listed:
        shown = client.get(f"/hl7v2/messages/{summary['id']}", headers=client.admin).get_json()
        # The ACK's own control id (process id + sequence) is digits that may happen to hold an IPP:
        # it is no patient data, so it is left out of the search.
        ack_id = shown["ack"].split("\r")[0].split("|")[9]
        text = json.dumps(shown).replace(ack_id, "ACK-ID")
        for patient in PATIENTS.values():
            assert patient["ins"] not in text and patient["ipp"] not in text
        assert "LEFEVRE" not in text and "MARTIN" not in text and "PD94bWwg" not in text   # nor the base64 CDA
        assert shown["message"].startswith("MSH|") and "PID|1|" in shown["message"] and shown["ack"]


def test_no_ack_when_the_sender_asks_for_none(client):
    message = "MSH|^~\\&|A|B|C|D|20260101||ADT^A28|N1|P|2.5|||NE|NE\r" + pid("900000060", "SILENCE") + "\r"
    response = client.post("/hl7v2", data=message, content_type="x-application/hl7-v2+er7")
    assert response.status_code == 204


def test_only_admitted_senders_are_processed(database):
    from gateway.access import AccessContext
    from gateway.services import feeds
    from gateway.storage.repository import Repository

    repo = Repository(database[0], AccessContext.system("mllp 10.0.0.7:4000"), "http://gateway.test")
    message = sample("adt-a01-martin.hl7")
    admitted = ("GAM|CH-SAINT-AUBIN@10.0.0.7",)
    refused = feeds.receive(repo, message, channel="mllp", max_bytes=1 << 20, senders=admitted, address="10.0.0.8")
    assert refused.code == "AR" and b"not admitted" in refused.ack
    accepted = feeds.receive(repo, message, channel="mllp", max_bytes=1 << 20, senders=admitted, address="10.0.0.7")
    assert accepted.code == "AA"
    with database[0].connect() as conn:  # the refused copy is kept, like every input
        assert conn.execute(select(raw_inputs.c.status).order_by(raw_inputs.c.id)).scalars().all() == [
            "refused", "processed"]


def test_what_operators_see_of_refused_inputs_names_no_patient(client):
    """A refusal's text is kept with the raw input and shown to operators (who read no patient
    data): it names the field, never the INS or the birth date it refused. The sender has both."""
    martin = PATIENTS["martin"]
    wrong_key = martin["ins"][:-2] + "00"
    refused = [adt("A28", "K1", pid("900000081", "CLE", wrong_key)),
               adt("A28", "K2", pid("900000082", "DATE").replace("|19850612|", "|19851345|")),
               sample("oru-r01-cr-biologie-martin.hl7").decode().replace(martin["ins"], PATIENTS["garnier"]["ins"])]
    for message in refused:
        code, segments = post(client, message)
        assert code == "AE" and errors(segments), segments
    bad_cda = client.post("/cda", data=(SAMPLES.parent / "invalid" / "bad-ins-key.xml").read_bytes(),
                          content_type="application/xml", headers=client.doctor)
    assert bad_cda.status_code == 422
    listed = json.dumps([client.get(path, headers=client.admin).get_json()
                         for path in ("/hl7v2/messages", "/documents/received")])
    shown = json.dumps([client.get(f"/hl7v2/messages/{m['id']}", headers=client.admin).get_json()
                        for m in json.loads(listed)[0]["messages"]])
    for secret in (wrong_key, "19851345", martin["ins"], PATIENTS["garnier"]["ins"], "185067511204500"):
        assert secret not in listed and secret not in shown
    assert "PID^1^7" in shown and "the INS is not valid" in listed


def test_an_operator_pages_through_the_messages_with_next(client, database):
    """A page holds at most 1,000 inputs whatever _count asks; `next` is given while a page is full,
    and following it lists each input once, newest first."""
    rows = [{"received_at": "2026-01-01T00:00:00", "channel": "mllp", "sha256": "0" * 64, "size": 1,
             "status": "processed"} for _ in range(1003)]
    with database[0].begin() as conn:
        conn.execute(insert(raw_inputs), rows)
        ids = conn.execute(select(raw_inputs.c.id).order_by(raw_inputs.c.id.desc())).scalars().all()
    seen, url = [], "/hl7v2/messages?_count=5000&status=processed"
    while url:
        page = client.get(url, headers=client.admin).get_json()
        seen.append([m["id"] for m in page["messages"]])
        url = page["next"]
    assert [len(p) for p in seen] == [1000, 3] and sum(seen, []) == ids


def test_the_operator_s_shell_shows_what_the_sender_wrote_whole(client, settings, monkeypatch, capsys):
    """`gateway messages list` and `show` read a sender's `[/x]` as markup: a traceback, so that no
    operator could list the messages any more, and `[b]` vanished from what was shown. Written to a
    pipe, the list cut every column to 80 characters (`2026-1…`, `proces…`): each message is now one
    line, whole, for grep."""
    from gateway import cli

    message = adt("A28", "[/ctl]", pid("900000099", "DUPONT"), "[/]|x").replace("GAM|CH-SAINT-AUBIN",
                                                                               "GAM[/x]|CH [b]AUBIN[/b]")
    code, segments = post(client, message)
    reason = "segment 4 does not begin with a segment name (three capital letters or digits)"
    assert code == "AR" and errors(segments)[0][8] == reason

    monkeypatch.setattr(cli.Settings, "from_env", lambda: settings)
    monkeypatch.setattr(cli, "configure_logging", lambda level: None)
    monkeypatch.setenv("COLUMNS", "80")
    assert cli.main(["messages", "list"]) == 0
    [row] = [line for line in capsys.readouterr().out.splitlines() if "[/ctl]" in line]
    assert row.split()[3:] == ["hl7v2-http", "GAM[/x]|CH", "[b]AUBIN[/b]", "ADT^A28", "[/ctl]", "refused",
                               "AR", *reason.split()]
    raw_id = row.split()[0]
    assert cli.main(["messages", "show", raw_id]) == 0
    shown = capsys.readouterr().out
    assert "from GAM[/x]|CH [b]AUBIN[/b]: ADT^A28 [/ctl]," in shown and f"status refused: {reason}" in shown
    assert cli.main(["messages", "show", raw_id, "--fields"]) == 0
    fields = capsys.readouterr().out.splitlines()
    assert "  MSH-3: GAM[/x]" in fields and "  MSH-10: [/ctl]" in fields and "[/]" in fields


def test_the_operator_s_shell_names_the_fields_of_a_batch_and_tells_why_a_message_s_cannot_be(client, settings,
                                                                                               monkeypatch, capsys):
    """`gateway messages show ID --fields` of a batch kept refused, or of a message refused because
    it has no MSH, was a traceback (MessageRejected)."""
    from gateway import cli

    monkeypatch.setattr(cli.Settings, "from_env", lambda: settings)
    monkeypatch.setattr(cli, "configure_logging", lambda level: None)
    post_batch(client, batch_of(adt("A28", "F0", pid("900000095", "LOT")), count=2))
    client.post("/hl7v2", data=b"PID|1||900000096\r", content_type="x-application/hl7-v2+er7")
    listed = client.get("/hl7v2/messages", headers=client.admin).get_json()["messages"]
    [unreadable, refused] = [message["id"] for message in listed]
    assert cli.main(["messages", "show", str(refused), "--fields"]) == 0
    fields = capsys.readouterr().out.splitlines()
    assert ["FHS", "  FHS-1: |", "  FHS-2: ^~\\&", "  FHS-3: GAM"] == fields[2:6] and "  FHS-11: F42" in fields
    assert "  BTS-1: 2" in fields and "  FTS-1: 1" in fields and "  MSH-10: F0" in fields
    assert cli.main(["messages", "show", str(unreadable), "--fields"]) == 0
    assert "its fields cannot be named: the message does not start with an MSH segment" in capsys.readouterr().out


def test_a_message_framed_for_mllp_and_sent_over_http_is_told_so(client):
    """Its <VT>, invisible in most tools, made it "not start with an MSH segment", which the sender
    saw it did; and the ACK left MSA-2 empty."""
    framed = "\x0b" + adt("A28", "FRAMED1", pid("900000098", "DUPONT")) + "\x1c\r"
    code, segments = post(client, framed)
    assert code == "AR" and segments[1][2] == "FRAMED1"
    assert errors(segments)[0][8].startswith("the message begins with <VT> (0x0B), the start of an MLLP frame")


@pytest.mark.parametrize("content_type", ["x-application/hl7-v2+er7", "application/hl7-v2+er7; charset=utf-8",
                                          "application/hl7-v2", "application/edi-hl7", "text/plain"])
def test_a_message_is_taken_under_the_types_engines_send_it_with(client, content_type):
    """`application/hl7-v2+er7`, the type the HL7 over HTTP specification's own example sends, was a
    415."""
    message = adt("A28", f"TYPE-{content_type[:12]}", pid("900000097", "DUPONT")).encode()
    answer = client.post("/hl7v2", data=message, content_type=content_type)
    assert answer.status_code == 200 and b"MSA|AA|" in answer.data


def test_a_body_of_another_type_is_refused_naming_those_taken(client):
    answer = client.post("/hl7v2", data=b"{}", content_type="application/json")
    assert answer.status_code == 415 and "x-application/hl7-v2+er7" in answer.json["issue"][0]["diagnostics"]


def test_the_charset_http_names_is_read_and_one_that_contradicts_msh_18_refused(client, database):
    """HL7 over HTTP names the message's character set in Content-Type: with MSH-18 empty, a
    Latin-1 message sent as `charset=ISO-8859-1` was refused as "not valid ASCII". One whose MSH-18
    says 8859/15 while HTTP says UTF-8, and whose bytes are UTF-8, was read as 8859/15: its
    patient stored as Å\x92UVRAY, without a word."""
    from gateway.services import messages

    latin = sample("adt-a28-oeuvray-8859-15.hl7").replace(b"|8859/15|", b"||").replace(b"ADT0004", b"HTTPCS1")
    answer = client.post("/hl7v2", data=latin, content_type="x-application/hl7-v2+er7; charset=ISO-8859-15")
    assert b"MSA|AA|HTTPCS1" in answer.data and answer.headers["Content-Type"].endswith("charset=ISO-8859-15")
    patient = search(client, "Patient?identifier=urn:oid:1.2.250.1.213.1.4.10|285117505612337")["entry"][0]["resource"]
    assert patient["name"][0]["family"] == "ŒUVRAY"
    # Kept with its Content-Type, it is read again the same way.
    with database[0].connect() as conn:
        raw_id = conn.execute(select(raw_inputs.c.id).where(raw_inputs.c.control_id == "HTTPCS1")).scalar_one()
    operator = client.application.config["ENGINE"]
    from gateway.access import AccessContext
    from gateway.storage.repository import Repository
    shown = messages.get_message(Repository(operator, AccessContext.system("operator"), "http://gateway.test"),
                                 raw_id, content=True)
    assert shown["charset"] == "8859/15" and "ŒUVRAY" in shown["message"]

    utf8 = sample("adt-a28-oeuvray-utf8.hl7").replace(b"|UNICODE UTF-8|", b"|8859/15|").replace(b"ADT0003", b"HTTPCS2")
    code, segments = post(client, utf8, "x-application/hl7-v2+er7; charset=UTF-8")
    assert code == "AR" and errors(segments)[0][3].startswith("203^")
    assert errors(segments)[0][8] == ("Content-Type's charset names UNICODE UTF-8, MSH-18 8859/15: the message's "
                                      "bytes are in one of them, which both should name")
    code, segments = post(client, latin, "x-application/hl7-v2+er7; charset=windows-1252")
    assert code == "AR" and "charset=windows-1252 in Content-Type is not supported" in errors(segments)[0][8]



def test_a_document_message_does_not_read_the_death_its_pid_states(client):
    """A document message compares its PID's sex and birth date with its CDA's; the death of PID-29
    and PID-30 is the identity feed's to apply. An MDM whose PID-29 was no time was an internal error
    (AR 207, kept `failed`) once the PID's traits were read: found by the fuzz."""
    message = sample("mdm-1-t02-cr-imagerie-irm-lefevre.hl7").decode()
    segments = message.splitlines()
    pid = next(i for i, segment in enumerate(segments) if segment.startswith("PID|"))
    fields = segments[pid].split("|")
    fields += [""] * (31 - len(fields))
    fields[29], fields[30] = "not a time", "Y"
    segments[pid] = "|".join(fields)
    code, acknowledgement = post(client, "\r".join(segments))
    assert code == "AA", acknowledgement


def batch_of(*messages: str, count: int | None = None, file: bool = True) -> bytes:
    """An interface engine's batch: FHS (control id F42), BHS (B7), the messages, BTS, FTS."""
    stated = len(messages) if count is None else count
    text = ("FHS|^~\\&|GAM|CH-SAINT-AUBIN|GW|DMP|20260310080000||||F42\r" if file else "") \
        + "BHS|^~\\&|GAM|CH-SAINT-AUBIN|GW|DMP|20260310080000||||B7\r" + "".join(messages) + f"BTS|{stated}\r" \
        + ("FTS|1\r" if file else "")
    return text.encode()


def post_batch(client, data: bytes):
    """The answer to a batch, read by python-hl7 (a third-party parser): its file, and the ACK codes
    with the control id each answers."""
    import hl7

    response = client.post("/hl7v2", data=data, content_type="x-application/hl7-v2+er7")
    assert response.status_code == 200, response.data
    answered = hl7.parse_file(response.data.decode())
    acks = [(str(m.segment("MSA")[1]), str(m.segment("MSA")[2])) for b in answered for m in b]
    return response, answered, acks


def test_a_batch_is_answered_by_a_batch_of_acks_and_sent_again_stores_nothing(client, database):
    """HL7's batch (FHS, BHS … BTS, FTS) was refused AR whole: "send each of its messages alone"."""
    messages = [adt("A28", f"B{n}", pid(f"90000008{n}", f"LOT{n}")) for n in range(3)]
    data = batch_of(*messages)
    response, answered, acks = post_batch(client, data)
    assert acks == [("AA", "B0"), ("AA", "B1"), ("AA", "B2")]
    assert response.headers["X-HL7-Ack-Code"] == "AA"
    assert str(answered.header[12]) == "F42" and str(answered[0].header[12]) == "B7"  # FHS-12, BHS-12
    assert str(answered.header[3]) == "GW" and str(answered.header[5]) == "GAM"        # sender and receiver swapped
    assert str(answered[0].trailer[1]) == "3" and str(answered.trailer[1]) == "1"      # BTS-1, FTS-1
    assert search(client, f"Patient?identifier={HOSPITAL}|900000082")["total"] == 1
    with database[0].connect() as conn:
        kept = conn.execute(select(raw_inputs.c.control_id, raw_inputs.c.sha256).order_by(raw_inputs.c.id)).all()
    # Each message kept as it was sent.
    assert [tuple(row) for row in kept] == [(f"B{n}", hashlib.sha256(m.encode()).hexdigest())
                                            for n, m in enumerate(messages)]
    assert post_batch(client, data)[2] == acks                                 # found sent before
    with database[0].connect() as conn:
        assert conn.execute(select(func.count()).select_from(raw_inputs)).scalar_one() == 3


def test_a_batch_that_is_not_whole_is_refused_before_any_of_its_messages_is_processed(client, database):
    """Its trailer counts 4 messages and it holds 2: each is answered AR, none is processed, and the
    batch is kept raw once, refused."""
    data = batch_of(adt("A28", "C0", pid("900000090", "COUPE")), adt("A28", "C1", pid("900000091", "COUPE")), count=4)
    response, _, acks = post_batch(client, data)
    assert acks == [("AR", "C0"), ("AR", "C1")] and response.headers["X-HL7-Ack-Code"] == "AR"
    assert "the batch says it holds 4 messages (BTS-1); it holds 2" in response.data.decode()
    assert stored_patients(database) == 0
    with database[0].connect() as conn:
        kept = conn.execute(select(raw_inputs.c.status, raw_inputs.c.sha256, raw_inputs.c.patient_identifiers)).all()
    assert [tuple(row[:2]) for row in kept] == [("refused", hashlib.sha256(data).hexdigest())]
    # It holds both patients' identities: the destruction of either record takes it.
    assert json.loads(kept[0].patient_identifiers) == [f"{HOSPITAL}|900000090", f"{HOSPITAL}|900000091"]
    [listed] = client.get("/hl7v2/messages?status=refused", headers=client.admin).get_json()["messages"]
    assert listed["reason"].endswith("the batch says it holds 4 messages (BTS-1); it holds 2")
    # Listed by its sender, control id and header (FHS), which an operator reads, as a message's MSH.
    assert (listed["sender"], listed["control_id"], listed["message_type"]) == ("GAM|CH-SAINT-AUBIN", "F42", "FHS")
    shown = client.get(f"/hl7v2/messages/{listed['id']}", headers=client.admin).get_json()["message"].split("\r")
    assert shown[0] == data.decode().split("\r")[0] and shown[-2:] == ["BTS|4", "FTS|1"]
    assert shown[4].startswith("PID|") and "COUPE" not in shown[4]   # the first message's PID, hidden
    # An operator cannot process it again as one message: its sender sends the batch again.
    assert client.post(f"/hl7v2/messages/{listed['id']}/reprocess", headers=client.admin).status_code == 409
    _, _, acks = post_batch(client, b"BHS|^~\\&|GAM|CH\rEVN||20260310\rBTS|0\r")
    assert acks == [("AR", "")]   # no message to answer: one ACK, not a batch read as accepted whole


def test_a_batch_of_more_messages_than_a_batch_may_hold_is_refused_whole(client, database, monkeypatch):
    """Over batch.MAX_MESSAGES (here 2), each message is answered AR saying so, none is processed,
    and the batch is kept raw once, refused."""
    monkeypatch.setattr("gateway.hl7v2.batch.MAX_MESSAGES", 2)
    data = batch_of(*(adt("A28", f"M{n}", pid(f"90000010{n}", "NOMBREUX")) for n in range(3)))
    response, _, acks = post_batch(client, data)
    assert acks == [("AR", "M0"), ("AR", "M1"), ("AR", "M2")] and response.headers["X-HL7-Ack-Code"] == "AR"
    assert "the batch holds 3 messages, over the 2 a batch may hold here" in response.data.decode()
    assert stored_patients(database) == 0
    with database[0].connect() as conn:
        kept = conn.execute(select(raw_inputs.c.status, raw_inputs.c.sha256)).all()
    assert [tuple(row) for row in kept] == [("refused", hashlib.sha256(data).hexdigest())]


@pytest.mark.parametrize("window", [64, 2])
def test_a_batch_goes_on_after_a_refusal_and_stops_at_a_passing_failure(client, database, monkeypatch, window):
    """A message refused for its content does not stop the ones after it; one the database could not
    take (AE, send it again) does: no message after it is processed, as a sender of one message at a
    time would not send it before. Those of its window were kept (the raw copies of a window's
    messages share a transaction) and are marked failed; those of later windows are not kept. The
    batch sent again goes on from there, each message stored once."""
    from gateway.services import ingest, patients

    upsert = patients.upsert_patient

    def unavailable_for_the_third(uow, prepared, applied):
        if prepared.ids[0].extension == "900000102":
            _database_unavailable()
        return upsert(uow, prepared, applied)

    monkeypatch.setattr(patients, "upsert_patient", unavailable_for_the_third)
    monkeypatch.setattr(ingest, "WINDOW_INPUTS", window)
    bad_birth = adt("A28", "D1", pid("900000101", "DATE").replace("|19850612|", "|19851345|"))
    data = batch_of(adt("A28", "D0", pid("900000100", "SUITE")), bad_birth, adt("A28", "D2", pid("900000102", "SUITE")),
                    adt("A28", "D3", pid("900000103", "SUITE")), adt("A28", "D4", pid("900000104", "SUITE")),
                    file=False)
    response, answered, acks = post_batch(client, data)
    assert acks == [("AA", "D0"), ("AE", "D1"), ("AE", "D2"), ("AE", "D3"), ("AE", "D4")]
    assert answered.header is None and str(answered[0].trailer[1]) == "5"   # no FHS: none in the answer
    assert response.data.decode().count("not processed: the message D2 before it in the batch could not be") == 2
    kept = [("D0", "processed"), ("D1", "refused"), ("D2", "failed"), ("D3", "failed")]
    assert _raw_statuses(database) == kept + ([("D4", "failed")] if window == 64 else [])   # windows D0 D1, D2 D3, D4
    assert search(client, f"Patient?identifier={HOSPITAL}|900000103")["total"] == 0
    monkeypatch.undo()
    assert post_batch(client, data)[2] == acks[:2] + [("AA", "D2"), ("AA", "D3"), ("AA", "D4")]
    assert _raw_statuses(database) == [("D0", "processed"), ("D1", "refused"), ("D2", "processed"),
                                       ("D3", "processed"), ("D4", "processed")]
    assert search(client, f"Patient?identifier={HOSPITAL}|900000104")["total"] == 1


def _raw_statuses(database, prefix: str = "") -> list[tuple[str, str]]:
    """The raw inputs whose control ids start with `prefix`: those ids (without it) and statuses."""
    with database[0].connect() as conn:
        return [(row.control_id[len(prefix):], row.status) for row in conn.execute(
            select(raw_inputs.c.control_id, raw_inputs.c.status).where(raw_inputs.c.control_id.startswith(prefix))
            .order_by(raw_inputs.c.id))]


def test_the_messages_of_a_batch_share_the_group_commit_s_transactions(client, database, write_transactions):
    """Each message of a batch was kept, then processed, each in a transaction (and a flush) of its
    own: 40 for 20 messages. Its messages now run side by side: their raw copies share one, their
    results another."""
    transactions = write_transactions
    data = batch_of(*(adt("A28", f"G{n}", pid(f"9000003{n:02d}", "GROUPE")) for n in range(20)))
    assert post_batch(client, data)[2] == [("AA", f"G{n}") for n in range(20)]
    assert transactions == [20, 20]
    assert _raw_statuses(database) == [(f"G{n}", "processed") for n in range(20)]
    transactions.clear()
    assert post_batch(client, data)[2] == [("AA", f"G{n}") for n in range(20)]   # found sent before
    assert transactions == [20]


def test_a_batch_s_messages_are_applied_in_their_order_around_a_merge(client, database):
    """A document, the merge of its patient into another, and a message naming the merged patient,
    in one batch: the merge runs in a transaction of its own, between the others, which see what the
    messages before them did."""
    lefevre = PATIENTS["lefevre"]
    update = adt("A31", "ORD2", f"PID|1||{lefevre['ipp']}^^^CH-SAINT-AUBIN&1.2.250.1.213.1.1.9.1001&ISO^PI"
                                "||LEFEVRE^CLAIRE^^^^^L||19920823|F")
    data = batch_of(sample("mdm-1-t02-cr-imagerie-irm-lefevre.hl7").decode().replace("\n", "\r"),
                    merge_lefevre_into_dubois("ORD1"), update)
    assert post_batch(client, data)[2] == [("AA", "MDM0001"), ("AA", "ORD1"), ("AA", "ORD2")]
    survivor = search(client, f"Patient?identifier={HOSPITAL}|900000090")["entry"][0]["resource"]
    docs = search(client, f"DocumentReference?patient.identifier={HOSPITAL}|{lefevre['ipp']}&status=current")
    assert [d["resource"]["subject"]["reference"] for d in docs["entry"]] == [f"Patient/{survivor['id']}"]
    # The record the document made was there to be merged: had the merge run first, there was none.
    with database[0].connect() as conn:
        patients = [json.loads(body) for body in conn.scalars(
            select(resources.c.body).where(resources.c.res_type == "Patient", resources.c.deleted.is_(False)))]
    merged = [p for p in patients if p.get("link") and p["link"][0]["type"] == "replaced-by"]
    assert [(p["active"], p["link"][0]["other"]["reference"]) for p in merged] == [(False, f"Patient/{survivor['id']}")]
    assert _raw_statuses(database) == [("MDM0001", "processed"), ("ORD1", "processed"), ("ORD2", "processed")]


EXAMPLES_SENT = [0]   # a number of each example's own, for its identifiers


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=st.lists(st.tuples(st.sampled_from(["identity", "bad birth", "again", "unsupported", "merge"]),
                               st.integers(0, 2)), min_size=1, max_size=12),
       window=st.integers(1, 5))
def test_a_batch_in_windows_answers_and_stores_what_its_messages_sent_one_by_one_do(client, database, plan, window):
    """Identities, their updates, refusals, a message sent twice, an unsupported type and merges (each
    alone in its transaction), in any order: sent as one batch, its messages run side by side in
    windows of any size, they are answered as the same messages sent one by one, and leave the same
    records and raw copies."""
    from gateway.services import ingest

    EXAMPLES_SENT[0] += 1
    sent = EXAMPLES_SENT[0]

    def messages(namespace: str) -> list[str]:
        ipp = [f"{namespace}{sent:05d}{patient}" for patient in range(3)]
        built: list[str] = []
        for position, (kind, patient) in enumerate(plan):
            control = f"{namespace}{sent}-{position}"
            if kind == "again" and built:
                built.append(built[-1])
                continue
            message = adt("A28", control, pid(ipp[patient], f"NOM{position}"))
            if kind == "bad birth":
                message = message.replace("|19850612|", "|19851345|")
            elif kind == "unsupported":
                message = message.replace("ADT^A28^ADT_A01", "SIU^S12^SIU_S12")
            elif kind == "merge":
                message = adt("A40", control, pid(ipp[patient], f"NOM{position}"),
                              f"MRG|{ipp[(patient + 1) % 3]}^^^CH-SAINT-AUBIN&1.2.250.1.213.1.1.9.1001&ISO^PI")
            built.append(message)
        return built

    one_by_one = [post(client, message)[0] for message in messages("7")]
    windows = ingest.WINDOW_INPUTS
    ingest.WINDOW_INPUTS = window
    try:
        in_a_batch = [code for code, _ in post_batch(client, batch_of(*messages("8")))[2]]
    finally:
        ingest.WINDOW_INPUTS = windows
    assert in_a_batch == one_by_one
    assert _records(database, f"8{sent:05d}") == _records(database, f"7{sent:05d}")
    assert _raw_statuses(database, f"8{sent}-") == _raw_statuses(database, f"7{sent}-")


def _records(database, prefix: str) -> list:
    """The patients whose IPPs start with `prefix`: those IPPs (without it), their names, whether
    active, whether merged into another."""
    with database[0].connect() as conn:
        patients = [json.loads(body) for body in conn.scalars(
            select(resources.c.body).where(resources.c.res_type == "Patient", resources.c.deleted.is_(False)))]
    return sorted((sorted(i["value"][len(prefix):] for i in p.get("identifier", []) if i["value"].startswith(prefix)),
                   [name.get("family") for name in p.get("name", [])], p.get("active"), bool(p.get("link")))
                  for p in patients if any(i["value"].startswith(prefix) for i in p.get("identifier", [])))


def test_a_refused_message_the_database_cannot_keep_is_answered_and_logged_as_a_warning(client, monkeypatch, caplog):
    """It was logged as an error with its traceback, as an error of the gateway's would be; in a
    batch's window, every refused message after one the database failed is not kept so."""
    import logging

    monkeypatch.setattr(repository.UnitOfWork, "store_raw", _database_unavailable)
    unsupported = adt("A28", "NK1", pid("900000120", "GARDE")).replace("ADT^A28^ADT_A01", "SIU^S12^SIU_S12")
    with caplog.at_level(logging.WARNING, logger="gateway.services.feeds"):
        assert post(client, unsupported)[0] == "AR"
    assert [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "gateway.services.feeds"] \
        == [("WARNING", "database unavailable: a refused message not kept")]
