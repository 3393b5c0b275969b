"""The patient space in a real browser: Debian's Chromium driven by Playwright, against a gateway
started as `make run` starts it. Each step is checked where it matters: what a professional's
token then sees through the FHIR API, what the history shows, whether the copy verifies.

Screenshots of the main pages go to GATEWAY_TEST_ARTIFACTS (default test-artifacts/) for review.
Without Chromium these tests are skipped, unless GATEWAY_REQUIRE_BROWSER=1 (CI) makes that a failure.
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import requests

expect = pytest.importorskip("playwright.sync_api").expect

from conftest import ROOT
from e2e_support import GATEWAY, start_gateway, stop_gateway, token

CHROMIUM = os.environ.get("GATEWAY_CHROMIUM", "/usr/bin/chromium")
REQUIRE_BROWSER = os.environ.get("GATEWAY_REQUIRE_BROWSER") == "1"
ARTIFACTS = Path(os.environ.get("GATEWAY_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "patient-space"
# Chromium in a closed network: no background services, no sandbox as root.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MARTIN, DUBOIS, GARNIER = "185067511204554", "292086938701277", "161023306508977"
SURGEON, RADIOLOGIST, GP = "899900000020", "899900000038", "899900000053"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
        if REQUIRE_BROWSER:
            pytest.fail(f"GATEWAY_REQUIRE_BROWSER=1 but there is no Chromium at {CHROMIUM}")
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian package chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    process, base, env = start_gateway(tmp_path_factory.mktemp("space") / "var")
    yield base, env
    stop_gateway(process)


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def last_code(env, contact: str) -> str:
    """The one-time code, read as a developer reads it: `gateway outbox`."""
    out = subprocess.run([str(GATEWAY), "outbox", "--to", contact, "--last", "1"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().rsplit("code ", 1)[-1]


def sign_in(browser, gateway, login: str, password: str, shots: bool = False):
    base, env = gateway
    page = browser.new_page(base_url=base, viewport={"width": 1100, "height": 900})
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
    expect(page).to_have_url(f"{base}/documents")
    return page


def api_titles(gateway, patient: str, *token_args: str) -> list[str]:
    base, env = gateway
    found = requests.get(f"{base}/fhir/DocumentReference", params={
        "patient.identifier": f"urn:oid:1.2.250.1.213.1.4.10|{patient}", "status": "current"},
        headers=token(env, *token_args)).json()
    return sorted(e["resource"]["content"][0]["attachment"]["title"] for e in found.get("entry", []))


def test_sign_in_with_a_one_time_code_and_read_documents_by_group(browser, gateway):
    page = sign_in(browser, gateway, "paul.martin", "demo-paul-martin", shots=True)
    assert page.locator("main h2").all_inner_texts() == ["Comptes rendus", "Biologie"]
    screenshot(page, "3-documents")
    # An N3 report: its sections, rendered from the CDA narrative.
    page.get_by_role("link", name="Compte rendu d'examens biologiques").click()
    assert page.get_by_role("heading", level=1).inner_text() == "Compte rendu d'examens biologiques"
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


def test_blocking_a_professional_hides_the_whole_record_from_them(browser, gateway):
    assert api_titles(gateway, GARNIER, "--role", "doctor", "--sub", SURGEON) != []
    page = sign_in(browser, gateway, "jean.garnier", "demo-jean-garnier")
    page.get_by_role("link", name="Qui peut accéder").click()
    page.get_by_label("Nom ou numéro RPPS").fill(SURGEON[1:])
    page.get_by_role("button", name="Rechercher").click()
    page.get_by_role("button", name="Bloquer", exact=False).first.click()
    expect(page.get_by_role("status")).to_contain_text("bloqué")
    screenshot(page, "5-access")
    assert api_titles(gateway, GARNIER, "--role", "doctor", "--sub", SURGEON) == []
    # Unblocking gives nothing back by itself: the earlier authorisation was replaced by the block.
    page.get_by_role("button", name="Débloquer", exact=False).click()
    expect(page.get_by_role("status")).to_contain_text("retirée")
    assert api_titles(gateway, GARNIER, "--role", "doctor", "--sub", SURGEON) == []
    page.close()


def test_masking_a_document_hides_it_from_authorised_professionals_only(browser, gateway):
    report = "Compte rendu d'hospitalisation - cardiologie"
    assert report in api_titles(gateway, DUBOIS, "--role", "doctor", "--sub", RADIOLOGIST)
    page = sign_in(browser, gateway, "claire.dubois", "demo-claire-dubois")
    page.get_by_role("link", name=report).click()
    page.get_by_role("button", name="Masquer aux professionnels de santé").click()
    expect(page.get_by_role("status")).to_contain_text("masqué aux professionnels")
    readers = page.locator("ul.readers").inner_text()
    assert "médecin traitant) : peut le voir" in readers and "autorisé·e) : ne peut pas le voir" in readers
    assert report not in api_titles(gateway, DUBOIS, "--role", "doctor", "--sub", RADIOLOGIST)
    assert report in api_titles(gateway, DUBOIS, "--role", "doctor", "--sub", GP)   # the attending physician
    page.get_by_role("button", name="Rendre visible aux professionnels de santé").click()
    expect(page.get_by_role("status")).to_contain_text("de nouveau visible")
    assert report in api_titles(gateway, DUBOIS, "--role", "doctor", "--sub", RADIOLOGIST)
    page.close()


def test_the_history_shows_who_accessed_the_record_and_why(browser, gateway):
    base, env = gateway
    requests.get(f"{base}/fhir/DocumentReference", params={"patient.identifier": f"urn:oid:1.2.250.1.213.1.4.10|{MARTIN}",
                                                           "status": "current"},
                 headers=token(env, "--role", "doctor", "--sub", "899900000012", "--name", "Dr Hélène BERNARD",
                               "--org", "750712184"))
    requests.get(f"{base}/fhir/DocumentReference", params={"patient.identifier": f"urn:oid:1.2.250.1.213.1.4.10|{MARTIN}",
                                                           "status": "current"},
                 headers=token(env, "--role", "doctor", "--sub", "899900000099", "--name", "Dr URGENTISTE",
                               "--purpose", "emergency", "--patient", MARTIN))
    page = sign_in(browser, gateway, "paul.martin", "demo-paul-martin")
    page.get_by_role("link", name="Historique des accès").click()
    rows = page.locator("table.history tbody tr").all_inner_texts()
    bernard = next(r for r in rows if "Dr Hélène BERNARD" in r)
    assert "Médecin" in bernard and "a recherché des documents" in bernard and "Soins" in bernard
    assert any("Dr URGENTISTE" in r and "bris de glace" in r for r in rows)
    screenshot(page, "6-history")
    page.get_by_role("link", name="Voir seulement les accès en urgence").click()
    expect(page.get_by_role("link", name="Voir tous les accès")).to_be_visible()
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
    page.get_by_role("button", name="Fermer mon dossier").click()
    expect(page.get_by_role("alert")).to_contain_text("Cochez")   # nothing without the confirmation
    page.get_by_label("Je confirme vouloir fermer mon dossier").check()
    page.get_by_role("button", name="Fermer mon dossier").click()
    expect(page.get_by_role("status")).to_contain_text("Votre dossier est fermé")
    assert api_titles(gateway, DUBOIS, "--role", "doctor", "--sub", GP) == []
    page.get_by_role("link", name="Mes documents").click()
    assert page.locator("ul.documents li").count() > 0   # the patient still reads it
    page.get_by_role("link", name="Mon dossier", exact=True).click()
    page.get_by_role("button", name="Rouvrir mon dossier").click()
    expect(page.get_by_role("status")).to_contain_text("rouvert")
    assert api_titles(gateway, DUBOIS, "--role", "doctor", "--sub", GP) != []
    page.close()


def test_a_representative_manages_a_minors_record(browser, gateway):
    page = sign_in(browser, gateway, "sophie.moreau", "demo-sophie-moreau")
    assert "représentant·e légal·e" in page.locator("header").inner_text()
    titles = page.locator("ul.documents a").all_inner_texts()
    assert "Échographie abdominale" in titles
    page.close()
