"""Bearer tokens: what is accepted, and every way a token is refused."""
import base64
import json
import os
import subprocess
import sys
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.access.tokens import InvalidToken, context_from_claims, issue, load_keys, make_signing_key, verify

ISSUER, AUDIENCE = "urn:test:issuer", "urn:test:gateway"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    directory = tmp_path_factory.mktemp("keys")
    private = make_signing_key(directory, "gw-key")
    return directory, private, load_keys([directory / "gw-key.pem"])


def token(private, ttl=600, kid="gw-key", **overrides):
    claims = {"sub": "899900000012", "role": "doctor"}
    return issue(private.read_bytes(), kid, overrides.pop("iss", ISSUER), overrides.pop("aud", AUDIENCE),
                 {**claims, **overrides}, ttl)


def refused(text, keys_) -> str:
    with pytest.raises(InvalidToken) as caught:
        verify(text, keys_, ISSUER, AUDIENCE)
    return str(caught.value)


def unsigned(header: dict, claims: dict) -> str:
    def part(data):
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    return f"{part(header)}.{part(claims)}."


def test_a_valid_token_gives_its_claims(keys):
    _, private, known = keys
    claims = verify(token(private), known, ISSUER, AUDIENCE)
    context = context_from_claims(claims, "127.0.0.1")
    assert (context.role, context.subject, context.purpose, context.address) == ("doctor", "899900000012", "care",
                                                                                 "127.0.0.1")


def test_expired_and_not_yet_valid(keys):
    _, private, known = keys
    assert "expired" in refused(token(private, ttl=-120), known)
    now = int(time.time())
    future = jwt.encode({"sub": "x", "role": "doctor", "iss": ISSUER, "aud": AUDIENCE, "nbf": now + 3600,
                         "exp": now + 7200}, serialization.load_pem_private_key(private.read_bytes(), None),
                        algorithm="ES256", headers={"kid": "gw-key"})
    assert "not yet valid" in refused(future, known)


def test_wrong_audience_and_wrong_issuer(keys):
    _, private, known = keys
    assert "Audience doesn't match" in refused(token(private, aud="urn:other"), known)
    assert "Invalid issuer" in refused(token(private, iss="urn:someone-else"), known)


def test_a_signature_by_another_key_is_refused(keys, tmp_path):
    _, _, known = keys
    other = make_signing_key(tmp_path, "gw-key")  # same key id, different key
    assert "Signature verification failed" in refused(token(other), known)
    text = token(keys[1])
    tampered = text[:-4] + ("AAAA" if not text.endswith("AAAA") else "BBBB")
    refused(tampered, known)


def test_alg_none_is_refused(keys):
    _, _, known = keys
    now = int(time.time())
    claims = {"sub": "x", "role": "doctor", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 600}
    assert "algorithm 'none'" in refused(unsigned({"alg": "none", "kid": "gw-key", "typ": "JWT"}, claims), known)


def test_hmac_signed_with_the_public_key_is_refused(keys):
    """Key confusion: the verifier's own public key used as an HMAC secret."""
    directory, _, known = keys
    public_pem = (directory / "gw-key.pem").read_bytes()
    now = int(time.time())
    import hashlib
    import hmac
    header = {"alg": "HS256", "kid": "gw-key", "typ": "JWT"}
    claims = {"sub": "x", "role": "doctor", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 600}
    body = unsigned(header, claims)[:-1]
    signature = base64.urlsafe_b64encode(hmac.new(public_pem, body.encode(), hashlib.sha256).digest()).rstrip(b"=")
    assert "algorithm 'HS256'" in refused(f"{body}.{signature.decode()}", known)


def test_unknown_or_missing_key_id(keys):
    _, private, known = keys
    assert "unknown key id 'elsewhere'" in refused(token(private, kid="elsewhere"), known)
    assert "not a JWT" in refused("not-a-token", known)


def test_jwks_files_and_rsa_keys(tmp_path):
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    (tmp_path / "keys.json").write_text(json.dumps({"keys": [{**jwk, "kid": "rsa-1", "use": "sig"}]}))
    known = load_keys([tmp_path / "keys.json", tmp_path / "absent.pem"])
    assert list(known) == ["rsa-1"]
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    text = issue(pem, "rsa-1", ISSUER, AUDIENCE, {"sub": "s", "role": "patient", "patient": "185067511204554"}, 60)
    assert verify(text, known, ISSUER, AUDIENCE)["patient"] == "185067511204554"
    ec_text = jwt.encode({"sub": "s", "role": "doctor", "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 60},
                         ec.generate_private_key(ec.SECP256R1()), algorithm="ES256", headers={"kid": "rsa-1"})
    assert "algorithm 'ES256' is not accepted" in refused(ec_text, known)


@pytest.mark.parametrize("claims, message", [
    ({"role": "surgeon"}, "unknown role"),
    ({"role": "doctor", "purpose": "curiosity"}, "unknown purpose"),
    ({"role": "patient"}, "names the patient"),
    ({"role": "insurer", "purpose": "emergency", "patient": "185067511204554"}, "break-the-glass is for"),
    ({"role": "doctor", "purpose": "regulation", "patient": "185067511204554"}, "regulation purpose"),
    ({"role": "regulator"}, "regulation purpose"),
    ({"role": "doctor", "purpose": "emergency"}, "names its patient"),
])
def test_claims_the_rules_do_not_know_are_refused(claims, message):
    with pytest.raises(InvalidToken, match=message):
        context_from_claims({"sub": "x", **claims})


@pytest.mark.parametrize("org, structure", [
    ("750712184", "750712184"),            # a FINESS
    ("1750712184", "750712184"),           # its IdNatSt (1 + FINESS): that FINESS
    ("12A0000001", "2A0000001"),           # in Corsica
    ("312345678901234", "312345678901234"),   # a cabinet's IdNatSt (3 + SIRET), as given
    ("17507121840", "17507121840"),        # not an IdNatSt of a FINESS
])
def test_the_structure_a_professional_acts_for_is_named_as_the_rules_name_it(org, structure):
    """A token's org given as the IdNatSt of a FINESS missed every decision about that FINESS."""
    claims = {"sub": "899900000012", "role": "doctor", "org": org}
    assert context_from_claims(claims).organization == structure


def test_gateway_token_issue_signs_with_the_development_key_without_loading_the_database_layer(tmp_path):
    """A conformance run calls `gateway token issue` for each identity it needs (75 of them): with
    SQLAlchemy imported, each took 0.9 s instead of 0.3."""
    from gateway.config import DEMO_TOKEN_KID

    make_signing_key(tmp_path / "demo", DEMO_TOKEN_KID)
    script = ("import sys; from gateway.cli import main; code = main(['token', 'issue', '--role', 'doctor', "
              "'--sub', '899900000012']); print(sorted(m for m in sys.modules if m.split('.')[0] == 'sqlalchemy'))")
    done = subprocess.run([sys.executable, "-c", script], env=dict(os.environ, GATEWAY_VAR_DIR=str(tmp_path)),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    *_, issued, loaded = done.stdout.splitlines()
    assert loaded == "[]"
    public = (tmp_path / "demo" / f"{DEMO_TOKEN_KID}.pem").read_bytes()
    assert jwt.decode(issued, public, algorithms=["ES256"], options={"verify_aud": False})["role"] == "doctor"


class Clock:
    """`time` as gateway.access.tokens reads it, set by the test."""

    def __init__(self, now: float):
        self.now = now

    def time(self) -> float:
        return self.now


@pytest.fixture
def counted_verify(monkeypatch):
    """gateway.access.tokens.verify, counting the signature checks VerifiedTokens makes."""
    from gateway.access import tokens
    calls = []

    def counting(*args):
        calls.append(args[0])
        return verify(*args)

    monkeypatch.setattr(tokens, "verify", counting)
    return calls


def test_a_token_used_again_is_not_checked_again(keys, counted_verify):
    from gateway.access.tokens import VerifiedTokens
    _, private, keys_ = keys
    tokens = VerifiedTokens(keys_, ISSUER, AUDIENCE)
    text = token(private, name="Dr A")
    assert tokens.claims(text)["name"] == tokens.claims(text)["name"] == "Dr A"
    assert counted_verify == [text]


def test_a_kept_token_is_refused_from_its_expiry_as_pyjwt_refuses_it(keys, monkeypatch):
    from gateway.access import tokens as module
    _, private, keys_ = keys
    tokens = module.VerifiedTokens(keys_, ISSUER, AUDIENCE)
    text = token(private, ttl=600)
    expiry = tokens.claims(text)["exp"]
    clock = Clock(expiry + module.LEEWAY_SECONDS - 1)
    monkeypatch.setattr(module, "time", clock)
    assert tokens.claims(text)["exp"] == expiry
    clock.now = expiry + module.LEEWAY_SECONDS
    with pytest.raises(InvalidToken, match="the token is refused: Signature has expired"):
        tokens.claims(text)
    clock.now = expiry   # a clock set back inside the time it was valid for: answered again
    assert tokens.claims(text)["exp"] == expiry


def test_a_kept_token_before_its_start_is_checked_again(keys, monkeypatch, counted_verify):
    from gateway.access import tokens as module
    _, private, keys_ = keys
    tokens = module.VerifiedTokens(keys_, ISSUER, AUDIENCE)
    text = token(private)
    issued = tokens.claims(text)["iat"]
    # A clock set back past the token's start: PyJWT decides, as it would without the cache.
    monkeypatch.setattr(module, "time", Clock(issued - module.LEEWAY_SECONDS - 1))
    tokens.claims(text)
    assert counted_verify == [text, text]


def test_a_refused_token_is_not_kept(keys, counted_verify):
    from gateway.access.tokens import VerifiedTokens
    _, private, keys_ = keys
    tokens = VerifiedTokens(keys_, ISSUER, AUDIENCE)
    text = token(private, aud="urn:test:elsewhere")
    for _ in range(2):
        with pytest.raises(InvalidToken, match="Audience doesn.t match"):
            tokens.claims(text)
    assert counted_verify == [text, text]


def test_the_tokens_kept_are_bounded(keys, counted_verify):
    from gateway.access.tokens import VerifiedTokens
    _, private, keys_ = keys

    class TwoTokens(VerifiedTokens):
        SIZE = 2

    tokens = TwoTokens(keys_, ISSUER, AUDIENCE)
    first, second, third = (token(private, name=f"Dr {n}") for n in "ABC")
    for text in (first, second, first, third):
        tokens.claims(text)
    tokens.claims(first)    # used most recently before the third came: kept
    tokens.claims(second)   # the least recently used: dropped, checked again
    assert counted_verify == [first, second, third, second]
