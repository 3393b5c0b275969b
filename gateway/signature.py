"""IHE DSG detached signatures: an XML-DSig over a Manifest of the signed documents' digests.

The demo set-up creates a test CA and a signing certificate (never committed); production
reads its trust anchors from GATEWAY_TRUST_ANCHORS.
"""
from __future__ import annotations

import base64
import datetime
import hashlib
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from lxml import etree
from signxml import InvalidInput, InvalidSignature, XMLSigner, XMLVerifier, methods

DSIG = "http://www.w3.org/2000/09/xmldsig#"
SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"


class SignatureRefused(Exception):
    pass


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Gateway demo"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_test_pki(directory: Path) -> None:
    """A test CA (ca.pem) and a document-signing certificate issued by it (signer.pem, signer-key.pem)."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_cert = (x509.CertificateBuilder().subject_name(_name("Gateway demo test CA")).issuer_name(_name("Gateway demo test CA"))
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=3650))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
               .sign(ca_key, hashes.SHA256()))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (x509.CertificateBuilder().subject_name(_name("Gateway demo hospital signer")).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=825))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, True, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (directory / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (directory / "signer.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = directory / "signer-key.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)


def digest(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def sign_documents(documents: list[tuple[str, bytes]], key_pem: bytes, cert_pem: bytes) -> bytes:
    """A DSG detached signature over (document unique id URI, bytes) pairs."""
    manifest = etree.Element(f"{{{DSIG}}}Manifest", nsmap={"ds": DSIG}, Id="IHEManifest")
    for uri, data in documents:
        reference = etree.SubElement(manifest, f"{{{DSIG}}}Reference", URI=uri)
        etree.SubElement(reference, f"{{{DSIG}}}DigestMethod", Algorithm=SHA256)
        etree.SubElement(reference, f"{{{DSIG}}}DigestValue").text = digest(data)
    signer = XMLSigner(method=methods.enveloping, signature_algorithm="rsa-sha256", digest_algorithm="sha256")
    signed = signer.sign(manifest, key=key_pem, cert=cert_pem)
    return etree.tostring(signed, xml_declaration=True, encoding="UTF-8")


def verify_signature(data: bytes, trust_anchors: list[Path]) -> dict[str, str]:
    """Check the signature against the trust anchors; return the signed digests by document URI."""
    anchors = [p for p in trust_anchors if p.exists()]
    if not anchors:
        raise SignatureRefused("no trust anchor is configured (GATEWAY_TRUST_ANCHORS)")
    errors = []
    for anchor in anchors:
        try:
            result = XMLVerifier().verify(data, ca_pem_file=str(anchor))
            break
        except (InvalidSignature, InvalidInput) as exc:
            errors.append(str(exc))
        except etree.XMLSyntaxError as exc:
            raise SignatureRefused(f"the signature document is not XML: {exc.msg}") from None
    else:
        raise SignatureRefused(f"signature not valid against the trust anchors: {errors[-1]}")
    manifest = result.signed_xml
    if manifest is None or etree.QName(manifest).localname != "Manifest":
        manifest = None if manifest is None else manifest.find(f".//{{{DSIG}}}Manifest")
    if manifest is None:
        raise SignatureRefused("the signature does not sign an IHE DSG Manifest")
    digests = {}
    for reference in manifest.findall(f"{{{DSIG}}}Reference"):
        method = reference.find(f"{{{DSIG}}}DigestMethod")
        if method is None or method.get("Algorithm") != SHA256:
            raise SignatureRefused(f"reference {reference.get('URI')}: only SHA-256 digests are accepted")
        digests[reference.get("URI")] = (reference.findtext(f"{{{DSIG}}}DigestValue") or "").strip()
    return digests
