"""`gateway token issue` (a development token for any role) and `gateway audit verify`."""
from __future__ import annotations

import sys

from gateway.access.context import PATIENT, REPRESENTATIVE
from gateway.access.tokens import InvalidToken, context_from_claims, issue
from gateway.config import DEMO_TOKEN_KID, Settings


def issue_token(settings: Settings, args) -> int:
    key_path = settings.demo_token_key
    if not key_path.exists():
        print(f"no development key at {key_path}: run `gateway demo setup` (make run does)", file=sys.stderr)
        return 2
    subject = args.sub or (args.patient if args.role in (PATIENT, REPRESENTATIVE) and args.patient else
                           f"demo-{args.role}")
    purpose = args.purpose or ("regulation" if args.role == "regulator" else None)
    claims = {"sub": subject, "role": args.role, "purpose": purpose, "org": args.org, "patient": args.patient,
              "name": args.name, **({"guardianship": True} if args.guardianship else {})}
    try:
        context_from_claims(claims)
    except InvalidToken as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    token = issue(key_path.read_bytes(), DEMO_TOKEN_KID, settings.jwt_issuer, settings.jwt_audience, claims, args.ttl)
    described = ", ".join(f"{k}={v}" for k, v in claims.items() if v)
    print(f"development token ({described}; valid {args.ttl} s), signed with {key_path}")
    if not settings.uses_demo_token_key:
        print("note: this gateway's GATEWAY_JWT_KEYS does not include the development key; it will refuse this token")
    print(token)
    return 0


def verify_audit(settings: Settings, _args) -> int:
    # Imported here: `gateway token issue`, which a conformance run calls for each identity it
    # needs, starts without SQLAlchemy.
    from gateway.access.audit import verify_chain
    from gateway.storage.database import make_engine

    report = verify_chain(make_engine(settings.database_url))
    if report.reason is None:
        print(f"audit trail intact: {report.entries} entries")
        return 0
    where = f"at entry {report.broken_at} " if report.broken_at is not None else ""
    print(f"audit trail BROKEN {where}(AuditEvent/{report.event_id}): {report.reason}")
    return 1
