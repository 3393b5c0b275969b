"""The patient space in a real browser: Debian's Chromium driven by Playwright, against a gateway
started as `make run` starts it. Each step is checked where it matters: what a professional's
token then sees through the FHIR API, what the history shows, whether the copy verifies.

Every page of every demo account is visited at desktop and phone widths: each is screenshotted to
GATEWAY_TEST_ARTIFACTS (default test-artifacts/) for review, checked by axe-core, and read for
what a patient must never meet (a socket address, an unnamed RPPS number, an English sentence).
Without Chromium these tests are skipped, unless GATEWAY_REQUIRE_BROWSER=1 (CI) makes that a failure.
"""
import json
import os
import re
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
import requests

expect = pytest.importorskip("playwright.sync_api").expect

from conftest import ROOT
from e2e_support import GATEWAY, chromium, start_gateway, stop_gateway, token

ARTIFACTS = Path(os.environ.get("GATEWAY_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "patient-space"
MARTIN, DUBOIS, GARNIER, LEA, HUGO = ("185067511204554", "292086938701277", "161023306508977", "212057501802305",
                                      "116037505612342")
SURGEON, RADIOLOGIST, GP, INTERNIST = "899900000020", "899900000038", "899900000053", "899900000012"
INS_SYSTEM = "urn:oid:1.2.250.1.213.1.4.10"
DESKTOP, PHONE = {"width": 1100, "height": 900}, {"width": 375, "height": 740}


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    # Notifications sent every second, not every 10: a test waits for one.
    process, base, env = start_gateway(tmp_path_factory.mktemp("space") / "var",
                                       environment={"GATEWAY_NOTIFY_INTERVAL": "1"})
    yield base, env
    stop_gateway(process)


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def outbox(env, contact: str) -> list[str]:
    """What the development sender wrote to a contact, read as a developer reads it: `gateway outbox`."""
    out = subprocess.run([str(GATEWAY), "outbox", "--to", contact, "--last", "100"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def last_code(env, contact: str) -> str:
    return [line for line in outbox(env, contact) if "  code " in line][-1].rsplit("code ", 1)[-1]


def sign_in(browser, gateway, login: str, password: str, shots: bool = False, viewport: dict = DESKTOP,
            lands: str = "/documents"):
    base, env = gateway
    page = browser.new_page(base_url=base, viewport=viewport, locale="fr-FR")
    page.goto("/")
    assert page.url.endswith("/connexion")
    page.get_by_label("Identifiant").fill(login)
    page.get_by_label("Mot de passe").fill(password)
    if shots:
        screenshot(page, "1-sign-in")
    page.get_by_role("button", name="Continuer").click()
    page.get_by_label("Code reçu").fill(last_code(env, f"{login}@example.test"))
    if shots:
        screenshot(page, "2-one-time-code")
    page.get_by_role("button", name="Se connecter").click()
    expect(page).to_have_url(f"{base}{lands}")
    return page


def api_titles(gateway, patient: str, *token_args: str) -> list[str]:
    base, env = gateway
    found = requests.get(f"{base}/fhir/DocumentReference", params={
        "patient.identifier": f"urn:oid:1.2.250.1.213.1.4.10|{patient}", "status": "current"},
        headers=token(env, *token_args), timeout=60).json()
    return sorted(e["resource"]["content"][0]["attachment"]["title"] for e in found.get("entry", []))


def test_sign_in_with_a_one_time_code_and_read_documents_by_group(browser, gateway):
    page = sign_in(browser, gateway, "paul.martin", "demo-paul-martin", shots=True)
    assert page.locator("main h2").all_inner_texts() == ["Comptes rendus", "Biologie"]
    screenshot(page, "3-documents")
    # An N3 report: its sections, rendered from the CDA narrative.
    page.get_by_role("link", name="Compte rendu d'examens biologiques").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Compte rendu d'examens biologiques")
    assert {"Hématologie", "Biochimie"} <= set(page.locator("section.document h3").all_inner_texts())
    assert page.locator("section.document table").count() > 0
    screenshot(page, "4-a-document")
    page.close()


def test_an_n1_pdf_is_shown_inline_and_a_document_invisible_to_the_patient_is_not_listed(browser, gateway):
    page = sign_in(browser, gateway, "claire.dubois", "demo-claire-dubois")
    # The completed MRI report is kept from her until it is announced.
    assert page.get_by_role("link", name="IRM du genou droit (compte rendu complété)").count() == 0
    page.get_by_role("link", name="Compte rendu d'hospitalisation - cardiologie").click()
    pdf = page.locator("object.pdf")
    assert pdf.get_attribute("type") == "application/pdf"
    served = page.request.get(pdf.get_attribute("data"))
    assert served.headers["content-type"] == "application/pdf" and served.body().startswith(b"%PDF-")
    page.close()


def test_a_wrong_code_is_refused_and_sign_out_ends_the_session(browser, gateway):
    base, env = gateway
    page = browser.new_page(base_url=base)
    page.goto("/connexion")
    page.get_by_label("Identifiant").fill("jean.garnier")
    page.get_by_label("Mot de passe").fill("demo-jean-garnier")
    page.get_by_role("button", name="Continuer").click()
    right = last_code(env, "jean.garnier@example.test")
    page.get_by_label("Code reçu").fill("000000" if right != "000000" else "111111")
    page.get_by_role("button", name="Se connecter").click()
    expect(page.get_by_role("alert")).to_contain_text("Code incorrect")
    page.get_by_label("Code reçu").fill(right)
    page.get_by_role("button", name="Se connecter").click()
    page.get_by_role("button", name="Se déconnecter").click()
    expect(page.get_by_role("status")).to_contain_text("déconnecté")
    page.goto("/documents")
    assert "/connexion" in page.url
    page.close()


def test_a_patient_changes_their_password_from_the_page_every_page_links_to(browser, gateway):
    base, env = gateway
    created = subprocess.run([str(GATEWAY), "account", "create", "--login", "jean.garnier.password", "--ins",
                              "161023306508977", "--name", "Jean GARNIER", "--contact",
                              "jean.garnier.password@example.test"], env={**env, "GATEWAY_ACCOUNT_PASSWORD": "the first one"},
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert created.returncode == 0, created.stderr
    page = sign_in(browser, gateway, "jean.garnier.password", "the first one")
    page.get_by_role("link", name="Mot de passe").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Changer mon mot de passe")
    accessible(page, "/compte/mot-de-passe")
    page.get_by_label("Mot de passe actuel").fill("the first one")
    page.get_by_label("Nouveau mot de passe", exact=True).fill("the second one, longer")
    page.get_by_label("Nouveau mot de passe, à nouveau").fill("the second one, longer")
    page.get_by_role("button", name="Changer le mot de passe").click()
    expect(page.get_by_role("status")).to_contain_text("Votre mot de passe est changé")
    page.get_by_role("button", name="Se déconnecter").click()
    page.close()
    sign_in(browser, gateway, "jean.garnier.password", "the second one, longer").close()


def test_blocking_a_professional_hides_the_whole_record_from_them(browser, gateway):
    assert api_titles(gateway, GARNIER, "--role", "doctor", "--sub", SURGEON) != []
    page = sign_in(browser, gateway, "jean.garnier", "demo-jean-garnier")
    page.get_by_role("link", name="Qui peut accéder").click()
    page.get_by_label("Nom, numéro RPPS ou FINESS").fill(SURGEON[1:])
    page.get_by_role("button", name="Rechercher").click()
    page.get_by_role("button", name="Bloquer", exact=False).first.click()
    # Taking someone's access away asks first.
    expect(page.get_by_role("heading", level=1)).to_contain_text("Bloquer")
    assert api_titles(gateway, GARNIER, "--role", "doctor", "--sub", SURGEON) != []
    page.get_by_role("button", name="Confirmer").click()
    expect(page.get_by_role("status")).to_contain_text("bloqué")
    screenshot(page, "5-access")
    assert api_titles(gateway, GARNIER, "--role", "doctor", "--sub", SURGEON) == []
    # Unblocking gives nothing back by itself: the earlier authorisation was replaced by the block.
    page.get_by_role("button", name="Débloquer", exact=False).click()
    expect(page.get_by_role("status")).to_contain_text("retirée")
    assert api_titles(gateway, GARNIER, "--role", "doctor", "--sub", SURGEON) == []
    page.close()


def test_blocking_an_establishment_hides_the_record_from_whoever_acts_for_it(browser, gateway):
    """Paul MARTIN blocks the hospital his internist works for: acting for it, she reads nothing,
    though he authorised her by name; acting elsewhere, she reads. Unblocked, she reads there again."""
    hospital = ("--role", "doctor", "--sub", INTERNIST, "--org", "990000018")
    read_there = api_titles(gateway, MARTIN, *hospital)
    assert read_there != []
    page = sign_in(browser, gateway, "paul.martin", "demo-paul-martin")
    page.get_by_role("link", name="Qui peut accéder").click()
    page.get_by_label("Nom, numéro RPPS ou FINESS").fill("Saint-Aubin")
    page.get_by_role("button", name="Rechercher").click()
    page.get_by_role("button", name="Bloquer l'établissement").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Bloquer Centre hospitalier de Saint-Aubin")
    page.get_by_role("button", name="Confirmer").click()
    expect(page.get_by_role("status")).to_contain_text("est bloqué")
    expect(page.locator("main")).to_contain_text("Établissement bloqué")
    screenshot(page, "5b-access-establishment")
    assert api_titles(gateway, MARTIN, *hospital) == []
    assert api_titles(gateway, MARTIN, "--role", "doctor", "--sub", INTERNIST) == read_there
    page.get_by_role("button", name="Débloquer de Centre hospitalier de Saint-Aubin").click()
    expect(page.get_by_role("status")).to_contain_text("retirée")
    assert api_titles(gateway, MARTIN, *hospital) == read_there
    page.close()


def test_masking_a_document_hides_it_from_authorised_professionals_only(browser, gateway):
    report = "Compte rendu d'hospitalisation - cardiologie"
    assert report in api_titles(gateway, DUBOIS, "--role", "doctor", "--sub", RADIOLOGIST)
    page = sign_in(browser, gateway, "claire.dubois", "demo-claire-dubois")
    page.get_by_role("link", name=report).click()
    page.get_by_role("button", name="Masquer aux professionnels de santé").click()
    page.get_by_role("button", name="Confirmer").click()
    expect(page.get_by_role("status")).to_contain_text("masqué aux professionnels")
    readers = reader_lines(page)
    assert "peut le voir — médecin traitant" in readers["Dr Camille NOEL"]
    assert "ne peut pas le voir — le document est masqué aux professionnels" in readers["Dr Isabelle FAURE"]
    assert report not in api_titles(gateway, DUBOIS, "--role", "doctor", "--sub", RADIOLOGIST)
    assert report in api_titles(gateway, DUBOIS, "--role", "doctor", "--sub", GP)   # the attending physician
    page.get_by_role("button", name="Rendre visible aux professionnels de santé").click()
    expect(page.get_by_role("status")).to_contain_text("de nouveau visible")
    assert report in api_titles(gateway, DUBOIS, "--role", "doctor", "--sub", RADIOLOGIST)
    page.close()


def reader_lines(page) -> dict[str, str]:
    """Each line of "who can see this document", by the reader's name."""
    return {line.split(" (")[0].split(" :")[0]: line for line in page.locator("ul.readers li").all_inner_texts()}


def test_the_history_shows_who_accessed_the_record_and_why(browser, gateway):
    base, env = gateway
    requests.get(f"{base}/fhir/DocumentReference", params={"patient.identifier": f"urn:oid:1.2.250.1.213.1.4.10|{MARTIN}",
                                                           "status": "current"},
                 headers=token(env, "--role", "doctor", "--sub", "899900000012", "--name", "Dr Hélène BERNARD",
                               "--org", "750712184"), timeout=60)
    requests.get(f"{base}/fhir/DocumentReference", params={"patient.identifier": f"urn:oid:1.2.250.1.213.1.4.10|{MARTIN}",
                                                           "status": "current"},
                 headers=token(env, "--role", "doctor", "--sub", "899900000099", "--name", "Dr URGENTISTE",
                               "--purpose", "emergency", "--patient", MARTIN), timeout=60)
    page = sign_in(browser, gateway, "paul.martin", "demo-paul-martin")
    page.get_by_role("link", name="Historique des accès").click()
    expect(page.get_by_role("heading", level=2)).to_contain_text("Accès des professionnels")
    rows = page.locator("table.history tbody tr").all_inner_texts()
    bernard = next(r for r in rows if "Dr Hélène BERNARD" in r)
    assert "Médecine interne" in bernard and "a recherché des documents" in bernard and "Soins" in bernard
    assert any("Dr URGENTISTE" in r and "bris de glace" in r for r in rows)
    screenshot(page, "6-history")
    page.get_by_role("link", name="Accès en urgence").click()
    expect(page.get_by_role("heading", level=2)).to_contain_text("Accès en urgence")
    rows = page.locator("table.history tbody tr").all_inner_texts()
    assert rows and all("urgence" in r.lower() for r in rows)
    page.close()


def test_a_copy_of_the_record_downloads_and_verifies(browser, gateway, tmp_path):
    base, env = gateway
    page = sign_in(browser, gateway, "paul.martin", "demo-paul-martin")
    page.get_by_role("link", name="Mon dossier", exact=True).click()
    screenshot(page, "7-record")
    with page.expect_download() as download:
        page.get_by_role("link", name="Télécharger une copie").click()
    copy = tmp_path / "copie.zip"
    download.value.save_as(copy)
    verified = subprocess.run([str(GATEWAY), "verify-export", str(copy)], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
    assert verified.returncode == 0 and verified.stdout.startswith("valid"), verified.stdout + verified.stderr
    page.close()


def test_the_personal_space_takes_a_document_and_an_emergency_contact(browser, gateway, tmp_path):
    page = sign_in(browser, gateway, "jean.garnier", "demo-jean-garnier")
    page.get_by_role("link", name="Espace personnel").click()
    directives = tmp_path / "directives.txt"
    directives.write_text("Je refuse l'acharnement thérapeutique.\n", encoding="utf-8")
    page.get_by_label("Titre").fill("Mes directives anticipées")
    page.get_by_label("Nature").select_option(label="Directives anticipées")
    page.get_by_label("Fichier (PDF ou texte)").set_input_files(str(directives))
    page.get_by_role("button", name="Ajouter le document").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Mes directives anticipées")
    assert "acharnement thérapeutique" in page.locator("pre.text").inner_text()
    page.get_by_role("link", name="Espace personnel").click()
    page.get_by_label("Prénom").fill("Marie")
    page.get_by_label("Nom", exact=True).fill("GARNIER")
    page.get_by_label("Lien").select_option(label="Conjoint(e)")
    page.get_by_label("Téléphone").fill("06 12 34 56 78")
    page.get_by_role("button", name="Ajouter le contact").click()
    expect(page.locator("main")).to_contain_text("Marie GARNIER — Conjoint(e) — 06 12 34 56 78")
    screenshot(page, "8-personal-space")
    # A professional the patient authorised finds the directives with the rest of the record.
    assert "Mes directives anticipées" in api_titles(gateway, GARNIER, "--role", "doctor", "--sub", RADIOLOGIST)
    page.close()


def test_closing_the_record_stops_professionals_until_it_is_reopened(browser, gateway):
    page = sign_in(browser, gateway, "claire.dubois", "demo-claire-dubois")
    page.get_by_role("link", name="Mon dossier", exact=True).click()
    page.get_by_role("button", name="Fermer le dossier").click()
    expect(page.get_by_role("alert")).to_contain_text("Cochez")   # nothing without the confirmation
    page.get_by_label("Je confirme vouloir fermer le dossier").check()
    page.get_by_role("button", name="Fermer le dossier").click()
    expect(page.get_by_role("status")).to_contain_text("Le dossier est fermé")
    assert api_titles(gateway, DUBOIS, "--role", "doctor", "--sub", GP) == []
    # Every page says so.
    for link in ("Documents", "Historique des accès", "Qui peut accéder", "Espace personnel", "Mon dossier"):
        page.get_by_role("link", name=link, exact=True).click()
        expect(page.locator("#dossier-ouvert")).to_contain_text("Ce dossier est fermé")
    # A refusal of the services reaches the page in French.
    page.get_by_role("link", name="Espace personnel").click()
    page.get_by_label("Titre").fill("Note")
    page.get_by_label("Fichier (PDF ou texte)").set_input_files(
        files=[{"name": "note.txt", "mimeType": "text/plain", "buffer": "Une note.".encode()}])
    page.get_by_role("button", name="Ajouter le document").click()
    expect(page.get_by_role("alert")).to_have_text(re.compile(r"^Action impossible : le dossier est fermé : il n'accepte"))
    page.get_by_role("link", name="Documents", exact=True).click()
    expect(page.locator("ul.documents li").first).to_be_visible()   # the patient still reads it
    page.get_by_role("link", name="Mon dossier", exact=True).click()
    page.get_by_role("button", name="Rouvrir le dossier").click()
    expect(page.get_by_role("status")).to_contain_text("rouvert")
    assert api_titles(gateway, DUBOIS, "--role", "doctor", "--sub", GP) != []
    page.close()


def test_a_representative_chooses_among_the_children_and_every_page_names_the_one_open(browser, gateway):
    page = sign_in(browser, gateway, "sophie.moreau", "demo-sophie-moreau", lands="/dossiers")
    assert "représentant·e légal·e" in page.locator("header").inner_text()
    choices = page.locator("fieldset label").all_inner_texts()
    assert choices == ["Dossier de Hugo MOREAU", "Dossier de Lea MOREAU"]
    page.get_by_label("Dossier de Lea MOREAU").check()
    page.get_by_role("button", name="Ouvrir ce dossier").click()
    expect(page.locator("ul.documents a", has_text="Échographie abdominale")).to_be_visible()
    # The hospital filed its signed synthesis with the earlier ultrasound in a Folder (demo data).
    folder = page.locator("ul.folders li.card", has_text="Suivi pédiatrique de Léa")
    expect(folder).to_contain_text("2 documents")
    folder.get_by_role("link", name="Échographie abdominale").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Échographie abdominale")
    page.go_back()
    for link in ("Historique des accès", "Qui peut accéder", "Espace personnel", "Mon dossier", "Documents"):
        page.get_by_role("link", name=link, exact=True).click()
        expect(page.locator("#dossier-ouvert")).to_contain_text("Vous consultez le dossier de Lea MOREAU")
        assert "Lea MOREAU" in page.title()
    page.get_by_role("link", name="Changer de dossier").click()
    page.get_by_label("Dossier de Hugo MOREAU").check()
    page.get_by_role("button", name="Ouvrir ce dossier").click()
    expect(page.locator("#dossier-ouvert")).to_contain_text("Hugo MOREAU")
    expect(page.locator("main")).to_contain_text("aucun document")
    page.close()


def test_the_history_puts_refused_attempts_and_emergencies_first_and_names_everyone(browser, gateway):
    base, env = gateway
    # Dr ROUSSEAU, whom Paul Martin blocked, tries; an emergency doctor breaks the glass. Neither
    # token carries a name: the history takes it from the directory.
    query = {"patient.identifier": f"{INS_SYSTEM}|{MARTIN}", "status": "current"}
    assert requests.get(f"{base}/fhir/DocumentReference", params=query,
                        headers=token(env, "--role", "doctor", "--sub", SURGEON), timeout=60).json()["total"] == 0
    requests.get(f"{base}/fhir/DocumentReference", params=query,
                 headers=token(env, "--role", "doctor", "--sub", RADIOLOGIST, "--purpose", "emergency",
                               "--patient", MARTIN), timeout=60)
    page = sign_in(browser, gateway, "paul.martin", "demo-paul-martin")
    for _ in range(3):   # the patient's own clicks, which must not push the professionals away
        page.get_by_role("link", name="Documents", exact=True).click()
    page.get_by_role("link", name="Historique des accès").click()
    expect(page.get_by_role("heading", level=2)).to_contain_text("Accès des professionnels")
    rows = page.locator("table.history tbody tr").all_inner_texts()
    refused = next(r for r in rows if "Dr Marc ROUSSEAU" in r)
    assert "Refusé" in refused and "a tenté de consulter le dossier" in refused
    assert "Chirurgie orthopédique et traumatologie · Clinique du Parc" in refused
    assert any("Dr Isabelle FAURE" in r and "Urgence (bris de glace)" in r for r in rows)
    assert not any(r.startswith("Vous") or "\tVous" in r for r in rows)
    # The hospital's software is named by its organisation, the service's imports as such.
    text = page.locator("main").inner_text()
    assert "Logiciel de l'établissement" in text and "Alimentation du dossier" in text
    assert not re.search(r"mllp|gateway ingest|demo setup|\d+\.\d+\.\d+\.\d+|critères", text)
    # And `gateway serve`'s sender told him of the emergency access, naming no one.
    deadline = time.monotonic() + 60
    while not [line for line in outbox(env, "paul.martin@example.test") if "Accès en urgence" in line]:
        assert time.monotonic() < deadline, outbox(env, "paul.martin@example.test")
        time.sleep(0.2)
    sent = [json.loads(line) for line in (Path(env["GATEWAY_VAR_DIR"]) / "outbox.jsonl").read_text().splitlines()]
    told = next(m for m in sent if m["to"] == "paul.martin@example.test"
                and m["subject"].startswith("Accès en urgence"))
    assert f"{base}/historique" in told["text"] and not re.search(r"FAURE|ROUSSEAU|biolog|MARTIN", told["text"], re.I)
    page.get_by_role("link", name="Tentatives refusées").click()
    expect(page.get_by_role("heading", level=2)).to_contain_text("Tentatives refusées")
    rows = page.locator("table.history tbody tr").all_inner_texts()
    assert rows and all("Refusé" in r for r in rows)
    page.get_by_role("link", name="Vos propres actions").click()
    expect(page.get_by_role("heading", level=2)).to_contain_text("Vos propres actions")
    rows = page.locator("table.history tbody tr").all_inner_texts()
    assert rows and all("Vous" in r and "Gestion du dossier" in r for r in rows)
    page.close()


def test_each_reader_of_a_masked_document_is_given_a_reason(browser, gateway):
    page = sign_in(browser, gateway, "paul.martin", "demo-paul-martin")
    page.get_by_role("link", name="Lettre de liaison à la sortie - service de médecine interne").click()
    page.get_by_role("button", name="Masquer aux professionnels de santé").click()
    page.get_by_role("button", name="Confirmer").click()
    expect(page.get_by_role("status")).to_contain_text("masqué aux professionnels")
    readers = reader_lines(page)
    # Dr BERNARD, authorised, still sees it: she wrote it, and the page says so.
    assert "peut le voir — auteur du document : le voit même masqué" in readers["Dr Sophie BERNARD"]
    assert "peut le voir — médecin traitant" in readers["Dr Camille NOEL"]
    assert "ne peut pas le voir — le document est masqué" in readers["Un professionnel en urgence"]
    page.get_by_role("button", name="Rendre visible aux professionnels de santé").click()
    page.close()


def test_removing_the_attending_physician_asks_and_can_be_cancelled(browser, gateway):
    page = sign_in(browser, gateway, "paul.martin", "demo-paul-martin")
    page.get_by_role("link", name="Qui peut accéder").click()
    noel = page.locator("ul.people li", has_text="Dr Camille NOEL")
    expect(noel).to_contain_text("Médecine générale · Maison de santé des Acacias")
    expect(noel).to_contain_text("Médecin traitant")
    noel.get_by_role("button", name="Ne plus en faire mon médecin traitant").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Retirer Dr Camille NOEL comme médecin traitant ?")
    page.get_by_role("link", name="Annuler").click()
    expect(page.locator("ul.people li", has_text="Dr Camille NOEL")).to_contain_text("Médecin traitant")
    assert api_titles(gateway, MARTIN, "--role", "doctor", "--sub", GP) != []
    page.close()


def test_a_copy_is_checked_in_the_space_itself(browser, gateway, tmp_path):
    page = sign_in(browser, gateway, "jean.garnier", "demo-jean-garnier")
    page.get_by_role("link", name="Mon dossier", exact=True).click()
    with page.expect_download() as download:
        page.get_by_role("link", name="Télécharger une copie").click()
    copy = tmp_path / "copie.zip"
    download.value.save_as(copy)
    page.get_by_label("Copie à vérifier (fichier ZIP)").set_input_files(str(copy))
    page.get_by_role("button", name="Vérifier la copie").click()
    expect(page.locator("#verification")).to_contain_text("Copie intacte")
    # One file changed: the page names it.
    with zipfile.ZipFile(copy) as original:
        entries = {name: original.read(name) for name in original.namelist()}
    changed = next(name for name in entries if name.endswith(".xml") and "manifest" not in name.lower())
    entries[changed] = entries[changed].replace(b"<", b"< ", 1)
    altered = tmp_path / "modifiee.zip"
    with zipfile.ZipFile(altered, "w") as target:
        for name, data in entries.items():
            target.writestr(name, data)
    page.get_by_label("Copie à vérifier (fichier ZIP)").set_input_files(str(altered))
    page.get_by_role("button", name="Vérifier la copie").click()
    expect(page.locator("#verification")).to_contain_text("Copie non conforme")
    expect(page.locator("#verification")).to_contain_text(f"{changed} : modifié")
    page.close()


def submit(gateway, cda: bytes, labels: list[str]) -> str:
    """An ITI-65 submission from a hospital's software; the id of the DocumentReference it created."""
    from gateway.demo import build_submission
    from gateway.mapping import codes

    base, env = gateway
    bundle = build_submission(cda, 10_000_000)
    docref = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DocumentReference")
    if labels:   # FHIR's JSON has no empty array
        docref["securityLabel"] = [{"coding": [{"system": codes.VISIBILITY_SYSTEM, "code": code}]} for code in labels]
    answer = requests.post(f"{base}/fhir", data=json.dumps(bundle), headers={
        **token(env, "--role", "system", "--sub", "ch-saint-aubin"), "Content-Type": "application/fhir+json"}, timeout=60)
    assert answer.status_code == 200, answer.text
    location = next(e["response"]["location"] for e in answer.json()["entry"]
                    if "DocumentReference/" in e["response"]["location"])
    return location.split("DocumentReference/")[1].split("/")[0]


def new_document() -> bytes:
    """Paul Martin's lab report under a new document id: a new document to the gateway."""
    cda = (ROOT / "samples" / "cda" / "cr-biologie-martin.xml").read_text(encoding="utf-8")
    document_id = re.search(r'<id root="([0-9.]+)"/>', cda)
    return cda.replace(document_id.group(0), f'<id root="{document_id.group(1)}.{time.time_ns()}"/>', 1).encode()


def test_a_new_visible_document_is_notified_and_an_invisible_one_is_not(gateway):
    base, env = gateway
    hidden = submit(gateway, new_document(), ["INVISIBLE_PATIENT"])
    shown = submit(gateway, new_document(), [])
    # `gateway serve` sends the queue in order: once the visible one is out, the hidden one would be too.
    deadline = time.monotonic() + 60
    while True:
        listed = subprocess.run([str(GATEWAY), "notifications", "list"], env=env, cwd=ROOT, capture_output=True,
                                text=True, timeout=60).stdout
        if re.search(rf"DocumentReference/{shown} .* sent .* to 1 account", listed):
            break
        assert time.monotonic() < deadline, listed
        time.sleep(0.2)
    assert hidden not in listed
    # With the other documents of the record queued beside it, if any: "2 nouveaux documents".
    mail = [line for line in outbox(env, "paul.martin@example.test") if re.search(r"Un nouveau document|\d+ nouveaux", line)]
    assert mail
    sent = [json.loads(line) for line in (Path(env["GATEWAY_VAR_DIR"]) / "outbox.jsonl").read_text().splitlines()]
    text = next(m["text"] for m in reversed(sent) if m["to"] == "paul.martin@example.test" and not m.get("code")
                and "nouveau" in m["subject"])
    assert f"{base}/documents" in text and not re.search(r"biolog|Compte rendu|Laboratoire|MARTIN", text, re.I)


ACCOUNTS = [("paul.martin", "demo-paul-martin", "Paul MARTIN"), ("claire.dubois", "demo-claire-dubois", "Claire DUBOIS"),
            ("jean.garnier", "demo-jean-garnier", "Jean GARNIER"), ("sophie.moreau", "demo-sophie-moreau", "Lea MOREAU")]
PAGES = [("documents", "/documents"), ("historique", "/historique"), ("acces", "/acces"),
         ("espace-personnel", "/espace-personnel"), ("dossier", "/dossier"), ("mot-de-passe", "/compte/mot-de-passe")]
# What a patient must never read: a socket or an address, a process name, a number the directory
# could have named, an English sentence (a few words no French sentence holds).
SOCKET = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b|\bmllp\b|gateway ingest|demo setup")
UNNAMED = re.compile(r"Professionnel RPPS|Professionnel non identifié|\b\d{11,12}\b")
ENGLISH = re.compile(r"\b(the|is|are|not|and|of|with|record|closed|error|found|refused|cannot|should)\b", re.I)


def read_as_a_patient(page, where: str) -> None:
    text = page.evaluate("""() => { const copy = document.body.cloneNode(true);
        copy.querySelectorAll('section.document, script, style').forEach(e => e.remove());
        return copy.innerText; }""")
    for pattern in (SOCKET, UNNAMED, ENGLISH):
        found = pattern.search(text)
        assert found is None, f"{where}: {found.group(0)!r} in {text[max(0, found.start() - 80):found.end() + 80]!r}"


def accessible(page, where: str) -> None:
    from axe_playwright_python.sync_playwright import Axe

    violations = Axe().run(page).response["violations"]
    serious = [f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']][:3]}" for v in violations
               if v["impact"] in ("serious", "critical")]
    assert serious == [], f"{where}: {serious}"


@pytest.mark.parametrize("login,password,holder", ACCOUNTS, ids=[a[0] for a in ACCOUNTS])
def test_every_page_names_the_record_reads_well_and_passes_axe_at_desktop_and_phone_width(
        browser, gateway, login, password, holder):
    shots = ARTIFACTS / "pages"
    representative = login == "sophie.moreau"
    page = sign_in(browser, gateway, login, password, lands="/dossiers" if representative else "/documents")
    visits = list(PAGES)
    if representative:
        accessible(page, f"{login} /dossiers")
        for size, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
            page.set_viewport_size(viewport)
            page.screenshot(path=str(_shot(shots, f"{login}-0-choisir-{size}")), full_page=True)
        page.get_by_label(f"Dossier de {holder}").check()
        page.get_by_role("button", name="Ouvrir ce dossier").click()
    visits.insert(1, ("un-document", page.locator("ul.documents a").first.get_attribute("href")))
    for size, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(viewport)
        for number, (name, path) in enumerate(visits, start=1):
            page.goto(path)
            where = f"{login} {path} ({size})"
            expect(page.locator("#dossier-ouvert")).to_contain_text(holder)
            read_as_a_patient(page, where)
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), f"{where}: overflows"
            if size == "desktop":
                accessible(page, where)
            page.screenshot(path=str(_shot(shots, f"{login}-{number}-{name}-{size}")), full_page=True)
    page.close()


def _shot(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}.png"
