""""A document was added to your record", sent to the accounts that manage the record.

The repository queues one notification per document in the transaction that stores it (or that
reveals a document kept from the patient until it was announced). This sends them through the
configured sender, oldest first: `gateway notifications send`, which `gateway serve` runs beside
the HTTP server with --follow. Each is claimed before it is sent, so that two senders (two nodes)
never send the same one; one whose sender stopped midway is claimed again after CLAIM_TIME.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import Engine, delete, or_, select, update

from gateway.access.context import INS_SYSTEMS, PATIENT, REPRESENTATIVE
from gateway.config import Settings
from gateway.space.accounts import record_accounts
from gateway.space.senders import Mail, message_sender
from gateway.storage.database import read_connection, write_transaction
from gateway.storage.schema import notifications, resources, unique_identifiers

log = logging.getLogger(__name__)
CLAIM_TIME = timedelta(minutes=5)
BATCH = 100


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")


@dataclass(frozen=True)
class Notification:
    docref_id: str
    queued_at: str
    sent_at: str | None
    recipients: int | None


def _mails(conn, row, link: str) -> list[Mail] | None:
    """The messages of one queued notification; None when its document is no longer current or is
    hidden from the patient again (it is then queued afresh if it is revealed)."""
    document = conn.execute(select(resources.c.deleted, resources.c.hidden_from_patient,
                                   resources.c.hidden_from_representatives).where(
        resources.c.res_type == "DocumentReference", resources.c.res_id == row.docref_id)).first()
    if document is None or document.deleted or document.hidden_from_patient:
        return None
    ins = conn.execute(select(unique_identifiers.c.value).where(
        unique_identifiers.c.res_type == "Patient", unique_identifiers.c.res_id == row.patient_id,
        unique_identifiers.c.system.in_(INS_SYSTEMS))).scalars().all()
    mails = []
    for account, _ in record_accounts(conn, list(ins)):
        if not account.notify_new_documents:
            continue
        if account.role == REPRESENTATIVE and document.hidden_from_representatives:
            continue
        mails.append(new_document_mail(account.contact, account.role == PATIENT, link))
    return mails


def new_document_mail(contact: str, own_record: bool, link: str) -> Mail:
    """Nothing medical, and no name: neither the document's type, title, author nor place."""
    whose = "à votre dossier médical partagé" if own_record else \
        "au dossier médical partagé d'un enfant dont vous êtes le représentant légal"
    return Mail(contact, "Un nouveau document dans votre dossier médical partagé",
                f"Un professionnel de santé a ajouté un document {whose}.\n"
                f"Pour le consulter, connectez-vous à votre espace : {link}\n\n"
                "Vous recevez ce message parce que les notifications de nouveaux documents sont activées. "
                "Vous pouvez les désactiver dans votre espace, page « Mon dossier ».")


def send_pending(settings: Settings, engine: Engine) -> int:
    """Send what is queued (a batch); the number of notifications handled."""
    send = message_sender(settings.message_sender)
    link = settings.public_base_url.rstrip("/") + "/documents"
    now = datetime.now(timezone.utc)
    claimable = (notifications.c.sent_at.is_(None),
                 or_(notifications.c.claimed_until.is_(None), notifications.c.claimed_until < _stamp(now)))
    with read_connection(engine) as conn:
        pending = conn.execute(select(notifications).where(*claimable).order_by(notifications.c.id)
                               .limit(BATCH)).all()
    handled = 0
    for row in pending:
        with write_transaction(engine) as conn:
            claimed = conn.execute(update(notifications).where(notifications.c.id == row.id, *claimable).values(
                claimed_until=_stamp(now + CLAIM_TIME))).rowcount
            mails = _mails(conn, row, link) if claimed else None
            if claimed and mails is None:
                conn.execute(delete(notifications).where(notifications.c.id == row.id))
        if not claimed or mails is None:
            continue
        for mail in mails:
            send(settings, mail)
        with write_transaction(engine) as conn:
            conn.execute(update(notifications).where(notifications.c.id == row.id).values(
                sent_at=_stamp(datetime.now(timezone.utc)), recipients=len(mails)))
        handled += 1
    if handled:
        log.info("notifications sent", extra={"count": handled})
    return handled


def follow(settings: Settings, engine: Engine, interval: float, stop: threading.Event) -> None:
    """Send what is queued every `interval` seconds until `stop` is set; a failed round (the mail
    server is down) is logged and tried again at the next one."""
    while not stop.is_set():
        try:
            while send_pending(settings, engine) == BATCH:
                pass
        except Exception:
            log.exception("sending notifications failed; trying again")
        stop.wait(interval)


def queued(engine: Engine, limit: int = 50) -> list[Notification]:
    with read_connection(engine) as conn:
        rows = conn.execute(select(notifications).order_by(notifications.c.id.desc()).limit(limit)).all()
    return [Notification(r.docref_id, r.queued_at, r.sent_at, r.recipients) for r in rows]
