""""A document was added to your record", sent to the accounts that manage the record.

The repository queues one notification per document in the transaction that stores it (or that
reveals a document kept from the patient until it was announced). This sends them through the
configured sender, oldest first: `gateway notifications send`, which `gateway serve` runs beside
the HTTP server with --follow. Each is claimed before it is sent, so that two senders (two nodes)
never send the same one; one whose sender stopped midway is claimed again after CLAIM_TIME, one
the sender could not take at the next round. A recipient the mail server refuses for good is
counted, not tried again.
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
from gateway.space.senders import Mail, RecipientRefused, message_sender
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
    refused: int | None


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


class SenderUnavailable(Exception):
    """The sender took no message (the mail server down, refusing the gateway, its certificate not
    trusted): what is queued waits for the next round."""

    def __init__(self, failure: Exception):
        super().__init__(type(failure).__name__)   # only the kind: a mail server's reply may name the address


def send_pending(settings: Settings, engine: Engine) -> int:
    """Send what is queued (a batch); the number of notifications handled. Raises SenderUnavailable,
    once the notifications handled before are recorded, when the sender fails: the one it was at is
    released for the next round."""
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
        refused = 0
        for mail in mails:
            try:
                send(settings, mail)
            except RecipientRefused as refusal:
                # Sent again, it would be refused again, every round, for good.
                refused += 1
                log.warning("a notification's recipient was refused by the mail server",
                            extra={"docref_id": row.docref_id, "code": refusal.code})
            except Exception as failure:
                # Those of its mails already sent are sent again with it: at least once.
                with write_transaction(engine) as conn:
                    conn.execute(update(notifications).where(notifications.c.id == row.id).values(claimed_until=None))
                raise SenderUnavailable(failure) from None
        with write_transaction(engine) as conn:
            conn.execute(update(notifications).where(notifications.c.id == row.id).values(
                sent_at=_stamp(datetime.now(timezone.utc)), recipients=len(mails) - refused, refused=refused))
        handled += 1
    if handled:
        log.info("notifications sent", extra={"count": handled})
    return handled


def follow(settings: Settings, engine: Engine, interval: float, stop: threading.Event) -> None:
    """Send what is queued every `interval` seconds until `stop` is set. A sender that fails is
    said once, in a line, and once more when it takes messages again: it was a traceback every
    round, the recipient's address in it."""
    unavailable_since = None
    while not stop.is_set():
        try:
            while send_pending(settings, engine) == BATCH:
                pass
            if unavailable_since is not None:
                log.info("notifications: the sender takes messages again", extra={"since": unavailable_since})
                unavailable_since = None
        except SenderUnavailable as failure:
            if unavailable_since is None:
                unavailable_since = _stamp(datetime.now(timezone.utc))
                log.warning("notifications wait: the sender took none; trying again every round",
                            extra={"error": str(failure)})
        except Exception:
            log.exception("sending notifications failed; trying again")
        stop.wait(interval)


def queued(engine: Engine, limit: int = 50) -> list[Notification]:
    with read_connection(engine) as conn:
        rows = conn.execute(select(notifications).order_by(notifications.c.id.desc()).limit(limit)).all()
    return [Notification(r.docref_id, r.queued_at, r.sent_at, r.recipients, r.refused) for r in rows]
