"""Patient-space accounts: password, then a one-time code, then a session.

A sign-in is two steps. The password opens a challenge whose six-digit code goes to the account's
contact through the configured sender; the code, entered within CODE_TTL, opens a session.
Every attempt is counted in the database before the secret is checked, per account and per
source address, in the transaction that decides whether it may be checked at all: MAX_FAILURES
attempts on an account, or MAX_ADDRESS_ATTEMPTS from one address, within LOCK_TIME lock it for
LOCK_TIME, however many arrive at once. A refusal says the same thing in the same time whatever the
reason: unknown login, wrong password, locked account. Codes and session ids are kept as SHA-256
digests only.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from werkzeug.security import check_password_hash, generate_password_hash

from gateway.access import AccessContext
from gateway.access.context import PATIENT, REPRESENTATIVE
from gateway.mapping.identity import compact_ins, ins_key_is_valid
from gateway.storage.database import read_connection, write_transaction
from gateway.storage.schema import account_records, login_challenges, patient_accounts, sign_in_attempts, web_sessions

MAX_FAILURES = 5
MAX_ADDRESS_ATTEMPTS = 30
LOCK_TIME = timedelta(minutes=15)
REFUSED = "Identifiant ou mot de passe incorrect, ou trop d'essais : vérifiez-les, ou réessayez dans 15 minutes."
CURRENT_PASSWORD_REFUSED = ("Mot de passe actuel incorrect, ou trop d'essais : vérifiez-le, ou réessayez dans "
                            "15 minutes.")
MIN_PASSWORD = 12
CODE_TTL = timedelta(minutes=10)
SESSION_IDLE = timedelta(minutes=30)
# werkzeug's scrypt at its own cost (N = 32768): a tenth of a second a hash, which is what makes a
# stolen table slow to guess. The test suite lowers N, as Django's docs advise for theirs: it
# signs in hundreds of times.
PASSWORD_HASH = "scrypt:32768:8:1"


def _hashed(password: str) -> str:
    return generate_password_hash(password, PASSWORD_HASH)


@functools.cache
def _unknown_hash(method: str) -> str:
    """Checked against when the login is unknown, so that both answers take the same time."""
    return generate_password_hash("an account that does not exist", method)


_unknown_hash(PASSWORD_HASH)   # made now, so that the first unknown login takes no longer than the next


class SignInRefused(Exception):
    """Wrong credentials, an expired code or a locked account: the message is for the user."""


@dataclass(frozen=True)
class Account:
    login: str
    role: str
    records: tuple[str, ...]     # INS of the records it manages: a patient's own, a representative's children
    display_name: str
    contact: str
    notify_new_documents: bool = True
    guardianships: tuple[str, ...] = ()   # those of its records a representative holds as an adult's guardian

    def access(self, record: str, address: str | None) -> AccessContext:
        """Who this account is to the repository, on one of its records: the patient, or the
        representative of a minor, or the guardian of a protected adult."""
        if record not in self.records:
            raise ValueError("this account does not manage that record")
        subject = record if self.role == PATIENT else f"representative:{self.login}"
        return AccessContext(role=self.role, subject=subject, patient_ins=record, name=self.display_name,
                             address=address, guardianship=record in self.guardianships)


@dataclass(frozen=True)
class SignedIn:
    """A live session: its account, and the record open in it (None until a representative of
    several children has chosen one)."""
    account: Account
    record: str | None
    record_name: str | None


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S")


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _account(conn, row) -> Account:
    records = conn.execute(select(account_records.c.patient_ins, account_records.c.guardianship).where(
        account_records.c.login == row.login).order_by(account_records.c.patient_ins)).all()
    return Account(row.login, row.role, tuple(ins for ins, _ in records), row.display_name, row.contact,
                   bool(row.notify_new_documents), tuple(ins for ins, guardian in records if guardian))


def create_account(engine: Engine, login: str, password: str, role: str, records: list[str], display_name: str,
                   contact: str, *, replace: bool = False, guardianships: list[str] = ()) -> Account:
    """Create an account managing these records: a patient's own one, or each child a legal
    representative acts for, or (`guardianships`) each protected adult whose guardian they are. An
    existing one is replaced only when asked (`replace`): its password, records, name and contact,
    and its sessions and pending codes end. Without that, a login typed again with another INS gave
    its holder that other record, and a password reset left a session signed in with the old one
    open."""
    if role not in (PATIENT, REPRESENTATIVE):
        raise ValueError("an account is a patient's or a legal representative's")
    if not login or len(login) > 128 or not login.isprintable() or any(c.isspace() for c in login):
        raise ValueError("a login is 1 to 128 characters, without spaces")
    guardianships = list(dict.fromkeys(compact_ins(ins) for ins in guardianships))
    if guardianships and role != REPRESENTATIVE:
        raise ValueError("a guardian of a protected adult is a representative")
    records = list(dict.fromkeys([compact_ins(ins) for ins in records] + guardianships))
    if not records or (role == PATIENT and len(records) != 1):
        raise ValueError("a patient's account manages their own record; a representative's, one record per child")
    wrong = [ins for ins in records if not ins_key_is_valid(ins)]
    if wrong:
        raise ValueError(f"not an INS (15 characters, its key 97 - the first 13 mod 97): {', '.join(wrong)}")
    if not display_name.strip() or len(display_name) > 256:
        raise ValueError("a name is 1 to 256 characters")
    local, at, domain = contact.partition("@")
    if not (local and at and "." in domain.strip(".") and "@" not in domain and len(contact) <= 256
            and contact.isprintable() and not any(c.isspace() for c in contact)):
        raise ValueError(f"the contact is the e-mail address one-time codes go to, not {contact!r}")
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"a password has at least {MIN_PASSWORD} characters")
    with write_transaction(engine) as conn:
        existing = conn.execute(select(patient_accounts).where(patient_accounts.c.login == login)).first()
        if existing is not None and not replace:
            raise ValueError(f"the account {login} exists (it manages INS {', '.join(_account(conn, existing).records)})"
                             ": replace it (its password, records, name and contact) with --reset")
        for table in (patient_accounts, account_records, web_sessions, login_challenges):
            conn.execute(delete(table).where(table.c.login == login))
        conn.execute(insert(patient_accounts).values(
            login=login, password_hash=_hashed(password), role=role, display_name=display_name,
            contact=contact, notify_new_documents=True))
        conn.execute(insert(account_records), [
            {"login": login, "patient_ins": ins, "guardianship": ins in guardianships} for ins in records])
    return Account(login, role, tuple(sorted(records)), display_name, contact,
                   guardianships=tuple(sorted(guardianships)))


def change_password(engine: Engine, login: str, current: str, new: str, session_id: str, address: str | None) -> None:
    """A signed-in account's new password, given its current one. That check is counted as a
    sign-in's password is: a session left open on a shared computer is no way to guess it. The
    account's other sessions end, and its pending codes: whoever signed in with the old password
    is signed out."""
    if len(new) < MIN_PASSWORD:
        raise ValueError(f"Le nouveau mot de passe doit compter au moins {MIN_PASSWORD} caractères.")
    allowed = _count_attempt(engine, login, address)
    with read_connection(engine) as conn:
        stored = conn.execute(select(patient_accounts.c.password_hash).where(patient_accounts.c.login == login)).scalar()
    if not (allowed and stored is not None and check_password_hash(stored, current)):
        raise SignInRefused(CURRENT_PASSWORD_REFUSED)
    with write_transaction(engine) as conn:
        conn.execute(update(patient_accounts).where(patient_accounts.c.login == login).values(
            password_hash=_hashed(new)))
        conn.execute(delete(web_sessions).where(web_sessions.c.login == login,
                                                web_sessions.c.id_sha256 != _digest(session_id)))
        conn.execute(delete(login_challenges).where(login_challenges.c.login == login))
        _succeeded(conn, login, address)


def representatives(engine: Engine, patient_ins: str) -> set[bool]:
    """Who manages this record as a legal representative: whether each is a protected adult's
    guardian (True) or a parent (False); empty when no one does."""
    with read_connection(engine) as conn:
        return set(conn.execute(select(account_records.c.guardianship).join(
            patient_accounts, account_records.c.login == patient_accounts.c.login).where(
            account_records.c.patient_ins == patient_ins, patient_accounts.c.role == REPRESENTATIVE)).scalars())


def record_accounts(conn, patient_ins: list[str]) -> list[tuple[Account, str]]:
    """(account, INS) of every account managing one of these records."""
    rows = conn.execute(select(patient_accounts, account_records.c.patient_ins.label("record")).join(
        account_records, account_records.c.login == patient_accounts.c.login).where(
        account_records.c.patient_ins.in_(patient_ins))).all()
    return [(_account(conn, row), row.record) for row in rows]


def set_notifications(engine: Engine, login: str, wanted: bool) -> None:
    with write_transaction(engine) as conn:
        conn.execute(update(patient_accounts).where(patient_accounts.c.login == login).values(
            notify_new_documents=wanted))


def _count_attempt(engine: Engine, login: str, address: str | None) -> bool:
    """Count this attempt against the account and the address; False when either is locked (then
    the secret is not even checked). A success resets the account's count (`_succeeded`)."""
    now = _now()
    keys = [(f"login:{login[:128]}", MAX_FAILURES)] + ([(f"address:{address[:64]}", MAX_ADDRESS_ATTEMPTS)] if address else [])
    allowed = True
    with write_transaction(engine) as conn:
        for key, limit in keys:
            conn.execute(_insert_if_missing(conn).values(key=key, window_start=_stamp(now), attempts=0))
            row = conn.execute(select(sign_in_attempts).where(sign_in_attempts.c.key == key).with_for_update()).one()
            if row.locked_until and row.locked_until > _stamp(now):
                allowed = False
                continue
            fresh = row.window_start < _stamp(now - LOCK_TIME) or row.locked_until is not None
            attempts = 1 if fresh else row.attempts + 1
            locked = _stamp(now + LOCK_TIME) if attempts > limit else None
            allowed = allowed and locked is None
            conn.execute(update(sign_in_attempts).where(sign_in_attempts.c.key == key).values(
                attempts=attempts, window_start=_stamp(now) if fresh else row.window_start, locked_until=locked))
    return allowed


def _insert_if_missing(conn):
    dialect = sqlite_insert if conn.engine.dialect.name == "sqlite" else postgresql_insert
    return dialect(sign_in_attempts).on_conflict_do_nothing(index_elements=["key"])


def _succeeded(conn, login: str, address: str | None) -> None:
    """A completed sign-in (password and code) clears the counts of its account and address."""
    keys = [f"login:{login[:128]}"] + ([f"address:{address[:64]}"] if address else [])
    conn.execute(delete(sign_in_attempts).where(sign_in_attempts.c.key.in_(keys)))


def check_password(engine: Engine, login: str, password: str, address: str | None = None) -> tuple[Account, str, str]:
    """(account, challenge id, one-time code) when the password is right; else SignInRefused."""
    allowed = _count_attempt(engine, login, address)
    with read_connection(engine) as conn:
        row = conn.execute(select(patient_accounts).where(patient_accounts.c.login == login)).first()
        account = _account(conn, row) if row is not None else None
    right = check_password_hash(row.password_hash if row is not None else _unknown_hash(PASSWORD_HASH), password)
    if not (allowed and account is not None and right):
        raise SignInRefused(REFUSED)
    challenge, code = secrets.token_urlsafe(24), f"{secrets.randbelow(1_000_000):06d}"
    with write_transaction(engine) as conn:
        conn.execute(delete(login_challenges).where(login_challenges.c.login == login))
        conn.execute(insert(login_challenges).values(id=challenge, login=login, code_sha256=_digest(code),
                                                     expires_at=_stamp(_now() + CODE_TTL), used=False))
    return account, challenge, code


def check_code(engine: Engine, challenge: str, code: str, address: str | None = None) -> tuple[Account, str]:
    """(account, new session id) when the code of this challenge is right; else SignInRefused.
    A session opens on the account's record when it manages only one."""
    with read_connection(engine) as conn:
        found = conn.execute(select(login_challenges, patient_accounts).join(
            patient_accounts, patient_accounts.c.login == login_challenges.c.login).where(
            login_challenges.c.id == challenge)).first()
        account = _account(conn, found) if found is not None else None
    if found is None or found.used or found.expires_at < _stamp(_now()):
        raise SignInRefused("Ce code a expiré : reconnectez-vous pour en recevoir un nouveau.")
    allowed = _count_attempt(engine, found.login, address)
    if not (allowed and hmac.compare_digest(found.code_sha256, _digest(code.strip()))):
        raise SignInRefused("Code incorrect, ou trop d'essais : reconnectez-vous dans 15 minutes.")
    session_id = secrets.token_urlsafe(32)
    with write_transaction(engine) as conn:
        conn.execute(update(login_challenges).where(login_challenges.c.id == challenge).values(used=True))
        _succeeded(conn, found.login, address)
        conn.execute(delete(web_sessions).where(web_sessions.c.expires_at < _stamp(_now())))
        conn.execute(insert(web_sessions).values(id_sha256=_digest(session_id), login=found.login,
                                                 expires_at=_stamp(_now() + SESSION_IDLE)))
    return account, session_id


def session_account(engine: Engine, session_id: str) -> SignedIn | None:
    """The account of a live session and its open record, whose idle timeout starts again; None
    once it has expired."""
    with write_transaction(engine) as conn:
        row = conn.execute(select(web_sessions.c.expires_at, web_sessions.c.patient_ins.label("record"),
                                  web_sessions.c.record_name, patient_accounts).join(
            patient_accounts, patient_accounts.c.login == web_sessions.c.login).where(
            web_sessions.c.id_sha256 == _digest(session_id))).first()
        if row is None or row.expires_at < _stamp(_now()):
            return None
        conn.execute(update(web_sessions).where(web_sessions.c.id_sha256 == _digest(session_id)).values(
            expires_at=_stamp(_now() + SESSION_IDLE)))
        account = _account(conn, row)
    record = row.record if row.record in account.records else None
    if record is None and len(account.records) == 1:
        record = account.records[0]
    return SignedIn(account, record, row.record_name if record == row.record else None)


def open_record(engine: Engine, session_id: str, record: str, record_name: str) -> None:
    """The record this session works on from now, and its holder's name for every page."""
    with write_transaction(engine) as conn:
        conn.execute(update(web_sessions).where(web_sessions.c.id_sha256 == _digest(session_id)).values(
            patient_ins=record, record_name=record_name[:256]))


def end_session(engine: Engine, session_id: str) -> None:
    with write_transaction(engine) as conn:
        conn.execute(delete(web_sessions).where(web_sessions.c.id_sha256 == _digest(session_id)))
