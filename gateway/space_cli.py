"""`gateway outbox`, `gateway account create`, `gateway verify-export`, `gateway retention`:
the command-line side of the patient space."""
from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

from gateway.arguments import counted, instant
from gateway.config import Settings


def _engine(settings: Settings):
    from gateway.storage.database import make_engine
    from gateway.storage.migrate import upgrade

    engine = make_engine(settings.database_url)
    upgrade(engine)
    return engine


def print_outbox(settings: Settings, args) -> int:
    """The messages the development sender wrote (one-time codes, notifications), newest last."""
    from gateway.space.senders import read_outbox

    messages = read_outbox(settings)
    if args.to:
        messages = [m for m in messages if m["to"] == args.to]
    for message in messages[-args.last:]:
        what = f"code {message['code']}" if message.get("code") else message["subject"]
        print(f"{message['sent_at']}  to {message['to']}  {what}")
    if not messages:
        print(f"no message to {args.to} in the outbox" if args.to else "the outbox is empty", file=sys.stderr)
    return 0


def create_account(settings: Settings, args) -> int:
    from gateway.space.accounts import create_account as create

    password = os.environ.get("GATEWAY_ACCOUNT_PASSWORD") or getpass.getpass("password (12 characters or more): ")
    try:
        account = create(_engine(settings), args.login, password, args.role, args.ins or [], args.name, args.contact,
                         replace=args.reset, guardianships=args.guardian_of or [])
    except ValueError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    guardian = f" (guardian of {', '.join(account.guardianships)})" if account.guardianships else ""
    print(f"account {args.login} ({args.role}) manages the record(s) of INS {', '.join(account.records)}{guardian}")
    return 0


def run_notifications(settings: Settings, args) -> int:
    """Send the queued notifications ("a document was added", "an emergency access"), once or until
    stopped (SIGTERM)."""
    import signal
    import threading

    from gateway.services import notifications

    engine = _engine(settings)
    if args.notifications_command == "list":
        items = notifications.queued(engine, args.last)
        for item in items:
            state = f"sent {item.sent_at} to {item.recipients} account(s)" if item.sent_at else "queued"
            if item.refused:
                state += f", {item.refused} address(es) refused by the mail server"
            about = f"DocumentReference/{item.about_id}" if item.kind == notifications.NEW_DOCUMENT else \
                f"emergency access AuditEvent/{item.about_id}"
            print(f"{about}  queued {item.queued_at}  {state}")
        if not items:
            print("no notification", file=sys.stderr)
        return 0
    if not args.follow:
        try:
            print(f"{notifications.send_pending(settings, engine)} notification(s) sent")
        except notifications.SenderUnavailable as failure:
            print(f"the sender took no message ({failure}): what is queued waits for the next run", file=sys.stderr)
            return 1
        return 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    notifications.follow(settings, engine, settings.notify_interval, stop)
    return 0


def verify_export(settings: Settings, args) -> int:
    from gateway.services.export import verify_export as verify

    anchors = [Path(p) for p in args.ca] if args.ca else settings.trust_anchors
    try:
        with open(args.file, "rb") as copy:   # read where the check needs it, not whole into memory
            report = verify(copy, anchors)
    except OSError as exc:
        print(f"cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if report.signature:
        print(f"NOT VALID: {report.signature}")
        return 1
    for name in report.altered:
        print(f"altered: {name}")
    for name in report.missing:
        print(f"missing: {name}")
    for name in report.unexpected:
        print(f"not in the manifest: {name}")
    if not report.valid:
        print("NOT VALID: the archive was changed after it was signed")
        return 1
    print(f"valid: signature verified, {report.files} files intact")
    return 0


def run_retention(settings: Settings, args) -> int:
    from gateway.services import retention

    engine = _engine(settings)
    if args.retention_command == "list":
        requests = retention.pending(engine)
        for request in requests:
            state = f"carried out {request['carried_out_at']}" if request["carried_out_at"] else f"due {request['due_at']}"
            print(f"Patient/{request['patient_id']}  requested {request['requested_at']}  {state}")
        if not requests:
            print("no destruction request", file=sys.stderr)
        return 0
    destroyed = retention.carry_out(engine, args.now)
    for record in destroyed:
        print(f"destroyed Patient/{record.patient_id}: {record.resources} resources, {record.raw_inputs} raw inputs")
    print(f"{len(destroyed)} record(s) destroyed")
    return 0


def add_commands(sub) -> None:
    outbox = sub.add_parser("outbox", help="the one-time codes sent by the development sender")
    outbox.add_argument("--to", help="only those sent to this contact")
    outbox.add_argument("--last", type=counted(10_000), default=10, help="how many (default 10)")
    outbox.set_defaults(func=print_outbox)
    account = sub.add_parser("account", help="patient-space accounts")
    account_sub = account.add_subparsers(dest="account_command", required=True)
    create = account_sub.add_parser("create", help="create an account (or, with --reset, replace one); the password "
                                                   "is asked for (or read from GATEWAY_ACCOUNT_PASSWORD)")
    create.add_argument("--login", required=True)
    create.add_argument("--role", choices=("patient", "representative"), default="patient")
    create.add_argument("--ins", action="append",
                        help="INS of the record the account manages (a representative: once per child)")
    create.add_argument("--guardian-of", action="append", metavar="INS",
                        help="INS of a protected adult whose guardian (tutelle) the representative is, as a judge "
                             "ordered: their access does not end at the person's majority, as a parent's does")
    create.add_argument("--name", required=True, help="name shown in the space and in the audit trail")
    create.add_argument("--contact", required=True, help="where one-time codes go (e-mail address)")
    create.add_argument("--reset", action="store_true", help="replace the account of this login: its password, "
                                                            "records, name and contact; its sessions end")
    create.set_defaults(func=create_account)
    verify = sub.add_parser("verify-export", help="check a copy of a record offline: signature and every file")
    verify.add_argument("file", metavar="FILE.zip")
    verify.add_argument("--ca", action="append", help="trust anchor (PEM); default GATEWAY_TRUST_ANCHORS")
    verify.set_defaults(func=verify_export)
    retention = sub.add_parser("retention", help="destruction requests: list them, carry out those due")
    retention_sub = retention.add_subparsers(dest="retention_command", required=True)
    retention_sub.add_parser("list", help="requests and when they are due").set_defaults(func=run_retention)
    run = retention_sub.add_parser("run", help="destroy the records whose retention has run out")
    run.add_argument("--now", type=instant, help="the date to judge by (ISO 8601, UTC without an offset), for "
                                                  "tests and catching up")
    run.set_defaults(func=run_retention)
    notify = sub.add_parser("notifications", help='"a document was added" messages to patients and representatives')
    notify_sub = notify.add_subparsers(dest="notifications_command", required=True)
    send = notify_sub.add_parser("send", help="send those queued (`gateway serve` runs this with --follow)")
    send.add_argument("--follow", action="store_true",
                      help="keep sending every GATEWAY_NOTIFY_INTERVAL seconds until stopped")
    send.set_defaults(func=run_notifications)
    listed = notify_sub.add_parser("list", help="the latest, queued or sent")
    listed.add_argument("--last", type=counted(10_000), default=50)
    listed.set_defaults(func=run_notifications)
