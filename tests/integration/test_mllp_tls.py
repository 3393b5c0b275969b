"""MLLP over TLS, and mutual TLS, as a hospital connects with `gateway send`: a certificate the
sender trusts, a client certificate from the CA the listener names, and refusals of the rest."""
import datetime
import ipaddress
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.hl7v2.sender import send_paths

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "hl7v2"
A01 = SAMPLES / "adt-a01-martin.hl7"


def issue(folder: Path, name: str, issuer=None, *, server: bool = False):
    """A key and certificate written as NAME.pem and NAME-key.pem: a CA when there is no issuer."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer_key, signer_name = (issuer[0], issuer[1].subject) if issuer else (key, subject)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(signer_name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True))
    if issuer:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
    cert = builder.sign(signer_key, hashes.SHA256())
    (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{name}-key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return key, cert


@pytest.fixture
def backend():
    """TLS is the transport's: one backend shows it."""
    return "sqlite"


def make_pki(folder: Path) -> Path:
    """A CA, the listener's certificate, a hospital's (a client's), and a stranger's from another CA."""
    folder.mkdir()
    ca = issue(folder, "ca")
    issue(folder, "listener", ca, server=True)
    issue(folder, "hospital", ca)
    issue(folder, "stranger", issue(folder, "other-ca"))
    return folder


@pytest.fixture
def pki(tmp_path):
    return make_pki(tmp_path / "pki")


@pytest.fixture(params=["tls", "mutual"])
def settings(settings, pki, request):
    """The listener's TLS settings (mllp_listener starts it with them); "mutual" asks senders for a
    certificate from the CA."""
    return replace(settings, mllp_tls_cert=pki / "listener.pem", mllp_tls_key=pki / "listener-key.pem",
                   mllp_tls_client_ca=pki / "ca.pem" if request.param == "mutual" else None)


def test_gateway_send_over_tls_and_mutual_tls(mllp_listener, pki, capsys):
    port, mutual = mllp_listener.mllp_port, mllp_listener.mllp_tls_client_ca is not None

    def send(**tls) -> tuple[int, str]:
        status = send_paths([A01], "127.0.0.1", port, timeout=10, **{k: str(v) for k, v in tls.items()})
        return status, " ".join(capsys.readouterr().out.split())

    hospital = {"tls_ca": pki / "ca.pem", "tls_cert": pki / "hospital.pem", "tls_key": pki / "hospital-key.pem"}
    status, said = send(**hospital)
    assert status == 0 and "AA: 1" in said, said
    status, said = send(tls_ca=pki / "ca.pem")   # no client certificate
    assert (status, "AA: 1" in said) == ((2, False) if mutual else (0, True)), said
    status, said = send(tls_ca=pki / "ca.pem", tls_cert=pki / "stranger.pem", tls_key=pki / "stranger-key.pem")
    assert (status, "AA: 1" in said) == ((2, False) if mutual else (0, True)), said
    status, said = send(tls_ca=pki / "other-ca.pem")   # a listener the sender does not trust
    assert status == 2 and "CERTIFICATE_VERIFY_FAILED" in said, said
    # --tls alone: TLS with the system's authorities, which did not sign this listener's certificate.
    status = send_paths([A01], "127.0.0.1", port, timeout=10, use_tls=True)
    said = " ".join(capsys.readouterr().out.split())
    assert status == 2 and "CERTIFICATE_VERIFY_FAILED" in said, said
    status, said = send()                                 # in clear text: no ACK comes back
    assert status != 0 and "AA" not in said, said
    status, said = send(tls_ca=pki / "ca.pem", tls_cert=pki / "missing.pem")
    assert (status, said) == (2, "TLS: No such file or directory")
    status, said = send(tls_ca=pki / "ca.pem", tls_key=pki / "hospital-key.pem")   # the key alone
    assert (status, said) == (2, "TLS: --tls-key is the key of --tls-cert, which is missing")
