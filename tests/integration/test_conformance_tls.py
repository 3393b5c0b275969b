"""The kit against a gateway behind TLS, as a deployed one is: HTTPS and MLLP over TLS, each asking
for the kit's certificate (mutual TLS). The kit spoke plain MLLP only and gave requests neither an
authority nor a certificate: no HL7v2 case could run against a listener over TLS, and an HTTPS
gateway with a private authority could not be tested at all."""
import json
import ssl
from dataclasses import replace

import pytest
from werkzeug.serving import make_server

from conformance.cli import main
from conftest import free_port, make_token, serving
from gateway.app import create_app
from test_mllp_tls import make_pki

CASES = ["hl7v2-transport/001-adt-acknowledged", "hl7v2-transport/003-frame-in-pieces",
         "hl7v2-transport/011-http-transport", "mhd/001-iti65-provide"]


@pytest.fixture
def backend():
    """TLS is the transport's: one backend shows it."""
    return "sqlite"


@pytest.fixture
def tls_pki(tmp_path):
    """The gateway's certificate is the listener's, the kit's the hospital's."""
    return make_pki(tmp_path / "tls_pki")


@pytest.fixture
def settings(settings, tls_pki):
    """The MLLP listener (mllp_listener starts it with these) over TLS, asking for a certificate."""
    return replace(settings, mllp_tls_cert=tls_pki / "listener.pem", mllp_tls_key=tls_pki / "listener-key.pem",
                   mllp_tls_client_ca=tls_pki / "ca.pem")


@pytest.fixture
def https_server(settings, database, tls_pki):
    """The app served over HTTPS on loopback, asking for a client certificate from the CA."""
    port = free_port()
    live = replace(settings, host="127.0.0.1", http_port=port, public_base_url=f"https://127.0.0.1:{port}")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tls_pki / "ca.pem"))
    tls.load_cert_chain(tls_pki / "listener.pem", tls_pki / "listener-key.pem")
    tls.verify_mode = ssl.CERT_REQUIRED
    with serving(make_server("127.0.0.1", port, create_app(live, database[0]), threaded=True, ssl_context=tls)):
        yield live


def test_the_kit_runs_over_https_and_mllp_over_tls_with_its_certificate(https_server, mllp_listener, tls_pki, token_key,
                                                                        tmp_path, capsys):
    token = make_token(token_key, sub="conformance-kit", role="system")

    def run(*tls: str) -> int:
        return main(["run", "--fhir-base", f"{https_server.public_base_url}/fhir", "--token", token,
                     "--mllp", f"127.0.0.1:{mllp_listener.mllp_port}", *tls, *(a for c in CASES for a in ("--case", c)),
                     "--json", str(tmp_path / "results.json")])

    kit = ["--tls-cert", str(tls_pki / "hospital.pem"), "--tls-key", str(tls_pki / "hospital-key.pem")]
    status = run("--mllp-tls", "--tls-ca", str(tls_pki / "ca.pem"), *kit)
    assert status == 0, (tmp_path / "results.json").read_text()[:3000]
    results = json.loads((tmp_path / "results.json").read_text())
    assert sorted(r["id"] for r in results["cases"] if r["status"] == "passed") == sorted(CASES), results

    # The gateway's certificate checked: by the system's authorities, it is not trusted.
    assert run("--mllp-tls", *kit) == 2
    told = capsys.readouterr().err
    assert "cannot reach the FHIR server" in told and "CERTIFICATE_VERIFY_FAILED" in told
    assert f"cannot reach the MLLP listener at 127.0.0.1:{mllp_listener.mllp_port} over TLS" in told
    # Files that are no certificate, or a key without its certificate, are told before any case.
    assert run("--mllp-tls", "--tls-ca", str(tls_pki / "hospital-key.pem")) == 2
    assert "error: TLS: " in capsys.readouterr().err
    assert run("--tls-key", str(tls_pki / "hospital-key.pem")) == 2
    assert "error: --tls-key is the key of --tls-cert, which is missing" in capsys.readouterr().err
