"""A web application calling the FHIR API from a real browser (Debian's Chromium, driven by
Playwright): the gateway started as `make run` starts it, with GATEWAY_CORS_ORIGINS naming the
application's origin. The page, served from that origin on loopback, searches a patient's
documents and masks one with its bearer token, as a browser-based FHIR client does: its
preflights, its reading of the answers (ETag, Location). A page of another origin is kept from
the API's answers by the browser itself. Without Chromium these tests are skipped, unless
GATEWAY_REQUIRE_BROWSER=1 (CI) makes that a failure."""
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

pytest.importorskip("playwright.sync_api")

from conftest import serving
from e2e_support import chromium, start_gateway, stop_gateway, token

MARTIN = "185067511204554"
VISIBILITY = "https://mos.esante.gouv.fr/NOS/TRE_A07-StatutVisibiliteDocument/FHIR/TRE-A07-StatutVisibiliteDocument"
# What the application runs: a search, then a PATCH of the first document found, each with the
# token; the outcome as the page could read it, or the browser's refusal.
SCRIPT = """async ([base, authorization, visibility]) => {
  const headers = {Authorization: authorization, Accept: "application/fhir+json"};
  try {
    const found = await fetch(base + "/fhir/DocumentReference?status=current&patient.identifier="
        + encodeURIComponent("urn:oid:1.2.250.1.213.1.4.10|185067511204554"), {headers});
    const bundle = await found.json();
    const id = bundle.entry[0].resource.id;
    const patched = await fetch(base + "/fhir/DocumentReference/" + id, {method: "PATCH", headers: {
        ...headers, "Content-Type": "application/json-patch+json", "Prefer": "return=minimal"},
      body: JSON.stringify([{op: "add", path: "/securityLabel/-",
                             value: {coding: [{system: visibility, code: "MASQUE_PS"}]}}])});
    return {total: bundle.total, status: patched.status, etag: patched.headers.get("ETag"), id};
  } catch (refused) {
    return {refused: String(refused)};
  }
}"""


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


class Page(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"<!doctype html><title>Application</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def origins():
    """Two web servers on loopback, each the origin of an application's page: served from a
    loopback address, as the gateway is, for Chromium's Local Network Access to let the page call
    it (a page Playwright answered for itself was refused the loopback address space)."""
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), Page)) as first, \
            serving(ThreadingHTTPServer(("127.0.0.1", 0), Page)) as second:
        yield [f"http://127.0.0.1:{server.server_address[1]}" for server in (first, second)]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, origins):
    process, base, env = start_gateway(tmp_path_factory.mktemp("cors") / "var",
                                       environment={"GATEWAY_CORS_ORIGINS": origins[0]})
    yield base, env
    stop_gateway(process)


def run_application(browser, origin: str, base: str, authorization: str) -> dict:
    page = browser.new_page()
    try:
        page.goto(f"{origin}/app.html")
        return page.evaluate(SCRIPT, [base, authorization, VISIBILITY])
    finally:
        page.close()


def test_a_web_application_of_the_configured_origin_searches_and_masks(browser, gateway, origins):
    base, env = gateway
    patient = token(env, "--role", "patient", "--patient", MARTIN)["Authorization"]
    done = run_application(browser, origins[0], base, patient)
    assert "refused" not in done, done
    assert done["total"] >= 1 and done["status"] == 200 and done["etag"] == 'W/"2"', done
    masked = requests.get(f"{base}/fhir/DocumentReference/{done['id']}", headers={"Authorization": patient},
                          timeout=30).json()
    assert any(c["code"] == "MASQUE_PS" for label in masked["securityLabel"] for c in label["coding"])


def test_a_page_of_another_origin_is_kept_from_the_api_by_the_browser(browser, gateway, origins):
    base, env = gateway
    patient = token(env, "--role", "patient", "--patient", MARTIN)["Authorization"]
    done = run_application(browser, origins[1], base, patient)
    assert done == {"refused": "TypeError: Failed to fetch"}, json.dumps(done)
