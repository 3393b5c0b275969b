"""Bearer tokens: JWTs checked against configured public keys, turned into an AccessContext.

Keys come from PEM files (the key id is the file name without `.pem`) or JWKS files (each key's
`kid`). A token must name a known key id; only that key's asymmetric algorithms are accepted, so
`alg: none` and HMAC signed with a public key (key confusion) are refused before any signature
check. Issuer, audience, expiry and not-before are checked with PyJWT.

Claims: `sub` (IdNatPs for professionals), `role`, `purpose` (care | emergency | regulation),
`org` (FINESS, or IdNatSt: one of a FINESS is that FINESS), `patient` (INS: the patient's own, a
minor's for a representative, the patient of an emergency access), `name` (shown in the audit
trail), `guardianship` (true: a representative who is a protected adult's guardian, not a parent).
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.mapping.identity import compact_ins

from .context import (
    CARE,
    EMERGENCY,
    OCCUPATIONAL,
    PATIENT,
    PROFESSIONS,
    PURPOSES,
    REGULATION,
    REGULATOR,
    REPRESENTATIVE,
    ROLES,
    AccessContext,
)
from .rules import structure

RSA_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]
EC_ALGORITHMS = {"secp256r1": ["ES256"], "secp384r1": ["ES384"], "secp521r1": ["ES512"]}
LEEWAY_SECONDS = 30


class InvalidToken(Exception):
    """No valid token (401)."""


@dataclass(frozen=True)
class VerificationKey:
    key: object
    algorithms: list[str]


def _algorithms(public_key) -> list[str]:
    if isinstance(public_key, rsa.RSAPublicKey):
        return RSA_ALGORITHMS
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return EC_ALGORITHMS.get(public_key.curve.name, [])
    return []


def load_keys(paths: list[Path]) -> dict[str, VerificationKey]:
    """Key id → public key. Files that do not exist are skipped (the demo key before `demo setup`)."""
    keys: dict[str, VerificationKey] = {}
    for path in paths:
        if not path.exists():
            continue
        data = path.read_bytes()
        if data.lstrip().startswith(b"{"):
            for jwk in jwt.PyJWKSet.from_json(data.decode()).keys:
                if jwk.key_id and not isinstance(jwk.key, bytes):
                    public = jwk.key.public_key() if hasattr(jwk.key, "private_bytes") else jwk.key
                    keys[jwk.key_id] = VerificationKey(public, _algorithms(public))
            continue
        public = serialization.load_pem_public_key(data)
        keys[path.name.removesuffix(".pem")] = VerificationKey(public, _algorithms(public))
    return keys


def verify(token: str, keys: dict[str, VerificationKey], issuer: str, audience: str) -> dict:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise InvalidToken(f"the token is not a JWT: {exc}") from None
    kid, alg = header.get("kid"), header.get("alg")
    if kid not in keys:
        raise InvalidToken(f"unknown key id {kid!r}")
    key = keys[kid]
    if alg not in key.algorithms:
        raise InvalidToken(f"algorithm {alg!r} is not accepted for key {kid!r}")
    try:
        return jwt.decode(token, key.key, algorithms=key.algorithms, audience=audience, issuer=issuer,
                          leeway=LEEWAY_SECONDS, options={"require": ["exp", "iss", "aud", "sub"]})
    except jwt.PyJWTError as exc:
        raise InvalidToken(f"the token is refused: {exc}") from None


class VerifiedTokens:
    """The claims of the tokens verified lately. A client sends its token with every request until
    it expires, and checking its signature each time was 5-9 % of a search's CPU
    (bench/MEASUREMENTS.md). A token is answered from here only inside the time it was valid for
    when it was checked (its `iat` and `nbf` to its `exp`, with the leeway); past its expiry it is
    refused as PyJWT refuses it. A refused token is not kept (lru_cache keeps no call that raised):
    its next use is checked again. The keys are read once, at start, so no entry outlives the key
    that verified it."""

    SIZE = 2048   # the least recently used token is dropped first: memory stays bounded whatever clients send

    def __init__(self, keys: dict[str, VerificationKey], issuer: str, audience: str):
        self.keys, self.issuer, self.audience = keys, issuer, audience
        self._checked = functools.lru_cache(maxsize=self.SIZE)(self._check)

    def _check(self, token: str) -> tuple[int, int, dict]:
        """The token's claims and the time they are valid for, as PyJWT reads them (jwt.api_jwt):
        integers, `iat` and `nbf` optional."""
        claims = verify(token, self.keys, self.issuer, self.audience)
        valid_from = max(int(claims.get("iat", 0)), int(claims.get("nbf", 0))) - LEEWAY_SECONDS
        return valid_from, int(claims["exp"]) + LEEWAY_SECONDS, claims

    def claims(self, token: str) -> dict:
        valid_from, valid_until, claims = self._checked(token)
        now = time.time()
        if now >= valid_until:
            raise InvalidToken("the token is refused: Signature has expired")
        if now < valid_from:   # a clock set back before the token's start: PyJWT decides
            return verify(token, self.keys, self.issuer, self.audience)
        return claims


def context_from_claims(claims: dict, address: str | None = None) -> AccessContext:
    """The requester a verified token describes; combinations the rules do not know are refused."""
    for name in ("sub", "role", "purpose", "org", "patient", "name"):
        if claims.get(name) is not None and not isinstance(claims[name], str):
            raise InvalidToken(f"the claim {name!r} is a string")
    if not claims.get("sub"):
        raise InvalidToken("the token names its subject (claim 'sub')")
    role = claims.get("role")
    purpose = claims.get("purpose") or CARE
    if role not in ROLES:
        raise InvalidToken(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    if purpose not in PURPOSES:
        raise InvalidToken(f"unknown purpose {purpose!r}; purposes: {', '.join(PURPOSES)}")
    patient = claims.get("patient")
    if role in (PATIENT, REPRESENTATIVE) and not patient:
        raise InvalidToken(f"a {role} token names the patient (claim 'patient': INS)")
    if purpose == EMERGENCY and role not in PROFESSIONS:
        raise InvalidToken(f"break-the-glass is for health professionals, not the role {role}")
    if (purpose == REGULATION) != (role == REGULATOR):
        raise InvalidToken("the regulation purpose belongs to the regulator role, and the regulator acts only for it")
    if purpose in (EMERGENCY, REGULATION) and not patient:
        raise InvalidToken(f"an access for {purpose} names its patient (claim 'patient': INS)")
    if role == OCCUPATIONAL and purpose != CARE:
        raise InvalidToken("an occupational doctor has no emergency access")
    guardianship = claims.get("guardianship", False)
    if not isinstance(guardianship, bool):
        raise InvalidToken("the claim 'guardianship' is a boolean")
    if guardianship and role != REPRESENTATIVE:
        raise InvalidToken(f"a guardian (claim 'guardianship') is a representative, not the role {role}")
    # An INS as the records hold it: an identity provider may print it in groups, as it is read out.
    return AccessContext(role=role, subject=claims["sub"], purpose=purpose,
                         organization=structure(claims["org"]) if claims.get("org") else None,
                         patient_ins=compact_ins(patient) if patient else None, name=claims.get("name"),
                         address=address, guardianship=guardianship)


def issue(private_key_pem: bytes, kid: str, issuer: str, audience: str, claims: dict, ttl: int) -> str:
    """A signed token (the development key of `gateway token issue`, and the tests)."""
    private_key = serialization.load_pem_private_key(private_key_pem, password=None)
    algorithm = _algorithms(private_key.public_key())[0]
    now = int(time.time())
    payload = {"iss": issuer, "aud": audience, "iat": now, "nbf": now, "exp": now + ttl,
               **{k: v for k, v in claims.items() if v is not None}}
    return jwt.encode(payload, private_key, algorithm=algorithm, headers={"kid": kid})


def make_signing_key(directory: Path, kid: str) -> Path:
    """An EC P-256 key pair: `<kid>-private.pem` (kept for signing) and `<kid>.pem` (to verify)."""
    directory.mkdir(parents=True, exist_ok=True)
    private_key = ec.generate_private_key(ec.SECP256R1())
    private_path = directory / f"{kid}-private.pem"
    private_path.write_bytes(private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    private_path.chmod(0o600)
    (directory / f"{kid}.pem").write_bytes(private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_path

