"""The `gateway` command: serve, migrate, ingest, demo."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.config import Settings
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
    from gateway.server import serve

    return serve(settings, workers=args.workers)


def cmd_ingest(settings: Settings, args) -> int:
    from gateway.bulk import ingest_paths

    configure_logging("WARNING")  # the progress bar and the summary say what happened
    report = ingest_paths(settings, [Path(p) for p in args.paths])
    return 0 if not report.failed else 1


def cmd_demo(settings: Settings, args) -> int:
    from gateway.demo import setup

    setup(settings, force=args.force)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description="DMP interoperability gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="apply pending migrations, then serve HTTP (settings from GATEWAY_*)")
    serve.add_argument("--workers", type=int, default=None, help="HTTP worker processes (default GATEWAY_WORKERS or 2)")
    serve.set_defaults(func=cmd_serve)
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
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    return args.func(settings, args)


if __name__ == "__main__":
    sys.exit(main())
