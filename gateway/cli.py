"""The `gateway` command: serve, mllp, send, messages, migrate, ingest, demo, token, audit, backup,
restore, and the patient space's outbox, account, verify-export and retention."""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

from gateway.arguments import PORT, RAW_ID, counted, seconds
from gateway.config import Settings, SettingsError
from gateway.logs import configure as configure_logging


def _engine(settings: Settings):
    from gateway.storage.database import make_engine

    return make_engine(settings.database_url)


def cmd_migrate(settings: Settings, _args) -> int:
    from gateway.storage.migrate import upgrade

    upgrade(_engine(settings))
    print(f"database at head: {settings.database_url.split('@')[-1]}")
    return 0


def cmd_serve(settings: Settings, args) -> int:
    import shutil

    # One scrape shows the whole gateway: every process (gunicorn's workers, the MLLP listener)
    # writes its metrics where /metrics reads them all (prometheus-client's multiprocess mode). Set
    # before prometheus-client is imported anywhere; the processes started from here inherit it.
    metrics_dir = metrics_folder(settings.var_dir)
    shutil.rmtree(metrics_dir, ignore_errors=True)
    try:
        metrics_dir.mkdir(parents=True, mode=0o700)
    except OSError as failure:   # without /dev/shm, a GATEWAY_VAR_DIR mistyped or not writable: it was a traceback
        print(f"gateway serve: {metrics_dir}, where its processes keep their metrics, cannot be made "
              f"({failure.strerror})", file=sys.stderr)
        return 2
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir.resolve())
    from gateway.server import serve

    try:
        return serve(settings, workers=args.workers, mllp=not args.no_mllp)
    finally:
        # In memory: what a gateway left there would stay until the machine restarts. The variable
        # naming it goes with it: a process that ran `serve` in itself (a test calling `main`) gave
        # it to every process it started afterwards, whose metrics then had no folder to go to.
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        shutil.rmtree(metrics_dir, ignore_errors=True)


def metrics_folder(var_dir: Path) -> Path:
    """Where the processes of `gateway serve` on this GATEWAY_VAR_DIR keep their metrics: in memory
    (/dev/shm) where the system has it. prometheus-client maps its files into memory and grows them
    sparse: on a full disk, the first write to a page not yet on it killed the process (SIGBUS),
    and with the disk of GATEWAY_VAR_DIR (the SQLite database's) full, gunicorn's workers were
    killed and started again without end, every answer a 500, /health's too."""
    memory = Path("/dev/shm")
    if not (memory.is_dir() and os.access(memory, os.W_OK)):
        return var_dir / "metrics"
    digest = hashlib.sha256(str(var_dir.resolve()).encode()).hexdigest()[:16]
    return memory / f"gateway-metrics-{digest}"


def cmd_mllp(settings: Settings, _args) -> int:
    from gateway.listener import run, tls_problems
    from gateway.server import return_large_blocks
    from gateway.storage.migrate import upgrade

    problems = tls_problems(settings)
    for problem in problems:
        print(f"gateway mllp: {problem}", file=sys.stderr)
    if problems:
        return 2
    return_large_blocks()
    upgrade(_engine(settings))
    return run(settings)


def cmd_send(settings: Settings, args) -> int:
    from gateway.hl7v2.sender import send_paths

    return send_paths([Path(p) for p in args.paths], args.host or settings.mllp_host, args.port or settings.mllp_port,
                      timeout=args.timeout, use_tls=args.tls, tls_ca=args.tls_ca, tls_cert=args.tls_cert,
                      tls_key=args.tls_key, whole_batches=args.whole_batch)


def cmd_messages(settings: Settings, args) -> int:
    from gateway.messages_cli import run

    return run(settings, args)


def cmd_ingest(settings: Settings, args) -> int:
    from gateway.bulk import ingest_paths

    configure_logging("WARNING")  # the progress bar and the summary say what happened
    report = ingest_paths(settings, [Path(p) for p in args.paths])
    return 130 if report.interrupted else 1 if report.failed else 0


def cmd_demo(settings: Settings, args) -> int:
    from gateway.demo import setup

    setup(settings, force=args.force)
    return 0


def cmd_token(settings: Settings, args) -> int:
    from gateway.access_cli import issue_token

    return issue_token(settings, args)


def cmd_audit(settings: Settings, args) -> int:
    from gateway.access_cli import verify_audit

    return verify_audit(settings, args)


def cmd_backup(settings: Settings, args) -> int:
    from gateway.storage.backup import BackupRefused, backup

    try:
        copy = backup(settings.database_url, Path(args.file))
    except BackupRefused as refused:
        print(f"gateway backup: {refused}", file=sys.stderr)
        return 2
    print(f"backed up to {copy.path}: {_described(copy)}, in {copy.seconds:.1f} s; "
          f"`gateway restore {copy.path}` puts it back, the gateway stopped")
    return 0


def cmd_restore(settings: Settings, args) -> int:
    from gateway.storage.backup import BackupRefused, restore

    try:
        restored = restore(settings.database_url, Path(args.file))
    except BackupRefused as refused:
        print(f"gateway restore: {refused}", file=sys.stderr)
        return 2
    if restored.kept is not None:
        print(f"what the database held is kept in {restored.kept.path}: {_described(restored.kept)}")
    if restored.moved is not None:
        print(f"what the database held is moved, as its files were, to {restored.moved}: SQLite could not copy it "
              f"({restored.why_moved})")
    copy = restored.copy
    print(f"restored {copy.path}: {_described(copy)}, in {copy.seconds:.1f} s; `gateway serve` applies the "
          "migrations the copy lacks")
    return 0


def _described(copy) -> str:
    newest = f"the newest input received at {copy.newest_input} UTC" if copy.newest_input else "no input received"
    return f"{copy.size / 1e6:,.1f} MB at migration {copy.migration}, {newest}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description="DMP interoperability gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="apply pending migrations, then serve HTTP (settings from GATEWAY_*)")
    serve.add_argument("--workers", type=counted(256), default=None, help="HTTP worker processes (default GATEWAY_WORKERS or 2)")
    serve.set_defaults(func=cmd_serve)
    serve.add_argument("--no-mllp", action="store_true", help="serve HTTP only (run `gateway mllp` elsewhere)")
    mllp = sub.add_parser("mllp", help="run the MLLP listener alone (GATEWAY_MLLP_HOST, GATEWAY_MLLP_PORT)")
    mllp.set_defaults(func=cmd_mllp)
    send = sub.add_parser("send", help="send HL7v2 messages over MLLP and print each ACK")
    send.add_argument("paths", nargs="+", metavar="FILE|DIR")
    send.add_argument("--host", help="gateway host (default GATEWAY_MLLP_HOST)")
    send.add_argument("--port", type=PORT, help="gateway MLLP port (default GATEWAY_MLLP_PORT)")
    send.add_argument("--timeout", type=seconds, default=30.0, help="seconds to wait for each ACK")
    send.add_argument("--whole-batch", action="store_true",
                      help="send an HL7 batch file whole, in one frame, and print each ACK of the batch answered "
                           "(by default its messages go one by one)")
    send.add_argument("--tls", action="store_true", help="connect with TLS, trusting the system's authorities")
    send.add_argument("--tls-ca", help="connect with TLS, trusting this CA (PEM)")
    send.add_argument("--tls-cert", help="connect with TLS, with this client certificate (PEM; mutual TLS)")
    send.add_argument("--tls-key", help="the client certificate's private key (PEM), when not in --tls-cert")
    send.set_defaults(func=cmd_send)
    messages = sub.add_parser("messages", help="HL7v2 messages and documents received: list, show, reprocess")
    messages_sub = messages.add_subparsers(dest="messages_command", required=True)
    listing = messages_sub.add_parser("list", help="latest messages, newest first")
    listing.add_argument("--status", choices=("received", "processed", "duplicate", "skipped", "refused", "failed"))
    listing.add_argument("--limit", type=counted(100_000), default=50)
    listing.add_argument("--documents", action="store_true",
                         help="the documents received instead (POST /cda, ITI-65, ITI-105, gateway ingest)")
    show = messages_sub.add_parser("show", help="one message (its segments, status, ACK and resources) or document "
                                                "(how it came, its status and resources)")
    show.add_argument("id", type=RAW_ID)
    show.add_argument("--fields", action="store_true", help="name every field (hl7apy definitions)")
    reprocess = messages_sub.add_parser("reprocess", help="process a message or document again, or every failed one")
    target = reprocess.add_mutually_exclusive_group(required=True)
    target.add_argument("id", type=RAW_ID, nargs="?")
    target.add_argument("--failed", action="store_true", help="every failed or interrupted message and document")
    messages.set_defaults(func=cmd_messages)
    migrate = sub.add_parser("migrate", help="apply pending database migrations")
    migrate.set_defaults(func=cmd_migrate)
    ingest = sub.add_parser("ingest", help="load CDA documents from files or directories")
    ingest.add_argument("paths", nargs="+", metavar="FILE|DIR")
    ingest.set_defaults(func=cmd_ingest)
    demo = sub.add_parser("demo", help="development set-up: keys, test CA, signed samples, demo data")
    demo_sub = demo.add_subparsers(dest="demo_command", required=True)
    demo_setup = demo_sub.add_parser("setup", help="create what `make run` needs, loading the demo data once")
    demo_setup.add_argument("--force", action="store_true", help="load the demo data again")
    demo_setup.set_defaults(func=cmd_demo)
    from gateway.access.context import PURPOSES, ROLES

    token = sub.add_parser("token", help="bearer tokens for trying the gateway")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    token_issue = token_sub.add_parser("issue", help="print a token signed with the development key (last line)")
    token_issue.add_argument("--role", required=True, choices=ROLES)
    token_issue.add_argument("--sub", help="subject: IdNatPs of a professional (default: the patient's INS, "
                                           "or demo-ROLE)")
    token_issue.add_argument("--patient", help="INS of the patient (patient, representative, emergency access)")
    token_issue.add_argument("--org", help="FINESS of the organisation")
    token_issue.add_argument("--purpose", choices=PURPOSES, default=None, help="care (default), emergency, regulation")
    token_issue.add_argument("--name", help="display name in the audit trail")
    token_issue.add_argument("--guardianship", action="store_true",
                             help="a representative who is a protected adult's guardian (tutelle), not a parent")
    # A token's life, up to a year: 0 or less issued a token already expired ("valid -5 s").
    token_issue.add_argument("--ttl", type=counted(366 * 86400), default=3600, help="seconds of validity (default 3600)")
    token_issue.set_defaults(func=cmd_token)
    audit = sub.add_parser("audit", help="the audit trail")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    audit_verify = audit_sub.add_parser("verify", help="check the hash chain; report the first broken link")
    audit_verify.set_defaults(func=cmd_audit)
    backup = sub.add_parser("backup", help="copy the SQLite database while the gateway runs, consistent and checked, "
                                           "to FILE (PostgreSQL: pg_dump)")
    backup.add_argument("file", metavar="FILE", help="the copy, a file that does not exist yet")
    backup.set_defaults(func=cmd_backup)
    restore = sub.add_parser("restore", help="put a copy `gateway backup` made in the SQLite database's place, the "
                                             "gateway stopped; what it held is backed up beside it first")
    restore.add_argument("file", metavar="FILE", help="a copy `gateway backup` made")
    restore.set_defaults(func=cmd_restore)
    from gateway.space_cli import add_commands

    add_commands(sub)
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as wrong:
        print(f"gateway {args.command}: {wrong}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        return args.func(settings, args)
    except KeyboardInterrupt:
        # Ctrl-C: a line, where it was a traceback from wherever the command was (what it committed
        # stays; `gateway ingest` says itself how far it went).
        print(f"gateway {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as failure:
        told = _database_failure(failure, settings.database_url)
        if told is None:
            raise
        print(f"gateway {args.command}: {told}", file=sys.stderr)
        return 2


FULL_DISK = 1 << 20   # bytes free, below which a failing SQLite database's disk is said to be full


def _database_failure(failure: Exception, database_url: str) -> str | None:
    """What an operator is told of a database the command could not use, or None for any other
    failure: a database not reached, one without the gateway's tables (a command run before
    `gateway migrate`), or a URL of another database, was a traceback. SQLAlchemy is loaded by the
    commands that use it only. A SQLite database on a full disk cannot even be opened (its log's
    shared memory file takes room): SQLite says "disk I/O error", the disk is named."""
    storage = sys.modules.get("gateway.storage.database")
    if storage is not None and isinstance(failure, storage.UnsupportedDatabase):
        return str(failure)
    errors = sys.modules.get("sqlalchemy.exc")
    if storage is None or errors is None or not isinstance(failure, errors.DBAPIError):
        return None
    cause = storage.failure_reason(failure)
    if "no such table" in cause or getattr(failure.orig, "sqlstate", None) == "42P01":
        return f"the database has no gateway tables ({cause}): run `gateway migrate` first"
    path = storage.sqlite_file(database_url)
    try:
        full = path is not None and storage.disk_room(path) < FULL_DISK
    except OSError:   # its folder is not there
        full = False
    if full:
        cause += f"; the disk of {path.resolve().parent} is full"
    return f"the database cannot be used: {cause}"


if __name__ == "__main__":
    sys.exit(main())
