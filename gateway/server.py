"""`gateway serve`: migrations, then the MLLP listener (GATEWAY_MLLP_HOST:GATEWAY_MLLP_PORT, its own
process) and the HTTP server (gunicorn, threads) on GATEWAY_HOST:GATEWAY_HTTP_PORT."""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from dataclasses import replace

from gunicorn.app.base import BaseApplication

from gateway.config import Settings

log = logging.getLogger(__name__)


class _Gunicorn(BaseApplication):
    def __init__(self, settings: Settings, workers: int, listener):
        self.settings = settings
        self.workers = workers
        self.listener = listener
        self.owner = os.getpid()
        super().__init__()

    def load_config(self):
        self.cfg.set("bind", f"{self.settings.host}:{self.settings.http_port}")
        self.cfg.set("workers", self.workers)
        self.cfg.set("threads", int(os.environ.get("GATEWAY_THREADS", "8")))
        self.cfg.set("worker_class", "gthread")
        self.cfg.set("graceful_timeout", 30)
        self.cfg.set("timeout", 120)
        self.cfg.set("accesslog", None)  # the application logs each request itself, as JSON
        self.cfg.set("on_exit", lambda arbiter: _stop(self.listener, self.owner))
        self.cfg.set("child_exit", _worker_gone)

    def load(self):
        from gateway.app import create_app

        return create_app(replace(self.settings, serves_mllp=self.listener is not None))


def _worker_gone(_server, worker) -> None:
    """A worker's live gauges go with it (prometheus-client's multiprocess mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def _stop(process, owner: int) -> None:
    """SIGTERM: the listener finishes and acknowledges the messages in flight, then exits.

    Only the process that started it may: gunicorn's workers are forks of it and unwind through
    the same code when they exit."""
    if process is not None and owner == os.getpid() and process.poll() is None:
        process.terminate()
        try:
            process.wait(40)
        except subprocess.TimeoutExpired:
            process.kill()


def _port_taken(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def serve(settings: Settings, workers: int | None = None, mllp: bool = True) -> int:
    """Migrations, then the MLLP listener (its own process) and the HTTP server side by side."""
    for name, host, port in (("HTTP", settings.host, settings.http_port),
                             ("MLLP", settings.mllp_host, settings.mllp_port) if mllp else (None, None, None)):
        if name and _port_taken(host, port):
            print(f"gateway: the {name} port {host}:{port} is in use: is a gateway already running? "
                  f"(GATEWAY_{'HTTP' if name == 'HTTP' else 'MLLP'}_PORT chooses another)", file=sys.stderr)
            return 1
    from gateway.space import session_secret
    from gateway.storage.database import make_engine, version
    from gateway.storage.migrate import upgrade

    engine = make_engine(settings.database_url)
    upgrade(engine)
    database = version(engine)
    engine.dispose()
    if settings.uses_demo_token_key:
        log.warning("trusting the development token key of `gateway demo setup`: set GATEWAY_JWT_KEYS, "
                    "GATEWAY_JWT_ISSUER and GATEWAY_JWT_AUDIENCE for anything but a local trial")
    if not settings.secret_key:
        session_secret(settings)   # created once here, before the workers fork and read it
        log.warning("patient-space sessions are signed with the development key of GATEWAY_DEMO_DIR: "
                    "set GATEWAY_SECRET_KEY for anything but a local trial")
    if settings.code_sender == "outbox":
        log.warning("one-time codes go to the development outbox (`gateway outbox`): set GATEWAY_CODE_SENDER "
                    "for anything but a local trial")
    workers = workers or int(os.environ.get("GATEWAY_WORKERS", "2"))
    listener = None
    if mllp:
        # Its own process (`gateway mllp`), with the same environment: gunicorn forks its workers
        # from this one, which must hold no event loop or thread.
        listener = subprocess.Popen([sys.executable, "-m", "gateway", "mllp"])
    log.info("serving", extra={"http": f"http://{settings.host}:{settings.http_port}", "fhir": settings.fhir_base,
                               "mllp": f"{settings.mllp_host}:{settings.mllp_port}" if mllp else None,
                               "database": database})
    owner = os.getpid()
    try:
        _Gunicorn(settings, workers, listener).run()
    finally:
        _stop(listener, owner)
    return 0
