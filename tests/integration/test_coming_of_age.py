"""A legal representative acts for a minor (Code civil art. 371-1): on the child's eighteenth
birthday, the parent's access to their record ends, through the API, the patient space and the
mails, and the refusal is in the now adult patient's trail. The gateway kept it open for good."""
import json
import re
from datetime import date, timedelta
from html import unescape

from conftest import sample
from gateway.access import AccessContext
from gateway.mapping import codes
from gateway.services import notifications
from gateway.space import accounts
from gateway.space.senders import read_outbox
from gateway.storage.repository import NotFound, Repository
from test_access_rules import TODAY, gateway_day, years_before   # gateway_day: autouse here too
from test_death_notified import identity_update
from test_patient_space import PASSWORD, csrf, sign_in

LEA, HUGO = "212057501802305", "116037505612342"
XML = {"Content-Type": "application/xml"}
FHIR = {"Content-Type": "application/fhir+json"}
OF_AGE_TODAY = years_before(TODAY, 18)
OF_AGE_TOMORROW = OF_AGE_TODAY + timedelta(days=1)


def child_document(ins: str, ipp: str, given: str, born: date, n: int) -> bytes:
    """Léa MOREAU's ultrasound report, made the n-th document of a child born on `born`."""
    cda = sample("cr-imagerie-echographie-moreau.xml").decode()
    cda = cda.replace('extension="212057501802305"', f'extension="{ins}"').replace(">LEA<", f">{given}<")
    cda = cda.replace('extension="900000004"', f'extension="{ipp}"')
    cda = cda.replace('<birthTime value="20120514"/>', f'<birthTime value="{born.strftime("%Y%m%d")}"/>')
    cda = cda.replace('<id root="1.2.250.1.213.1.1.9.2.6.1"/>', f'<id root="1.2.250.1.213.1.1.9.2.6.{n}"/>')
    return cda.replace('<setId root="1.2.250.1.213.1.1.9.2.6"/>', f'<setId root="1.2.250.1.213.1.1.9.2.{60 + n}"/>')\
        .encode()


def feed_children(client, bearer) -> dict[str, str]:
    """Léa, of age tomorrow, and Hugo, of age today, each with a document: {INS: its id}."""
    system = {**XML, **bearer("system", sub="hospital")}
    children = ((LEA, "900000004", "LEA", OF_AGE_TOMORROW), (HUGO, "900000006", "HUGO", OF_AGE_TODAY))
    made = {ins: client.post("/cda", data=child_document(ins, ipp, given, born, n), headers=system)
            for n, (ins, ipp, given, born) in enumerate(children, 1)}
    assert all(answer.status_code == 201 for answer in made.values()), {k: v.json for k, v in made.items()}
    return {ins: answer.json["id"] for ins, answer in made.items()}


def test_a_representative_reads_and_decides_for_a_minor_only(client, bearer, database):
    ids = feed_children(client, bearer)
    for_lea = bearer("representative", sub="representative:sophie", patient=LEA, name="Sophie MOREAU")
    for_hugo = bearer("representative", sub="representative:sophie", patient=HUGO, name="Sophie MOREAU")

    found = client.get("/fhir/DocumentReference?status=current", headers=for_lea).json
    assert [e["resource"]["id"] for e in found["entry"]] == [ids[LEA]]

    consent = {"resourceType": "Consent", "status": "active", "scope": {"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"identifier": {"system": "urn:oid:1.2.250.1.213.1.4.10", "value": HUGO}},
        "provision": {"type": "deny", "actor": [{"reference": {"identifier": {
            "system": "urn:oid:1.2.250.1.71.4.2.1", "value": "899900000038"}}}]}}
    masking = [{"op": "replace", "path": "/securityLabel/0",
                "value": {"coding": [{"system": codes.VISIBILITY_SYSTEM, "code": "MASQUE_PS"}]}}]
    refused = [client.get("/fhir/DocumentReference?status=current", headers=for_hugo),
               client.get(f"/fhir/DocumentReference/{ids[HUGO]}", headers=for_hugo),
               client.get("/fhir/Patient", headers=for_hugo),
               client.post("/fhir/Consent", data=json.dumps(consent), headers={**for_hugo, **FHIR}),
               client.patch(f"/fhir/DocumentReference/{ids[HUGO]}", data=json.dumps(masking),
                            headers={**for_hugo, "Content-Type": "application/json-patch+json"})]
    for answer in refused:
        assert answer.status_code == 403, answer.json
        issue = answer.json["issue"][0]
        assert issue["code"] == "forbidden" and issue["diagnostics"] == (
            f"the patient came of age on {TODAY.isoformat()}: a legal representative no longer acts for them "
            "(Code civil art. 371-1)")

    # Hugo reads his record as it was, and each refusal in his trail.
    hugo = bearer("patient", sub=HUGO, patient=HUGO)
    assert client.get(f"/fhir/DocumentReference/{ids[HUGO]}", headers=hugo).status_code == 200
    assert "MASQUE_PS" not in json.dumps(client.get(f"/fhir/DocumentReference/{ids[HUGO]}", headers=hugo).json)
    trail = client.get("/fhir/AuditEvent?_count=100", headers=hugo).json
    refusals = [e["resource"] for e in trail["entry"] if e["resource"]["outcome"] == "4"]
    assert len(refusals) == len(refused)
    assert all("came of age" in event["outcomeDesc"] and event["agent"][0]["who"]["display"] == "Sophie MOREAU"
               for event in refusals)

    # The rules themselves show her nothing of his record, whatever asks them.
    repository = Repository(database[0], AccessContext(role="representative", subject="representative:sophie",
                                                       patient_ins=HUGO), "http://gateway.test")
    assert repository.own_patient_id() is None
    try:
        repository.read("DocumentReference", ids[HUGO])
        raise AssertionError("a representative of an adult read their document")
    except NotFound:
        pass


def test_the_space_tells_the_parent_and_mails_them_no_more(app, settings, client, bearer, database):
    engine = database[0]
    accounts.create_account(engine, "sophie", PASSWORD, "representative", [LEA, HUGO], "Sophie MOREAU",
                            "sophie@example.test")
    accounts.create_account(engine, "hugo", PASSWORD, "patient", [HUGO], "Hugo MOREAU", "hugo@example.test")
    accounts.create_account(engine, "hugo-parent", PASSWORD, "representative", [HUGO], "Marc MOREAU",
                            "marc@example.test")
    ids = feed_children(client, bearer)
    # An emergency access to each record.
    for ins in (LEA, HUGO):
        emergency = bearer("doctor", sub="899900000038", purpose="emergency", patient=ins)
        assert client.get("/fhir/DocumentReference?status=current", headers=emergency).status_code == 200
    while notifications.send_pending(settings, engine):
        pass
    subjects = {}
    for mail in read_outbox(settings):
        if mail.get("code") is None:
            subjects.setdefault(mail["to"], []).append(mail["subject"])
    assert sorted(subjects["sophie@example.test"]) == [   # Léa's: Hugo's record tells her nothing more
        "Accès en urgence à votre dossier médical partagé", "Un nouveau document dans votre dossier médical partagé"]
    assert sorted(subjects["hugo@example.test"]) == sorted(subjects["sophie@example.test"])
    assert "marc@example.test" not in subjects

    browser = sign_in(app, settings, "sophie")
    page = browser.get("/dossiers").text
    assert "Dossier de Lea MOREAU" in page
    lines = re.findall(r'<p class="choice">(.*?)</p>', page, re.S)
    hugo_line = next(line for line in lines if HUGO in line)
    assert "disabled" in hugo_line and f"majeur depuis le {TODAY.strftime('%d/%m/%Y')}" in hugo_line
    opened = browser.post("/dossiers", data={"csrf_token": csrf(page), "dossier": HUGO}, follow_redirects=True)
    assert "l'autorité parentale a pris fin" in unescape(opened.text) and "Vous consultez le dossier" not in opened.text
    opened = browser.post("/dossiers", data={"csrf_token": csrf(page), "dossier": LEA}, follow_redirects=True)
    assert "Vous consultez le dossier de Lea MOREAU" in opened.text

    # A parent of Hugo alone: every page of his record says why it is closed to them.
    parent = sign_in(app, settings, "hugo-parent")
    for path in ("/documents", "/historique", "/acces", "/dossier"):
        answer = parent.get(path)
        assert answer.status_code == 403 and "l'autorité parentale a pris fin" in unescape(answer.text), path
        assert "HUGO" not in answer.text.upper() and "Ouvrir un autre dossier" not in answer.text, path
    hugo = bearer("patient", sub=HUGO, patient=HUGO)
    trail = client.get("/fhir/AuditEvent?_count=100", headers=hugo).json
    assert sum(1 for e in trail["entry"] if e["resource"]["outcome"] == "4"
               and e["resource"]["agent"][0]["who"]["display"] == "Marc MOREAU") == 4

    # Hugo's page of his document says why his parents no longer see it; his history, their attempts.
    own = sign_in(app, settings, "hugo")
    page = unescape(own.get(f"/documents/{ids[HUGO]}").text)
    assert re.search(r"Vos représentants légaux.*vous êtes majeur·e : ils n'accèdent plus à votre dossier", page, re.S)
    history = unescape(own.get("/historique?vue=refuses").text)
    assert len(re.findall(r"Marc MOREAU.*?a été refusé : le dossier n'est plus ouvert à vos représentants légaux",
                          history, re.S)) == 4


def test_a_protected_adult_s_guardian_acts_for_them_whatever_their_age(app, settings, client, bearer, database):
    """A guardian (tutelle) a judge named for an adult is their legal representative too, and their
    authority does not end at a birthday: a representative token with the claim guardianship, an
    account whose record the operator stated as a guardianship. The patient's death ends it."""
    engine = database[0]
    ids = feed_children(client, bearer)
    accounts.create_account(engine, "tutor", PASSWORD, "representative", [], "Marc MOREAU", "marc@example.test",
                            guardianships=[HUGO])
    guardian = bearer("representative", sub="representative:tutor", patient=HUGO, guardianship=True)
    found = client.get("/fhir/DocumentReference?status=current", headers=guardian).json
    assert [e["resource"]["id"] for e in found["entry"]] == [ids[HUGO]]
    for wrong in ({"role": "patient", "patient": HUGO, "guardianship": True},
                  {"role": "representative", "patient": HUGO, "guardianship": "yes"}):
        assert client.get("/fhir/DocumentReference", headers=bearer(**wrong)).status_code == 401

    accounts.create_account(engine, "hugo", PASSWORD, "patient", [HUGO], "Hugo MOREAU", "hugo@example.test")
    own_page = unescape(sign_in(app, settings, "hugo").get(f"/documents/{ids[HUGO]}").text)
    assert re.search(r"Votre tuteur ou tutrice.*représentants légaux", own_page, re.S)
    assert "ils n'accèdent plus" not in own_page
    page = sign_in(app, settings, "tutor").get("/documents")
    assert page.status_code == 200
    assert re.search(r"Vous consultez le dossier de <strong>Hugo MOREAU</strong>, en tant que tuteur ou tutrice",
                     page.text)
    emergency = bearer("doctor", sub="899900000038", purpose="emergency", patient=HUGO)
    assert client.get("/fhir/DocumentReference?status=current", headers=emergency).status_code == 200
    while notifications.send_pending(settings, engine):
        pass
    assert "Accès en urgence à votre dossier médical partagé" in [
        mail["subject"] for mail in read_outbox(settings) if mail["to"] == "marc@example.test"]

    # His death ends it.
    hl7 = identity_update("adt-a28-moreau-hugo.hl7", "ADT0904",
                          {7: OF_AGE_TODAY.strftime("%Y%m%d"), 29: "20261201", 30: "Y"})
    answer = client.post("/hl7v2", data=hl7, headers={**bearer("system", sub="GAM CH-SAINT-AUBIN"),
                                                      "Content-Type": "x-application/hl7-v2+er7"})
    assert b"MSA|AA" in answer.data, answer.data
    refused = client.get("/fhir/DocumentReference?status=current", headers=guardian)
    assert refused.status_code == 403 and "deceased" in refused.json["issue"][0]["diagnostics"]
