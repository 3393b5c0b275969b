""""A document was added to your record", and "your record was accessed in an emergency", sent to
the accounts that manage the record.

The repository queues one notification per document in the transaction that stores it (or that
reveals a document kept from the patient until it was announced), and one with the first emergency
access to a record in an hour (R1111-48: the patient is told of it after the fact). This sends
them through the configured sender, the records whose notifications are oldest first, each
record's as one mail to each account (and one of an emergency access, to each account and to the
attending physician's MSSanté address, R1111-48 naming them both): `gateway notifications
send`, which `gateway serve` runs beside the HTTP server with --follow. They are claimed before
they are sent, so that two senders (two nodes) never send the same one; those whose sender stopped
midway are claimed again after CLAIM_TIME, those the sender could not take at the next round. A
recipient the mail server refuses for good is counted, not tried again.
"""
from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import Engine, delete, func, or_, select, text, update

from gateway.access.audit import PURPOSES
from gateway.access.context import (INS_SYSTEMS, PARIS, PATIENT, PATIENT_STATE, REGULATION, REPRESENTATIVE,
                                    ClosedToHolder)
from gateway.access.rules import IDNATPS_SYSTEM
from gateway.config import Settings
from gateway.services import directory
from gateway.space.accounts import record_accounts
from gateway.space.senders import Mail, RecipientRefused, message_sender
from gateway.storage.database import failure_reason, read_connection, unavailable, write_transaction
from gateway.storage.schema import (
    EMERGENCY_ACCESS, NEW_DOCUMENT, access_rules, notifications, resources, unique_identifiers)

log = logging.getLogger(__name__)
CLAIM_TIME = timedelta(minutes=5)
BATCH = 100          # records a round handles
PER_MAIL = 1000      # of a record's notifications, claimed together: one mail per account


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")


@dataclass(frozen=True)
class Notification:
    about_id: str   # the document added, or the emergency access (its AuditEvent)
    kind: str
    queued_at: str
    sent_at: str | None
    recipients: int | None
    refused: int | None


def _mails(conn, patient_id: str, claimed: list, base_url: str) -> tuple[list[Mail], set[int]]:
    """The messages of a record's claimed notifications: to each account that wants them, one saying
    how many of the documents it may see were added; to each account, one saying the record was
    accessed in an emergency, if it was. And the notifications whose document is no longer current
    or is hidden from the patient again (dropped: queued afresh if it is revealed)."""
    added = [c for c in claimed if c.kind == NEW_DOCUMENT]
    emergency = any(c.kind == EMERGENCY_ACCESS for c in claimed)
    documents = {row.res_id: row for row in conn.execute(select(
        resources.c.res_id, resources.c.deleted, resources.c.hidden_from_patient,
        resources.c.hidden_from_representatives).where(
        resources.c.res_type == "DocumentReference", resources.c.res_id.in_([c.about_id for c in added])))}
    gone = {c.id for c in added if c.about_id not in documents or documents[c.about_id].deleted
            or documents[c.about_id].hidden_from_patient}
    shown = [documents[c.about_id] for c in added if c.id not in gone]
    ins = conn.execute(select(unique_identifiers.c.value).where(
        unique_identifiers.c.res_type == "Patient", unique_identifiers.c.res_id == patient_id,
        unique_identifiers.c.system.in_(INS_SYSTEMS))).scalars().all()
    born, died = conn.execute(text(PATIENT_STATE), {"patient_id": patient_id}).one()
    told = [mail for c in claimed if c.kind == EMERGENCY_ACCESS
            for mail in _attending_physician_mails(conn, patient_id, c.about_id, ins)]
    mails = []
    for account, record in record_accounts(conn, list(ins)):
        # The accounts the record is closed to (access.context.ClosedToHolder) are told nothing of it:
        # a mail to a patient who died is read by whoever reads their mailbox.
        if ClosedToHolder.of(account.role, patient_id, born, bool(died), record in account.guardianships):
            continue
        if emergency:
            # Whatever the account chose of new documents: the patient is to be told of it.
            mails.append(emergency_access_mail(account.contact, account.role == PATIENT, base_url + "/historique",
                                               attending_told=bool(told)))
        if not account.notify_new_documents:
            continue
        count = sum(1 for d in shown if account.role != REPRESENTATIVE or not d.hidden_from_representatives)
        if count:
            mails.append(new_documents_mail(account.contact, account.role == PATIENT, base_url + "/documents", count))
    return mails + told, gone


def _attending_physician_mails(conn, patient_id: str, event_id: str, ins: list[str]) -> list[Mail]:
    """To each attending physician of the record, at their MSSanté addresses, the emergency access
    an AuditEvent records; none to the one who made it. The directory may know no address: the
    operator is told how many went untold, not who."""
    event = _body(conn, "AuditEvent", event_id)
    patient = _body(conn, "Patient", patient_id)
    if not event or not patient:   # the record destroyed since: no one left to tell of it
        return []
    # The professional the emergency access was granted to (BALP AuthZconsent's requestor), by their
    # IdNatPs; the name their token gave, else the directory's.
    reader = next((a for a in event.get("agent", []) if a.get("requestor")), {})
    number = reader.get("who", {}).get("identifier", {}).get("value")
    physicians = conn.execute(select(access_rules.c.actor_value).where(
        access_rules.c.patient_id == patient_id, access_rules.c.kind == "attending-physician",
        access_rules.c.effect == "permit", access_rules.c.actor_system == IDNATPS_SYSTEM,
        access_rules.c.actor_value != (number or ""))).scalars().all()
    if not physicians:
        return []
    name = reader.get("name") if reader.get("name") != number else None
    name = name or (directory.person_name(directory.practitioner(conn, number)) if number else None)
    when = datetime.fromisoformat(event["recorded"])
    regulation = any(c.get("code") == PURPOSES[REGULATION][0]
                     for p in event.get("purposeOfEvent", []) for c in p.get("coding", []))
    mails, untold = [], 0
    for idnatps in sorted(set(physicians)):
        addresses = directory.mssante_addresses(conn, idnatps)
        untold += not addresses
        mails += [attending_physician_mail(address, patient, ins, when, name, number, regulation)
                  for address in addresses]
    if untold:
        log.warning("an emergency access could not be told to the attending physician: the directory gives "
                    "them no MSSanté address", extra={"physicians": untold})
    return mails


def _body(conn, res_type: str, res_id: str) -> dict | None:
    body = conn.execute(select(resources.c.body).where(
        resources.c.res_type == res_type, resources.c.res_id == res_id, resources.c.deleted.is_(False))).scalar()
    return json.loads(body) if body else None


def attending_physician_mail(address: str, patient: dict, ins: list[str], when: datetime, reader_name: str | None,
                             reader_number: str | None, regulation: bool = False) -> Mail:
    """Between professionals, over MSSanté, which carries health data: the patient named, so that the
    physician knows whose record; the reader as the audit trail names them, or the directory."""
    born = patient.get("birthDate", "")
    born = f", né·e le {'/'.join(reversed(born.split('-')))}" if len(born) == 10 else ""
    who = reader_name or "un professionnel de santé"
    if reader_number:
        rpps = directory.rpps_number(reader_number)
        who += f" (RPPS {rpps})" if rpps else f" ({reader_number})"
    identity = f" (INS {ins[0]})" if ins else ""
    return Mail(address, "Accès en urgence au dossier médical partagé de votre patient·e",
                f"Le dossier médical partagé de {directory.person_name(patient) or 'votre patient·e'}{born}{identity}, "
                f"dont vous êtes le médecin traitant, a été consulté en situation d'urgence "
                f"({'par la régulation médicale du SAMU, centre 15' if regulation else 'bris de glace'}) le "
                f"{when.astimezone(PARIS):%d/%m/%Y à %H:%M} (heure de Paris) par {who}.\n\n"
                "Ce message vous est adressé en application de l'article R. 1111-48 du code de la santé publique : "
                "le titulaire du dossier et son médecin traitant sont informés de tout accès en urgence. Le patient "
                "en est informé lui aussi. Les accès en urgence de l'heure qui suit ne font pas l'objet d'un nouveau "
                "message ; tous figurent dans l'historique des accès du dossier.")


def new_documents_mail(contact: str, own_record: bool, link: str, count: int) -> Mail:
    """Nothing medical, and no name: neither the documents' types, titles, authors nor places."""
    whose = "à votre dossier médical partagé" if own_record else \
        "au dossier médical partagé d'un enfant dont vous êtes le représentant légal"
    if count == 1:
        subject = "Un nouveau document dans votre dossier médical partagé"
        added = f"Un professionnel de santé a ajouté un document {whose}.\nPour le consulter"
    else:
        subject = f"{count} nouveaux documents dans votre dossier médical partagé"
        added = f"Des professionnels de santé ont ajouté {count} documents {whose}.\nPour les consulter"
    return Mail(contact, subject, f"{added}, connectez-vous à votre espace : {link}\n\n"
                "Vous recevez ce message parce que les notifications de nouveaux documents sont activées. "
                "Vous pouvez les désactiver dans votre espace, page « Mon dossier ».")


def emergency_access_mail(contact: str, own_record: bool, link: str, attending_told: bool = False) -> Mail:
    """No name, no document: who accessed what and when is in the trail the link leads to. Whether
    the attending physician is told too (at their MSSanté address), without naming them."""
    whose, opposed = ("votre dossier médical partagé", "vous ne vous y êtes pas opposé·e") if own_record else (
        "le dossier médical partagé d'un enfant dont vous êtes le représentant légal",
        "il n'y a pas été fait opposition")
    return Mail(contact, "Accès en urgence à votre dossier médical partagé",
                f"Un professionnel de santé a accédé à {whose} en situation d'urgence, comme la loi le permet "
                f"lorsque {opposed}.{' Le médecin traitant en est informé lui aussi.' if attending_told else ''}\n"
                "Pour voir qui y a accédé, quand et à quels documents, consultez "
                f"l'historique des accès de votre espace : {link}\n\n"
                "Ce message est envoyé à chaque accès en urgence, au plus une fois par heure. Vous pouvez vous "
                "opposer aux accès en urgence dans votre espace, page « Accès ».")


class SenderUnavailable(Exception):
    """The sender took no message (the mail server down, refusing the gateway, its certificate not
    trusted): what is queued waits for the next round."""

    def __init__(self, failure: Exception):
        super().__init__(type(failure).__name__)   # only the kind: a mail server's reply may name the address


def send_pending(settings: Settings, engine: Engine) -> int:
    """Send what is queued for up to BATCH records; the number of notifications handled. A record's
    notifications claimed together are one mail to each of its accounts: 5,902 documents imported
    into a record were 5,902 mails to its patient. Raises SenderUnavailable, once the records handled
    before are recorded, when the sender fails: the record it was at is released for the next round."""
    send = message_sender(settings.message_sender)
    base_url = settings.public_base_url.rstrip("/")
    now = datetime.now(timezone.utc)
    claimable = (notifications.c.sent_at.is_(None),
                 or_(notifications.c.claimed_until.is_(None), notifications.c.claimed_until < _stamp(now)))
    with read_connection(engine) as conn:
        records = conn.execute(select(notifications.c.patient_id).where(*claimable)
                               .group_by(notifications.c.patient_id).order_by(func.min(notifications.c.id))
                               .limit(BATCH)).scalars().all()
    handled = 0
    for patient_id in records:
        with write_transaction(engine) as conn:
            # RETURNING: those this sender claimed, not another's that took some first.
            claimed = conn.execute(update(notifications).where(notifications.c.id.in_(
                select(notifications.c.id).where(notifications.c.patient_id == patient_id, *claimable)
                .order_by(notifications.c.id).limit(PER_MAIL).scalar_subquery()), *claimable)
                .values(claimed_until=_stamp(now + CLAIM_TIME))
                .returning(notifications.c.id, notifications.c.about_id, notifications.c.kind)).all()
            mails, gone = _mails(conn, patient_id, claimed, base_url) if claimed else ([], set())
            if gone:
                conn.execute(delete(notifications).where(notifications.c.id.in_(sorted(gone))))
        ids = [c.id for c in claimed if c.id not in gone]
        if not ids:
            continue
        refused = 0
        for mail in mails:
            try:
                send(settings, mail)
            except RecipientRefused as refusal:
                # Sent again, it would be refused again, every round, for good.
                refused += 1
                log.warning("a notification's recipient was refused by the mail server",
                            extra={"notifications": len(ids), "code": refusal.code})
            except Exception as failure:
                # Those of its mails already sent are sent again with it: at least once.
                with write_transaction(engine) as conn:
                    conn.execute(update(notifications).where(notifications.c.id.in_(ids)).values(claimed_until=None))
                raise SenderUnavailable(failure) from None
        with write_transaction(engine) as conn:
            conn.execute(update(notifications).where(notifications.c.id.in_(ids)).values(
                sent_at=_stamp(datetime.now(timezone.utc)), recipients=len(mails) - refused, refused=refused))
        handled += len(ids)
    if handled:
        log.info("notifications sent", extra={"count": handled})
    return handled


def follow(settings: Settings, engine: Engine, interval: float, stop: threading.Event) -> None:
    """Send what is queued every `interval` seconds until `stop` is set. A sender, or a database,
    that fails is said once, in a line, and once more when it answers again: it was a traceback
    every round, the recipient's address in it (the sender's), or the statement (the database's:
    a restart, a full disk)."""
    waiting: dict[str, str] = {}   # what the round waits for ("sender", "database"): since when
    while not stop.is_set():
        try:
            while send_pending(settings, engine):
                pass
            for what, since in waiting.items():
                log.info(f"notifications: the {what} answers again", extra={"since": since})
            waiting.clear()
        except SenderUnavailable as failure:
            _waits_for(waiting, "sender", str(failure))
        except Exception as failure:
            if not unavailable(failure):
                log.exception("sending notifications failed; trying again")
            else:
                _waits_for(waiting, "database", failure_reason(failure))
        stop.wait(interval)


def _waits_for(waiting: dict[str, str], what: str, error: str) -> None:
    if what not in waiting:
        waiting[what] = _stamp(datetime.now(timezone.utc))
        log.warning(f"notifications wait: the {what} took none; trying again every round", extra={"error": error})


def queued(engine: Engine, limit: int = 50) -> list[Notification]:
    with read_connection(engine) as conn:
        rows = conn.execute(select(notifications).order_by(notifications.c.id.desc()).limit(limit)).all()
    return [Notification(r.about_id, r.kind, r.queued_at, r.sent_at, r.recipients, r.refused) for r in rows]
