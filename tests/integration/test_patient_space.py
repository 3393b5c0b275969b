"""The patient space over HTTP (Flask's test client), on both backends: sign-in and its defences,
what each page reads and leaves in the trail, and the record's closure and destruction."""
import base64
import json
import re
import zipfile
from datetime import datetime, timedelta, timezone
from io import BytesIO

import pytest
from sqlalchemy import func, select

from conftest import GP, attend_all, sample
from gateway.access.audit import verify_chain
from gateway.access.rules import CONSENT_KIND_SYSTEM
from gateway.mapping import codes
from gateway.services import retention
from gateway.services.export import verify_export
from gateway.space import accounts
from gateway.space.senders import read_outbox
from gateway.storage import repository
from gateway.storage.schema import raw_inputs, resources

XML = {"Content-Type": "application/xml"}
MARTIN, MOREAU = "185067511204554", "212057501802305"
PASSWORD = "a long enough password"


def fed_with_accounts(client, bearer, engine) -> dict:
    """Paul Martin's two documents and Léa Moreau's one, fed by a hospital system, and the accounts
    of Paul and of Sophie MOREAU, Léa's legal representative: {sample's name: DocumentReference id}."""
    system = bearer("system", sub="hospital")
    ids = {name: client.post("/cda", data=sample(name), headers={**XML, **system}).json["id"]
           for name in ("ldl-ses-martin.xml", "cr-biologie-martin.xml", "cr-imagerie-echographie-moreau.xml")}
    accounts.create_account(engine, "paul", PASSWORD, "patient", [MARTIN], "Paul MARTIN", "paul@example.test")
    accounts.create_account(engine, "sophie", PASSWORD, "representative", [MOREAU], "Sophie MOREAU",
                            "sophie@example.test")
    return ids


@pytest.fixture
def record(client, bearer, database):
    return fed_with_accounts(client, bearer, database[0])


def csrf(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def sign_in(app, settings, login: str = "paul", password: str = PASSWORD):
    browser = app.test_client()
    page = browser.get("/connexion").text
    answer = browser.post("/connexion", data={"csrf_token": csrf(page), "identifiant": login, "mot_de_passe": password})
    assert answer.status_code == 302, answer.text
    code = read_outbox(settings)[-1]["code"]
    page = browser.get("/connexion/code").text
    answer = browser.post("/connexion/code", data={"csrf_token": csrf(page), "code": code})
    assert answer.status_code == 302 and answer.location.endswith("/documents"), answer.text
    return browser


def post(browser, path: str, data: dict, page: str = "/documents"):
    return browser.post(path, data={"csrf_token": csrf(browser.get(page).text), **data})


def test_an_unavailable_database_shows_a_page_asking_to_try_again(app, settings, record, monkeypatch):
    from sqlalchemy.exc import OperationalError

    from gateway.storage.repository import Repository

    browser = sign_in(app, settings)

    def unreachable(*args, **kwargs):
        raise OperationalError("SELECT", {}, Exception("connection refused"))

    monkeypatch.setattr(Repository, "search_all", unreachable)
    answer = browser.get("/documents")
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "5"
    assert "Service momentanément indisponible" in answer.text and "Réessayez dans un moment" in answer.text


def test_signed_out_pages_lead_to_sign_in_and_the_api_is_untouched(app, record):
    browser = app.test_client()
    for path in ("/", "/documents", "/historique", "/acces", "/espace-personnel", "/dossier", "/dossier/copie.zip"):
        answer = browser.get(path)
        assert answer.status_code == 302 and "/connexion" in answer.location, path
    assert browser.get("/fhir/DocumentReference").status_code == 401   # a session is no bearer token


def test_a_patient_changes_their_password_and_their_other_sessions_end(app, settings, record):
    """There was no way to: an operator's `gateway account create` was the only one."""
    here, elsewhere = sign_in(app, settings), sign_in(app, settings)
    page = here.get("/compte/mot-de-passe").text
    assert "Changer mon mot de passe" in page and 'autocomplete="new-password"' in page

    def change(current, new, again=None):
        return here.post("/compte/mot-de-passe", data={"csrf_token": csrf(here.get("/compte/mot-de-passe").text),
                                                      "actuel": current, "nouveau": new,
                                                      "confirmation": new if again is None else again})

    refused = change("not the password", "a new long password")
    assert refused.status_code == 400 and "Mot de passe actuel incorrect" in refused.text
    refused = change(PASSWORD, "a new long password", "another long password")
    assert refused.status_code == 400 and "Les deux saisies du nouveau mot de passe diffèrent." in refused.text
    refused = change(PASSWORD, "too short")
    assert refused.status_code == 400 and "au moins 12 caractères" in refused.text
    changed = change(PASSWORD, "a new long password")
    assert changed.status_code == 302
    assert "Votre mot de passe est changé" in here.get(changed.location, follow_redirects=True).text
    assert here.get("/documents").status_code == 200                      # this session goes on
    assert "/connexion" in elsewhere.get("/documents").location           # the other one ended
    old = app.test_client()
    answer = old.post("/connexion", data={"csrf_token": csrf(old.get("/connexion").text), "identifiant": "paul",
                                          "mot_de_passe": PASSWORD})
    assert answer.status_code == 401
    sign_in(app, settings, password="a new long password")
    assert here.post("/compte/mot-de-passe", data={"actuel": PASSWORD, "nouveau": "x" * 12,
                                                  "confirmation": "x" * 12}).status_code == 400   # no CSRF token
    # A session left open is no way to guess the password: the guesses count as a sign-in's do.
    for _ in range(accounts.MAX_FAILURES):
        assert change("a guess", "yet another long password").status_code == 400
    refused = change("a new long password", "yet another long password")
    assert refused.status_code == 400 and "Mot de passe actuel incorrect" in refused.text   # the right one, locked


def test_a_representative_changes_the_password_before_choosing_a_child_s_record(app, settings, database, record):
    """The page is open before a representative of several children has chosen whose record to open:
    the password is the account's, not a record's."""
    accounts.create_account(database[0], "parent", PASSWORD, "representative", [MOREAU, "116037505612342"],
                            "Sophie MOREAU", "parent@example.test")
    browser = app.test_client()
    browser.post("/connexion", data={"csrf_token": csrf(browser.get("/connexion").text), "identifiant": "parent",
                                     "mot_de_passe": PASSWORD})
    chosen = browser.post("/connexion/code", data={"csrf_token": csrf(browser.get("/connexion/code").text),
                                                   "code": read_outbox(settings)[-1]["code"]})
    assert chosen.location.endswith("/documents") and "/dossiers" in browser.get("/documents").location
    page = browser.get("/compte/mot-de-passe")
    assert page.status_code == 200 and "Changer mon mot de passe" in page.text
    changed = browser.post("/compte/mot-de-passe", data={"csrf_token": csrf(page.text), "actuel": PASSWORD,
                                                         "nouveau": "a parent's new password",
                                                         "confirmation": "a parent's new password"})
    assert changed.status_code == 302


def test_a_code_the_mail_server_cannot_take_is_told_to_the_patient(settings, database, record, monkeypatch):
    """The mail server down: a 500 page, "Erreur du service". Now the sign-in page says the code
    could not be sent, 503, and to try again."""
    from dataclasses import replace

    from conftest import free_port
    from gateway.app import create_app

    monkeypatch.setenv("GATEWAY_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("GATEWAY_SMTP_PORT", str(free_port()))   # nothing listens there
    browser = create_app(replace(settings, message_sender="smtp"), database[0]).test_client()
    answer = browser.post("/connexion", data={"csrf_token": csrf(browser.get("/connexion").text),
                                              "identifiant": "paul", "mot_de_passe": PASSWORD})
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "60"
    assert "Le code de connexion n&#39;a pas pu vous être envoyé. Réessayez dans un moment." in answer.text


def test_a_code_whose_address_the_mail_server_refuses_for_good_says_so(settings, database, record, monkeypatch):
    """"Try again in a moment" would not help: the address of the account is refused."""
    from dataclasses import replace

    from aiosmtpd.controller import Controller

    from conftest import free_port
    from gateway.app import create_app

    class NoSuchMailbox:
        async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
            return "550 5.1.1 mailbox unavailable"

    smtp = Controller(NoSuchMailbox(), hostname="127.0.0.1", port=free_port())
    smtp.start()
    try:
        for name, value in (("GATEWAY_SMTP_HOST", "127.0.0.1"), ("GATEWAY_SMTP_PORT", str(smtp.port)),
                            ("GATEWAY_SMTP_STARTTLS", "0")):
            monkeypatch.setenv(name, value)
        browser = create_app(replace(settings, message_sender="smtp"), database[0]).test_client()
        answer = browser.post("/connexion", data={"csrf_token": csrf(browser.get("/connexion").text),
                                                  "identifiant": "paul", "mot_de_passe": PASSWORD})
    finally:
        smtp.stop()
    assert answer.status_code == 503 and "Retry-After" not in answer.headers
    assert "la messagerie refuse l&#39;adresse de votre compte" in answer.text


def test_five_failures_lock_the_account_and_unknown_logins_answer_alike(app, settings, record):
    browser = app.test_client()
    token = csrf(browser.get("/connexion").text)

    def answer(login, password):
        response = browser.post("/connexion", data={"csrf_token": token, "identifiant": login, "mot_de_passe": password})
        return response.status_code, re.sub(r'name="csrf_token" value="[^"]*"', "", response.text)

    unknown, wrong = answer("nobody", "x"), answer("paul", "x")
    for _ in range(4):
        answer("paul", "x")
    locked = answer("paul", PASSWORD)
    # Unknown login, wrong password, locked account: the same page, word for word.
    assert unknown[0] == wrong[0] == locked[0] == 401
    assert unknown[1].replace("nobody", "paul") == wrong[1] == locked[1]
    assert read_outbox(settings) == []   # no code was sent


def test_parallel_guesses_are_counted_before_any_is_checked(app, settings, record):
    """12 guesses at once: no more than the allowed five are checked, and the right password is then
    refused too (the count is atomic in the database, not a read then a write)."""
    from concurrent.futures import ThreadPoolExecutor

    engine = app.config["ENGINE"]

    def guess(n):
        try:
            accounts.check_password(engine, "paul", f"wrong-{n}", "10.0.0.9")
            return "accepted"
        except accounts.SignInRefused:
            return "refused"

    with ThreadPoolExecutor(12) as pool:
        assert set(pool.map(guess, range(12))) == {"refused"}
    with pytest.raises(accounts.SignInRefused):
        accounts.check_password(engine, "paul", PASSWORD, "10.0.0.10")
    # Another address is throttled on its own count: an unknown login from it is refused alike.
    with pytest.raises(accounts.SignInRefused):
        accounts.check_password(engine, "nobody", "x", "10.0.0.10")


def test_a_code_is_good_once_and_wrong_codes_count_towards_the_lock(app, settings, record):
    browser = app.test_client()
    page = browser.get("/connexion").text
    browser.post("/connexion", data={"csrf_token": csrf(page), "identifiant": "paul", "mot_de_passe": PASSWORD})
    code = read_outbox(settings)[-1]["code"]
    wrong = browser.post("/connexion/code", data={"csrf_token": csrf(page), "code": f"{(int(code) + 1) % 1000000:06d}"})
    assert wrong.status_code == 401 and "Code incorrect" in wrong.text
    with browser.session_transaction() as cookie:
        challenge = cookie["challenge"]
    assert browser.post("/connexion/code", data={"csrf_token": csrf(page), "code": code}).status_code == 302
    with pytest.raises(accounts.SignInRefused):
        accounts.check_code(app.config["ENGINE"], challenge, code)


def test_forms_need_their_csrf_token(app, settings, record):
    browser = sign_in(app, settings)
    refused = browser.post("/dossier/fermer", data={"confirmation": "oui"})
    assert refused.status_code == 400 and "Formulaire expiré" in refused.text
    assert "est fermé" not in browser.get("/dossier").text


def test_a_body_is_read_only_once_its_sender_may_post_there(app, settings, record):
    """A visitor signed in nowhere who posts to a page is sent to sign in, the body unread: the form
    was read, and a compressed body decoded, before (1 MB of gzip posted to /dossier/verifier had
    1 GB written to a temporary file). A body its coding does not decode is said on a page: it was
    the 500 page."""
    not_gzip = {"Content-Encoding": "gzip", "Content-Type": "multipart/form-data; boundary=x"}
    visitor = app.test_client().post("/dossier/verifier", data=b"not gzip data", headers=not_gzip)
    assert visitor.status_code == 302 and visitor.headers["Location"].startswith("/connexion")
    patient = sign_in(app, settings).post("/dossier/verifier", data=b"not gzip data", headers=not_gzip)
    assert patient.status_code == 400 and "Demande incorrecte" in patient.text
    other_coding = app.test_client().post("/connexion", data=b"identifiant=paul",
                                          headers={"Content-Encoding": "br",
                                                   "Content-Type": "application/x-www-form-urlencoded"})
    assert other_coding.status_code == 415 and "Envoi non pris en charge" in other_coding.text
    assert other_coding.headers["Accept-Encoding"] == "gzip, deflate"


def test_sign_out_ends_the_session_for_good(app, settings, record):
    browser = sign_in(app, settings)
    with browser.session_transaction() as cookie:
        stolen = dict(cookie)
    post(browser, "/deconnexion", {})
    replay = app.test_client()
    with replay.session_transaction() as cookie:
        cookie.update(stolen)
    answer = replay.get("/documents")
    assert answer.status_code == 302 and "/connexion" in answer.location


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example", "/%09/evil.example", "/\\evil.example",
                                    "/%2509/evil.example", "/a%0d%0aSet-Cookie:%20x=1", "/%5Cevil.example"])
def test_after_sign_in_only_a_local_page_is_a_destination(app, settings, record, target):
    """Open redirects: whatever `next` holds, the browser lands on a page of this site."""
    browser = app.test_client()
    browser.get(f"/connexion?next={target}")
    page = browser.get("/connexion").text
    browser.post("/connexion", data={"csrf_token": csrf(page), "identifiant": "paul", "mot_de_passe": PASSWORD})
    answer = browser.post("/connexion/code", data={"csrf_token": csrf(page), "code": read_outbox(settings)[-1]["code"]})
    assert answer.status_code == 302 and answer.location.endswith("/documents"), answer.location


def test_pages_forbid_scripts_and_are_not_cached(app, settings, record):
    browser = sign_in(app, settings)
    page = browser.get(f"/documents/{record['ldl-ses-martin.xml']}")
    assert page.status_code == 200
    assert "script-src 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["Cache-Control"] == "no-store" and page.headers["X-Content-Type-Options"] == "nosniff"


def test_each_page_reads_through_the_rules_and_leaves_its_trail(app, settings, client, bearer, record):
    browser = sign_in(app, settings)
    listing = browser.get("/documents").text
    assert "Lettre de liaison à la sortie" in listing and "Biologie" in listing
    assert "Échographie abdominale" not in listing          # another patient's document
    assert browser.get(f"/documents/{record['cr-imagerie-echographie-moreau.xml']}").status_code == 404
    trail = client.get("/fhir/AuditEvent", query_string={"_count": 100},
                       headers=bearer("patient", patient=MARTIN)).json
    martin = f"Patient/{trail['entry'][0]['resource']['entity'][0]['what']['reference'].split('/')[1]}"
    own = [e["resource"] for e in trail["entry"] if e["resource"]["agent"][0]["who"].get("reference") == martin]
    assert {e["subtype"][0]["code"] for e in own} >= {"search-type"}
    # He is named by his record: neither his INS nor his name is written with each of his accesses.
    assert not any({"altId", "name"} & e["agent"][0].keys() for e in own)
    found = client.get("/fhir/AuditEvent", query_string={"agent": martin, "_count": 100},
                       headers=bearer("patient", patient=MARTIN)).json
    assert all(e["resource"]["agent"][0]["who"]["reference"] == martin for e in found["entry"])
    assert {e["resource"]["id"] for e in found["entry"]} >= {e["id"] for e in own}   # and the search of the trail


def own_searches(engine) -> list[str]:
    """The searches the patient's own pages recorded in the trail, oldest first."""
    with engine.connect() as conn:
        events = [json.loads(body) for body in conn.execute(select(resources.c.body).where(
            resources.c.res_type == "AuditEvent").order_by(resources.c.last_updated)).scalars()]
    return [base64.b64decode(entity["query"]).decode() for event in events
            if event["agent"][0]["role"][0]["coding"][0]["code"] == "patient"
            for entity in event["entity"] if "query" in entity]


def test_a_page_of_a_large_record_is_one_search_in_its_trail(app, settings, database, record, monkeypatch):
    """The documents page reads every document, SEARCH_ALL_PAGE at a time: each of those reads was
    a search in the patient's own history, 30 of them a visit for a record of 5,902 documents."""
    monkeypatch.setattr(repository, "SEARCH_ALL_PAGE", 1)
    browser = sign_in(app, settings)
    before = len(own_searches(database[0]))
    listing = browser.get("/documents").text
    assert "Lettre de liaison à la sortie" in listing and "Compte rendu d&#39;examens biologiques" in listing
    assert [q.split("?")[0] for q in own_searches(database[0])[before:]] == ["DocumentReference", "List"]   # and folders


def test_the_history_names_the_documents_of_its_page_without_reading_the_record(app, settings, client, bearer,
                                                                               database, record):
    """Each row names the document it is about, by its title, and the organisation that sent it;
    the page read every document of the record for those names, 2.3 s for a page of 30 rows in a
    record of 5,902 documents: now only the documents its rows name, by the search's _include."""
    attend_all(database[0])
    doctor = bearer("doctor", sub=GP, name="Dr Hélène TEST")
    letter = client.get(f"/fhir/DocumentReference/{record['ldl-ses-martin.xml']}", headers=doctor).json
    assert client.get(letter["content"][0]["attachment"]["url"], headers=doctor).status_code == 200
    browser = sign_in(app, settings)
    before = len(own_searches(database[0]))
    page = browser.get("/historique").text
    rows = [re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", row)) for row in re.findall(r"<tr[^>]*>(.*?)</tr>", page, re.S)]
    title = "Lettre de liaison à la sortie - service de médecine interne"
    assert any("Dr Hélène TEST" in r and f"a consulté le contenu du document « {title} »" in r for r in rows)
    assert any("Dr Hélène TEST" in r and f"a consulté le document « {title} »" in r for r in rows)
    assert any("Laboratoire de biologie médicale Pasteur-Vauban" in r and "a ajouté le contenu du document « Compte "
               "rendu d&#39;examens biologiques »" in r for r in rows)
    assert [q.split("?")[0] for q in own_searches(database[0])[before:]] == ["AuditEvent"]
    # A content whose document the page's events do not name is named all the same.
    following = browser.get("/historique", query_string={"vue": "professionnels"})
    assert f"a consulté le contenu du document « {title} »" in following.text


def test_masking_in_the_space_is_what_professionals_then_see(app, settings, client, bearer, record):
    browser = sign_in(app, settings)
    internist = bearer("doctor", sub="899900000012")
    post(browser, "/acces/professionnel", {"professionnel": "99900000012", "decision": "autoriser"}, "/acces")
    lab = record["cr-biologie-martin.xml"]
    seen = {e["resource"]["id"] for e in client.get("/fhir/DocumentReference", query_string={
        "patient.identifier": f"urn:oid:1.2.250.1.213.1.4.10|{MARTIN}"}, headers=internist).json.get("entry", [])}
    assert lab in seen
    # Hiding a document from someone asks first, and changes nothing until it is confirmed.
    asked = post(browser, f"/documents/{lab}/masquage", {"label": "MASQUE_PS", "action": "masquer"}, f"/documents/{lab}")
    assert asked.status_code == 200 and "Confirmer" in asked.text and 'name="confirmation" value="oui"' in asked.text
    assert "Vous seul·e, ou votre représentant légal, pourrez le démasquer." in asked.text
    assert client.get(f"/fhir/DocumentReference/{lab}", headers=internist).status_code == 200
    answer = post(browser, f"/documents/{lab}/masquage", {"label": "MASQUE_PS", "action": "masquer",
                                                          "confirmation": "oui"}, f"/documents/{lab}")
    assert answer.status_code == 302
    assert client.get(f"/fhir/DocumentReference/{lab}", headers=internist).status_code == 404
    page = browser.get(f"/documents/{lab}").text
    assert "Ce document est masqué aux professionnels de santé." in page
    assert "à votre demande (ou à celle de votre représentant légal)" in page
    # The page did not say whose mask it was: the discharge letter's author masks it.
    letter = record["ldl-ses-martin.xml"]
    mask = [{"op": "add", "path": "/securityLabel/0", "value": {"coding": [
        {"system": codes.VISIBILITY_SYSTEM, "code": "MASQUE_PS"}]}}]
    assert client.patch(f"/fhir/DocumentReference/{letter}", data=json.dumps(mask), headers={
        "Content-Type": "application/json-patch+json", **internist}).status_code == 200
    page = browser.get(f"/documents/{letter}").text
    assert "par le professionnel ou l'établissement qui l'a produit ; vous pouvez le rendre visible" in page
    # As the confirmation said, its author, who still reads it, may not unmask it.
    post(browser, "/acces/professionnel", {"professionnel": "99900000046", "decision": "autoriser"}, "/acces")
    author = bearer("doctor", sub="899900000046")
    assert client.get(f"/fhir/DocumentReference/{lab}", headers=author).status_code == 200
    unmask = [{"op": "replace", "path": "/securityLabel/0", "value": {"coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"}]}}]
    assert client.patch(f"/fhir/DocumentReference/{lab}", data=json.dumps(unmask), headers={
        "Content-Type": "application/json-patch+json", **author}).status_code == 403
    labels = client.get(f"/fhir/DocumentReference/{lab}", headers=bearer("patient", patient=MARTIN)).json["securityLabel"]
    assert any(c["code"] == "MASQUE_PS" and c["system"] == codes.VISIBILITY_SYSTEM for lb in labels for c in lb["coding"])


def test_a_representative_does_not_see_what_the_minor_hid_from_them(app, settings, client, bearer, record):
    echo = record["cr-imagerie-echographie-moreau.xml"]
    browser = sign_in(app, settings, "sophie")
    assert "Échographie abdominale" in browser.get("/documents").text
    hide = client.patch(f"/fhir/DocumentReference/{echo}", headers={
        **bearer("patient", patient=MOREAU), "Content-Type": "application/json-patch+json"},
        json=[{"op": "add", "path": "/securityLabel/-", "value": {"coding": [{
            "system": codes.VISIBILITY_SYSTEM, "code": "INVISIBLE_REPRESENTANTS_LEGAUX"}]}}])
    assert hide.status_code == 200, hide.json
    assert "Échographie abdominale" not in browser.get("/documents").text
    assert browser.get(f"/documents/{echo}").status_code == 404


def test_the_copy_holds_the_record_and_its_signature_covers_every_file(app, settings, record):
    browser = sign_in(app, settings)
    copy = browser.get("/dossier/copie.zip")
    assert copy.status_code == 200 and copy.mimetype == "application/zip"
    # Health data kept by no cache (send_file's no-cache replaced the space's no-store), its length said.
    assert copy.headers["Cache-Control"] == "no-store" and copy.content_length == len(copy.data)
    assert copy.headers["Content-Disposition"].startswith('attachment; filename="copie-dossier-')
    assert verify_export(copy.data, [settings.demo_dir / "ca.pem"]).valid
    names = zipfile.ZipFile(BytesIO(copy.data)).namelist()
    assert {"bundle.json", "manifest.xml"} <= set(names) and sum(n.startswith("documents/") for n in names) == 2


def test_a_copy_or_an_upload_the_server_has_no_room_to_write_is_told_not_failed(app, settings, record,
                                                                                 full_temporary_disk):
    """The record's copy is written to a temporary file before it is sent, and an uploaded file past
    500 KB is kept in one while the form is read: where those go was full, and the patient got the
    500 page, "Erreur du service"."""
    browser = sign_in(app, settings)
    form = {"csrf_token": csrf(browser.get("/espace-personnel").text), "titre": "Compte rendu", "type": "51855-5",
            "fichier": (BytesIO(b"%PDF-1.4\n" + b"0" * (600 << 10) + b"\n%%EOF\n"), "compte-rendu.pdf")}
    for answer in (browser.get("/dossier/copie.zip"), browser.post("/espace-personnel/documents", data=form)):
        assert answer.status_code == 503 and answer.headers["Retry-After"].isdigit(), answer.text[:300]
        assert "Le service manque de place pour traiter cette demande. Réessayez plus tard." in answer.text
    full_temporary_disk()   # room again
    assert browser.get("/dossier/copie.zip").status_code == 200


def test_a_file_deposited_again_is_the_document_deposited(app, settings, record, database):
    """A form sent twice (a double click, a page reloaded after a slow upload) deposited the file
    twice, and the patient found it twice in their space. The same file under the same type and
    title, while the first is current, is that document: its page is shown, saying so. Under
    another title it is a document of its own, and so is a file a hospital's document holds."""
    browser = sign_in(app, settings)

    def deposit(title: str, data: bytes = "Je souhaite être informé.".encode()):
        form = {"csrf_token": csrf(browser.get("/espace-personnel").text), "titre": title, "type": "EXPPAT_3",
                "fichier": (BytesIO(data), "directives.txt")}
        return browser.post("/espace-personnel/documents", data=form)

    def deposits() -> list[str]:
        with database[0].connect() as conn:
            statuses = conn.execute(select(raw_inputs.c.status).where(raw_inputs.c.channel == "patient-space"))
            return sorted(statuses.scalars())
    first = deposit("Mes directives")
    assert first.status_code == 302, first.text[:300]
    again = deposit("Mes directives")
    assert again.location == first.location
    assert "Ce document est déjà dans votre espace personnel" in browser.get(again.location).text
    assert deposits() == ["duplicate", "processed"]
    assert browser.get("/espace-personnel").text.count(first.location.rsplit("/", 1)[-1]) >= 1
    assert deposit("Mes directives, copie").location != first.location
    assert deposits() == ["duplicate", "processed", "processed"]
    # A hospital's CDA, downloaded and deposited as text: the hospital's document is not the patient's.
    hospitals = deposit("Mon bilan", sample("ldl-ses-martin.xml"))
    assert hospitals.status_code == 302 and "est ajouté" in browser.get(hospitals.location).text


def test_a_file_the_minor_hid_deposited_by_her_representative_is_hers_and_tells_nothing(app, settings, client,
                                                                                        bearer, record, database):
    """Léa MOREAU deposits a file and hides it from her representatives; her mother deposits the
    same file under the same title. The answer named Léa's document ("déjà dans votre espace"),
    telling the mother that a document she may not see exists, and what it holds: it is a
    document of her own."""
    from gateway.access.context import AccessContext
    from gateway.services import personal

    data = "Je ne veux pas que mes parents lisent ceci.".encode()
    lea = repository.Repository(database[0], AccessContext(role="patient", subject=MOREAU, patient_ins=MOREAU),
                                settings.public_base_url)
    hers, _ = personal.add_document(lea, title="Mon journal", type_code=personal.OTHER_DOCUMENT,
                                    media_type="text/plain", data=data, max_bytes=1 << 20)
    hide = client.patch(f"/fhir/DocumentReference/{hers.res_id}", headers={
        **bearer("patient", patient=MOREAU), "Content-Type": "application/json-patch+json"},
        json=[{"op": "add", "path": "/securityLabel/-", "value": {"coding": [{
            "system": codes.VISIBILITY_SYSTEM, "code": "INVISIBLE_REPRESENTANTS_LEGAUX"}]}}])
    assert hide.status_code == 200, hide.json
    browser = sign_in(app, settings, "sophie")
    form = {"csrf_token": csrf(browser.get("/espace-personnel").text), "titre": "Mon journal", "type": "EXPPAT_2",
            "fichier": (BytesIO(data), "journal.txt")}
    answer = browser.post("/espace-personnel/documents", data=form)
    assert answer.status_code == 302 and hers.res_id not in answer.location
    assert "Le document est ajouté à votre espace personnel." in browser.get(answer.location).text


def test_an_emergency_contact_sent_again_is_kept_once(app, settings, record, database):
    """The contact's form sent twice kept two contacts alike, which professionals then read
    twice: an active contact of the record with the same name, relation and number is that one.
    One that differs in any of them is another contact."""
    browser = sign_in(app, settings)
    contact = {"nom": "MARTIN", "prenom": "Anne", "lien": "SPS", "telephone": "06 01 02 03 04"}

    def contacts() -> int:
        with database[0].connect() as conn:
            return conn.execute(select(func.count()).select_from(resources)
                                .where(resources.c.res_type == "RelatedPerson")).scalar_one()
    first = post(browser, "/espace-personnel/contacts", contact, page="/espace-personnel")
    assert first.status_code == 302 and "est enregistré" in browser.get(first.location).text
    again = post(browser, "/espace-personnel/contacts", {**contact, "nom": " MARTIN "}, page="/espace-personnel")
    assert "est déjà enregistré." in browser.get(again.location).text
    assert contacts() == 1
    post(browser, "/espace-personnel/contacts", {**contact, "telephone": "06 01 02 03 05"}, page="/espace-personnel")
    assert contacts() == 2


def test_a_decision_withdrawn_twice_and_a_contact_removed_twice_change_once(app, settings, client, bearer, record):
    """The withdrawal's or the removal's form sent twice (a double click, a page reloaded) wrote
    the same decision or contact again: the history showed an authorisation revoked twice. Sent
    again, they change nothing."""
    browser = sign_in(app, settings)
    martin = bearer("patient", patient=MARTIN)
    post(browser, "/acces/professionnel", {"professionnel": "899900000046", "decision": "autoriser"}, "/acces")
    authorised = [e["resource"]["id"] for e in client.get("/fhir/Consent", headers=martin, query_string={
        "status": "active", "category": f"{CONSENT_KIND_SYSTEM}|professional"}).json["entry"]
        if "899900000046" in json.dumps(e["resource"]["provision"])]
    assert len(authorised) == 1
    post(browser, "/espace-personnel/contacts", {"nom": "MARTIN", "prenom": "Anne", "lien": "SPS",
                                                 "telephone": "06 01 02 03 04"}, page="/espace-personnel")
    contact = client.get("/fhir/RelatedPerson", headers=martin).json["entry"][0]["resource"]["id"]
    for _ in range(2):
        withdrawn = post(browser, f"/acces/retirer/{authorised[0]}", {"confirmation": "oui"}, "/acces")
        assert withdrawn.status_code == 302 and "Votre décision est retirée." in browser.get(withdrawn.location).text
        removed = post(browser, f"/espace-personnel/contacts/{contact}/retirer", {}, "/espace-personnel")
        assert removed.status_code == 302
    history = client.get(f"/fhir/Consent/{authorised[0]}/_history", headers=martin).json
    assert [e["resource"]["status"] for e in history["entry"]] == ["inactive", "active"]
    history = client.get(f"/fhir/RelatedPerson/{contact}/_history", headers=martin).json
    assert [e["resource"]["active"] for e in history["entry"]] == [False, True]


def test_the_space_shows_an_app_s_decisions_about_organisations_and_withdraws_one_professional_at_a_time(
        app, settings, client, bearer, record):
    """Decisions an app made: a block of a hospital (by FINESS) did not appear on /acces, nor could
    it be lifted there; a block of two professionals in one Consent showed both, and unblocking one
    unblocked both. Each line now names its professional or establishment, and its button withdraws
    the decision for that one only (the Consent narrowed to the others); sent twice, once."""
    martin = {**bearer("patient", patient=MARTIN), "Content-Type": "application/fhir+json"}
    hospital = "750712184"
    role = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PRCP"}]}

    def decide(effect: str, *actors: tuple[str, str]) -> str:
        body = {"resourceType": "Consent", "status": "active",
                "category": [{"coding": [{"system": CONSENT_KIND_SYSTEM, "code": "professional"}]}],
                "provision": {"type": effect, "actor": [{"role": role, "reference": {"identifier": {
                    "system": system, "value": value}}} for system, value in actors]}}
        answer = client.post("/fhir/Consent", data=json.dumps(body), headers=martin)
        assert answer.status_code == 201, answer.json
        return answer.json["id"]

    idnatps = f"urn:oid:{codes.IDNATPS_OID}"
    both = decide("deny", (idnatps, "899900000046"), (idnatps, "899900000020"))
    establishment = decide("deny", (codes.FINESS_SYSTEM, hospital))
    browser = sign_in(app, settings)
    page = browser.get("/acces").text
    assert "Établissement bloqué" in page and f"Établissement FINESS {hospital}" in page
    assert page.count('<span class="badge refused">Bloqué·e</span>') == 2
    lines = re.findall(r'action="/acces/retirer/([^"]+)">\s*<input[^>]*>\s*<input type="hidden" name="acteur" '
                       r'value="([^"]+)">', page)
    assert sorted(lines) == sorted([(both, f"{idnatps}|899900000046"), (both, f"{idnatps}|899900000020"),
                                    (establishment, f"{codes.FINESS_SYSTEM}|{hospital}")])
    for _ in range(2):
        post(browser, f"/acces/retirer/{both}", {"acteur": f"{idnatps}|899900000046"}, "/acces")
    current = client.get(f"/fhir/Consent/{both}", headers=martin).json
    assert current["status"] == "active" and current["meta"]["versionId"] == "2"
    assert [a["reference"]["identifier"]["value"] for a in current["provision"]["actor"]] == ["899900000020"]
    post(browser, f"/acces/retirer/{establishment}", {"acteur": f"{codes.FINESS_SYSTEM}|{hospital}"}, "/acces")
    assert client.get(f"/fhir/Consent/{establishment}", headers=martin).json["status"] == "inactive"
    assert "Établissement bloqué" not in browser.get("/acces").text
    # A cabinet named by its IdNatSt (3 + SIRET), not a FINESS: it was called "Établissement FINESS …".
    decide("deny", (f"urn:oid:{codes.IDNATST_OID}", "312345678901234"))
    page = browser.get("/acces").text
    assert "Structure d&#39;identifiant national 312345678901234" in page and "FINESS 312345678901234" not in page


def test_the_patient_authorises_a_professional_until_a_day_and_the_space_says_when_it_ends(
        app, settings, client, bearer, record, monkeypatch):
    """The authorisation form takes a last day: the professional reads until it, inclusive. /acces
    says until when, then that it ended; a document's page says why they no longer read it. A day
    past is refused, saying so."""
    from datetime import date, timedelta

    browser = sign_in(app, settings)
    martin = bearer("patient", patient=MARTIN)
    internist = bearer("doctor", sub="899900000012")
    last = date.today() + timedelta(days=30)
    post(browser, "/acces/professionnel", {"professionnel": "899900000012", "decision": "autoriser",
                                           "jusqu_au": last.isoformat()}, "/acces")
    page = browser.get("/acces").text
    assert f"Autorisé·e jusqu'au {last.strftime('%d/%m/%Y')}" in page, page
    found = client.get("/fhir/DocumentReference", headers=internist).json
    assert found["total"] == 2
    authorised = [e["resource"] for e in client.get("/fhir/Consent", headers=martin, query_string={
        "status": "active", "category": f"{CONSENT_KIND_SYSTEM}|professional"}).json["entry"]
        if "899900000012" in json.dumps(e["resource"]["provision"])]
    assert [c["provision"]["period"] for c in authorised] == [{"end": last.isoformat()}]

    later = (last + timedelta(days=1)).isoformat() + "T12:00:00.000000"
    monkeypatch.setattr("gateway.access.context.index_now", lambda: later)
    monkeypatch.setattr("gateway.space.views.common.index_now", lambda: later)
    assert client.get("/fhir/DocumentReference", headers=internist).json["total"] == 0
    assert f"Autorisation terminée</span> le {last.strftime('%d/%m/%Y')}" in browser.get("/acces").text
    page = browser.get(f"/documents/{record['ldl-ses-martin.xml']}").text
    assert f"son autorisation a pris fin le {last.strftime('%d/%m/%Y')}" in page
    monkeypatch.undo()

    past = post(browser, "/acces/professionnel", {"professionnel": "899900000046", "decision": "autoriser",
                                                  "jusqu_au": "2020-01-01"}, "/acces")
    assert past.status_code == 302 and "aujourd&#39;hui ou une date à venir" in browser.get(past.location).text
    assert "899900000046" not in json.dumps(client.get("/fhir/Consent", headers=martin, query_string={
        "status": "active", "category": f"{CONSENT_KIND_SYSTEM}|professional"}).json)


def test_the_patient_blocks_an_establishment_from_the_space(app, settings, client, bearer, record):
    """The space decided about professionals only: a patient who wanted their hospital to see
    nothing had to block its doctors one by one, and a new one read. The search finds establishments
    of the directory by name or FINESS; blocking one (confirmed first) refuses whoever acts for it,
    even a doctor the patient authorised by name."""
    browser = sign_in(app, settings)
    post(browser, "/acces/professionnel", {"professionnel": "899900000012", "decision": "autoriser"}, "/acces")
    found = browser.get("/acces", query_string={"q": "Saint-Aubin"}).text
    assert "Centre hospitalier de Saint-Aubin" in found and 'name="etablissement" value="990000018"' in found
    assert 'value="990000018"' in browser.get("/acces", query_string={"q": "990 000 018"}).text
    asked = post(browser, "/acces/etablissement", {"etablissement": "990000018", "decision": "bloquer"},
                 "/acces?q=Saint-Aubin")
    assert asked.status_code == 200 and "Bloquer Centre hospitalier de Saint-Aubin ?" in asked.text
    at_the_hospital = bearer("doctor", sub="899900000012", org="990000018")
    assert client.get("/fhir/DocumentReference", headers=at_the_hospital).json["total"] == 2
    done = post(browser, "/acces/etablissement", {"etablissement": "990000018", "decision": "bloquer",
                                                  "confirmation": "oui"}, "/acces")
    assert done.status_code == 302
    assert "Établissement bloqué" in browser.get("/acces").text
    assert client.get("/fhir/DocumentReference", headers=at_the_hospital).json["total"] == 0
    assert client.get("/fhir/DocumentReference", headers=bearer("doctor", sub="899900000012")).json["total"] == 2
    assert post(browser, "/acces/etablissement", {"etablissement": "not-a-finess", "decision": "bloquer"},
                "/acces").status_code == 302
    assert client.get("/fhir/Consent", headers=bearer("patient", patient=MARTIN), query_string={
        "status": "active", "category": f"{CONSENT_KIND_SYSTEM}|professional"}).json["total"] == 2


def test_the_space_says_an_opposition_to_consultation_holds_against_the_attending_physician_too(
        app, settings, client, bearer, record):
    """The rules refuse every professional in care under an opposition to consultation, the attending
    physician included (README, the kinds of decision); the space told the patient "aucun
    professionnel ne peut le consulter, hors le médecin traitant", and a document's page said of
    their attending physician that they were not authorised."""
    martin = {**bearer("patient", patient=MARTIN), "Content-Type": "application/fhir+json"}
    for kind, effect, professional in (("attending-physician", "permit", GP), ("consultation", "deny", None)):
        body = {"resourceType": "Consent", "status": "active",
                "category": [{"coding": [{"system": CONSENT_KIND_SYSTEM, "code": kind}]}],
                "provision": {"type": effect, **({"actor": [{"role": {"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PRCP"}]},
                    "reference": {"identifier": {"system": "urn:oid:1.2.250.1.71.4.2.1", "value": professional}}}]}
                    if professional else {})}}
        assert client.post("/fhir/Consent", data=json.dumps(body), headers=martin).status_code == 201
    assert client.get("/fhir/DocumentReference", headers=bearer("doctor", sub=GP)).json["total"] == 0
    browser = sign_in(app, settings)
    page = browser.get("/acces").text
    assert "pas même votre médecin traitant" in page and "hors le médecin traitant" not in page
    page = browser.get(f"/documents/{record['ldl-ses-martin.xml']}").text
    # The GP, the letter's author, break-the-glass and the SAMU.
    assert page.count("vous vous êtes opposé·e à la consultation de votre dossier") == 4


def in_their_units_at_once(database, backend, monkeypatch, add) -> dict:
    """The answers of `add(engine, name)` sent through two gateways (`first` and `second`), each
    held in its unit of work, once it has looked the record up and before it looks at it, until
    both are there: on PostgreSQL; SQLite's one writer runs one unit after the other."""
    import threading

    from conftest import at_once
    from gateway.services import personal
    from gateway.storage.database import make_engine

    if backend == "sqlite":
        pytest.skip("SQLite's one writer takes the two units one after the other: neither starts before the other ends")
    both_in = threading.Barrier(2, timeout=60)
    own_record = personal.own_record

    def meet(uow, *args):
        found = own_record(uow, *args)
        both_in.wait()
        return found
    monkeypatch.setattr(personal, "own_record", meet)
    second_engine = make_engine(database[1])
    try:
        return at_once({name: lambda engine=engine, name=name: add(engine, name)
                        for name, engine in (("first", database[0]), ("second", second_engine))}, both_in)
    finally:
        second_engine.dispose()


def test_an_emergency_contact_sent_twice_at_once_is_kept_once(settings, record, database, backend, monkeypatch):
    """The contact sent through two gateways, each in its unit of work before either looked for the
    other: the record's Patient, locked while its contacts are read, orders them."""
    from gateway.access.context import AccessContext
    from gateway.services import personal

    martin = AccessContext(role="patient", subject=MARTIN, patient_ins=MARTIN)
    answers = in_their_units_at_once(database, backend, monkeypatch, lambda engine, _: personal.add_contact(
        repository.Repository(engine, martin, settings.public_base_url), family="MARTIN", given="Anne",
        relation="SPS", phone="0601020304"))
    assert sorted(added for _, added in answers.values()) == [False, True]
    assert answers["first"][0].res_id == answers["second"][0].res_id


def test_a_file_deposited_twice_at_once_is_kept_once(settings, record, database, backend, monkeypatch):
    """The same file deposited at the same instant into Léa MOREAU's record by Léa and by her
    mother, through two gateways, each in its unit of work before either looked at the record
    (each keeps its own raw copy: they are two senders): the record's Patient, locked while the
    record is looked at, orders them. One document is kept, and both answers name it. (One
    sender's two copies are ordered already: the second takes up the first's, unanswered, and
    waits for its claim, `ingest.keep`.)"""
    from gateway.access.context import AccessContext
    from gateway.services import personal

    requesters = {"first": AccessContext(role="patient", subject=MOREAU, patient_ins=MOREAU),
                  "second": AccessContext(role="representative", subject="sophie", patient_ins=MOREAU,
                                          name="Sophie MOREAU")}
    # An earlier deposit: the two units below write nothing else in common (the custodian of
    # what patients deposit is written with the first).
    personal.add_document(repository.Repository(database[0], requesters["first"], settings.public_base_url),
                          title="Mon carnet", type_code=personal.OTHER_DOCUMENT, media_type="text/plain",
                          data=b"Vaccins", max_bytes=1 << 20)
    answers = in_their_units_at_once(database, backend, monkeypatch, lambda engine, name: personal.add_document(
        repository.Repository(engine, requesters[name], settings.public_base_url), title="Mes directives",
        type_code=personal.ADVANCE_DIRECTIVES, media_type="text/plain", data="Je souhaite être informée.".encode(),
        max_bytes=1 << 20))
    assert sorted(added for _, added in answers.values()) == [False, True], answers
    assert answers["first"][0].res_id == answers["second"][0].res_id


def test_destruction_waits_for_the_retention_period_then_removes_the_record(app, settings, client, bearer, record,
                                                                             database):
    engine = database[0]
    browser = sign_in(app, settings)
    assert post(browser, "/dossier/destruction", {}, "/dossier").status_code == 302   # no confirmation: nothing
    assert retention.pending(engine) == []
    post(browser, "/dossier/destruction", {"confirmation": "oui"}, "/dossier")
    [request] = retention.pending(engine)
    assert request["due_at"][:4] == str(datetime.now(timezone.utc).year + 10)
    assert client.get("/fhir/DocumentReference", query_string={"patient.identifier": f"urn:oid:1.2.250.1.213.1.4.10|{MARTIN}"},
                      headers=bearer("doctor", sub="899900000053")).json["total"] == 0   # closed: no professional
    assert retention.carry_out(engine, datetime.now(timezone.utc) + timedelta(days=365)) == []   # not yet due
    [destroyed] = retention.carry_out(engine, datetime.now(timezone.utc) + timedelta(days=3660))
    assert destroyed.resources > 0 and destroyed.raw_inputs == 2
    with engine.connect() as conn:
        left = conn.execute(select(func.count()).select_from(resources).where(
            resources.c.patient_id == destroyed.patient_id, resources.c.res_type != "AuditEvent")).scalar_one()
        raws = conn.execute(select(func.count()).select_from(raw_inputs)).scalar_one()
    assert left == 0 and raws == 1   # Léa Moreau's document stays
    assert verify_chain(engine).broken_at is None
    # The trail stays, chained. It names him by his record's id, which nothing resolves now, and
    # holds his INS only in the search a professional made by it, as the query was asked.
    with engine.connect() as conn:
        trail = [json.loads(body) for body in conn.execute(select(resources.c.body).where(
            resources.c.res_type == "AuditEvent", resources.c.patient_id == destroyed.patient_id)).scalars()]
    queries = [base64.b64decode(entity.pop("query")).decode() for event in trail for entity in event["entity"]
               if "query" in entity]
    assert len(trail) >= 5 and not [event for event in trail if MARTIN in json.dumps(event) or "MARTIN" in json.dumps(event)]
    assert [q for q in queries if MARTIN in q] == [f"DocumentReference?patient.identifier=urn%3Aoid%3A1.2.250.1.213.1.4.10%7C{MARTIN}"]
    assert "Échographie abdominale" in sign_in(app, settings, "sophie").get("/documents").text


def test_a_form_field_holding_a_nul_is_refused_with_a_message_and_nothing_kept(app, settings, record, database):
    """U+0000 in a form (which PostgreSQL could neither compare nor keep: a 500 there) is refused
    before the page's work, with the page's French message, on both backends."""
    browser = sign_in(app, settings)
    answer = post(browser, "/espace-personnel/contacts", {"nom": "DUPONT\x00", "prenom": "Marie", "lien": "Soeur",
                                                          "telephone": "0601020304"}, page="/espace-personnel")
    assert answer.status_code == 302
    assert "Action impossible" in browser.get(answer.location).text
    with database[0].connect() as conn:
        assert conn.execute(select(func.count()).select_from(resources)
                            .where(resources.c.res_type == "RelatedPerson")).scalar_one() == 0
    refused = app.test_client().post("/connexion", data={"identifiant": "paul\x00", "mot_de_passe": PASSWORD})
    assert refused.status_code == 302


def test_a_search_or_a_page_link_the_gateway_cannot_take_is_told_not_failed(app, settings, record):
    """A patient's search for a professional is a name, commas and all: a lone comma was a search
    with no value, and an edited page link a bad cursor, each a 500 page "Erreur du service"."""
    browser = sign_in(app, settings)
    for query in (",", "BERNARD, Sophie", "a" + ",a" * 150):
        answer = browser.get("/acces", query_string={"q": query})
        assert answer.status_code == 200 and "Erreur du service" not in answer.text, query
    assert "BERNARD" in browser.get("/acces", query_string={"q": "BERNARD"}).text
    edited = browser.get("/historique", query_string={"page": "garbage"})
    assert edited.status_code == 400 and "Demande incorrecte" in edited.text


def test_the_folders_a_hospital_filed_documents_in_are_shown_with_their_documents(app, settings, client, bearer,
                                                                                   record):
    """A Folder groups the documents of a stay or a follow-up: the patient sees it on the documents
    page, with the documents it holds that they see, each a link to it."""
    import json

    from gateway.demo import build_submission

    bundle = build_submission(sample("cr-biologie-martin.xml").replace(b"1.2.250.1.213.1.1.9.2.7.1",
                                                                       b"1.2.250.1.213.1.1.9.2.7.8"), 5 * 1024 * 1024)
    bundle["entry"][0]["resource"]["entry"].append({"item": {"reference": "urn:uuid:folder"}})
    bundle["entry"].append({"fullUrl": "urn:uuid:folder", "request": {"method": "POST", "url": "List"}, "resource": {
        "resourceType": "List", "status": "current", "mode": "working", "title": "Suivi du diabète 2026",
        "code": {"coding": [{"system": "https://profiles.ihe.net/ITI/MHD/CodeSystem/MHDlistTypes", "code": "folder"}]},
        "date": "2026-12-01T10:00:00+01:00",
        "entry": [{"item": {"reference": f"DocumentReference/{record['ldl-ses-martin.xml']}"}},
                  {"item": {"reference": bundle["entry"][1]["fullUrl"]}}]}})
    filed = client.post("/fhir", data=json.dumps(bundle),
                        headers={"Content-Type": "application/fhir+json", **bearer("system", sub="hospital")})
    assert filed.status_code == 200, filed.json
    browser = sign_in(app, settings)
    page = browser.get("/documents").text
    folders = page.split('<h2 id="classeurs">', 1)[1].split("</section>", 1)[0]
    assert "Suivi du diabète 2026" in folders and "2 documents" in folders
    links = re.findall(r'href="/documents/([^"]+)"', folders)
    assert links[0] == record["ldl-ses-martin.xml"] and len(links) == 2
    assert browser.get(f"/documents/{links[1]}").status_code == 200


def test_an_unmasking_made_from_a_page_read_before_another_change_is_not_made(app, settings, client, bearer, record,
                                                                              monkeypatch):
    """The space unmasks by the positions it read. Between that read and the change, the patient
    (in another tab) hides the document from representatives too, and its labels move: the
    removal, made again from the new version, took off that label instead, and the document stayed
    masked. It is made only to the version read, or refused in French, nothing changed."""
    from gateway.space.views import documents as views

    lab = record["cr-biologie-martin.xml"]
    patient = {**bearer("patient", patient=MARTIN), "Content-Type": "application/json-patch+json"}

    def labelled(code):
        return [{"op": "add", "path": "/securityLabel/-", "value": {"coding": [{"system": codes.VISIBILITY_SYSTEM,
                                                                               "code": code}]}}]

    assert client.patch(f"/fhir/DocumentReference/{lab}", headers=patient, json=labelled("MASQUE_PS")).status_code == 200
    browser = sign_in(app, settings)
    change = views.labels.patch_document

    def another_tab_first(repository, docref_id, patch, **kwargs):
        assert client.patch(f"/fhir/DocumentReference/{lab}", headers=patient,
                            json=labelled("INVISIBLE_REPRESENTANTS_LEGAUX")).status_code == 200
        return change(repository, docref_id, patch, **kwargs)

    monkeypatch.setattr(views.labels, "patch_document", another_tab_first)
    answer = post(browser, f"/documents/{lab}/masquage", {"label": "MASQUE_PS", "action": "demasquer"},
                  f"/documents/{lab}")
    monkeypatch.undo()
    assert answer.status_code == 302
    assert "modifié entre-temps" in browser.get(answer.location).text
    codes_now = {c["code"] for lb in client.get(f"/fhir/DocumentReference/{lab}", headers=patient).json["securityLabel"]
                 for c in lb["coding"]}
    assert {"MASQUE_PS", "INVISIBLE_REPRESENTANTS_LEGAUX"} <= codes_now


def test_a_name_with_parts_of_extensions_only_is_shown_without_them(app, settings, client, bearer, record):
    """FHIR's JSON gives a name part that has extensions only as a null beside them: a
    professional registered so was a 500 page where the patient looks for them."""
    absent = {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}]}
    registered = client.post("/fhir/Practitioner", headers={"Content-Type": "application/fhir+json",
                                                            **bearer("system", sub="hospital")}, data=json.dumps({
        "resourceType": "Practitioner", "identifier": [{"system": "urn:oid:1.2.250.1.71.4.2.1", "value": "899900000099"}],
        "name": [{"family": "LEBLANC", "prefix": [None], "_prefix": [absent], "given": [None, "Yves"],
                  "_given": [absent, None]}]}))
    assert registered.status_code == 201, registered.json
    browser = sign_in(app, settings)
    answer = browser.get("/acces", query_string={"q": "LEBLANC"})
    assert answer.status_code == 200 and "Yves LEBLANC" in answer.text, answer.text[-2000:]


def test_a_professional_of_the_directory_known_by_an_adeli_based_idnatps_is_authorised_as_chosen(
        app, settings, client, bearer, record):
    """The list of professionals offers each by their IdNatPs: one of another kind than 8 + RPPS
    (0 + ADELI, as professions not yet in the RPPS have) was offered, and choosing them was refused
    ("saisissez un numéro RPPS"), so the patient could neither authorise nor block them. An ADELI
    number typed is that IdNatPs too."""
    registered = client.post("/fhir/Practitioner", headers={"Content-Type": "application/fhir+json",
                                                            **bearer("system", sub="hospital")}, data=json.dumps({
        "resourceType": "Practitioner", "identifier": [{"system": "urn:oid:1.2.250.1.71.4.2.1", "value": "0759912345"}],
        "name": [{"family": "ROUSSEL", "given": ["Anne"]}]}))
    assert registered.status_code == 201, registered.json
    browser = sign_in(app, settings)
    offered = browser.get("/acces", query_string={"q": "ROUSSEL"}).text
    assert 'name="professionnel" value="0759912345"' in offered
    psychologist = bearer("doctor", sub="0759912345")
    search = {"patient.identifier": f"urn:oid:1.2.250.1.213.1.4.10|{MARTIN}"}
    assert client.get("/fhir/DocumentReference", query_string=search, headers=psychologist).json.get("total") == 0
    answer = post(browser, "/acces/professionnel", {"professionnel": "0759912345", "decision": "autoriser"}, "/acces")
    assert answer.status_code == 302, answer.text[-1500:]
    assert "Anne ROUSSEL peut désormais consulter votre dossier." in browser.get(answer.location).text
    assert client.get("/fhir/DocumentReference", query_string=search, headers=psychologist).json["total"] == 2
    # The form sent again (a double click): the authorisation in force is kept, not revoked and made again.
    martin = bearer("patient", patient=MARTIN)
    before = client.get("/fhir/Consent", query_string={"status": "active"}, headers=martin).json["entry"]
    post(browser, "/acces/professionnel", {"professionnel": "0759912345", "decision": "autoriser"}, "/acces")
    after = client.get("/fhir/Consent", query_string={"status": "active"}, headers=martin).json["entry"]
    assert [(e["resource"]["id"], e["resource"]["meta"]["versionId"]) for e in after] == \
        [(e["resource"]["id"], e["resource"]["meta"]["versionId"]) for e in before]
    # Typed: the ADELI number, alone or in the IdNatPs; anything else is told what to type.
    assert post(browser, "/acces/professionnel", {"professionnel": "759 912 345", "decision": "bloquer",
                                                  "confirmation": "oui"}, "/acces").status_code == 302
    assert client.get("/fhir/DocumentReference", query_string=search, headers=psychologist).json.get("total") == 0
    # What is not a professional of the directory as it stands is told what to type: a list of
    # them is not one of them.
    for typed in ("12345", "0759912345,899900000012", "0759912345\\"):
        refused = post(browser, "/acces/professionnel", {"professionnel": typed, "decision": "autoriser"}, "/acces")
        assert refused.status_code == 302
        assert "numéro RPPS (11 chiffres) ou ADELI (9 chiffres)" in browser.get(refused.location).text, typed
