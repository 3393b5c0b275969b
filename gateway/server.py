"""`gateway serve`: migrations, then the MLLP listener (GATEWAY_MLLP_HOST:GATEWAY_MLLP_PORT, its own
process), the sender of notifications (its own process) and the HTTP server (gunicorn, threads) on
GATEWAY_HOST:GATEWAY_HTTP_PORT."""
from __future__ import annotations

import ctypes
import logging
import os
import socket
import subprocess
import sys
from dataclasses import replace

from gunicorn.app.base import BaseApplication
from gunicorn.workers.gthread import ThreadWorker

from gateway.config import Settings
from gateway.http.slow_clients import HeadDeadlines, StalledReaders, wait_at_most

log = logging.getLogger(__name__)

# glibc serves a block above its mmap threshold from a mapping of its own, given back to the system
# when freed; but it raises that threshold to the largest block freed (up to 32 MB), after which a
# large document's buffers come from the heap and stay in the process once the request is done.
# Fixed at 1 MiB, a 20 MB document's copies are given back as soon as they are dropped, and smaller
# blocks are served as before (README, "Large documents").
MMAP_THRESHOLD = 1 << 20
M_MMAP_THRESHOLD = -3


def return_large_blocks() -> None:
    """Fix glibc's mmap threshold in this process and the processes it forks (elsewhere, nothing)."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):
        log.debug("not glibc: the allocator's defaults stay")


class Worker(ThreadWorker):
    """gunicorn's threaded worker, quitting once.

    Ctrl-C reaches a worker twice: SIGINT from the terminal (it is in the terminal's process group),
    then SIGQUIT from gunicorn's master. gthread's quit handler shuts its thread pool down under a
    lock that is not re-entrant: when the second signal arrived while the first handler held it,
    the worker deadlocked, and the master killed it only after its graceful timeout (30 s). That
    happened once in 30 Ctrl-C."""
    quitting = False

    def handle_quit(self, sig, frame):
        if self.quitting:
            return
        self.quitting = True
        super().handle_quit(sig, frame)

    # What a slow client may hold (gateway.http.slow_clients): a request's head is read within
    # GATEWAY_HTTP_CLIENT_TIMEOUT, and no wait within its body or answer lasts longer.

    def load_wsgi(self):
        super().load_wsgi()
        self.client_timeout = self.wsgi.config["SETTINGS"].http_client_timeout
        self.heads = HeadDeadlines(self.client_timeout)
        # Python's sendfile waits on a client that reads nothing without any bound, whatever the
        # socket's timeouts: answers from files are written as the others are.
        self.cfg.set("sendfile", False)
        self.log.error_log.addFilter(StalledReaders())

    def handle(self, conn):
        if getattr(conn, "waits_bounded", False):
            # A kept-alive connection's next head is the watchdog's to bound, as the first one was.
            wait_at_most(conn.sock, None)
            conn.waits_bounded = False
        self.heads.start(conn.sock)
        try:
            return super().handle(conn)
        finally:
            self.heads.done(conn.sock)

    def handle_request(self, req, conn):
        self.heads.done(conn.sock)
        wait_at_most(conn.sock, self.client_timeout)
        conn.waits_bounded = True
        return super().handle_request(req, conn)


class _Gunicorn(BaseApplication):
    def __init__(self, settings: Settings, workers: int, serves_mllp: bool, helpers: list):
        self.settings = settings
        self.workers = workers
        self.serves_mllp = serves_mllp
        self.helpers = helpers
        self.owner = os.getpid()
        super().__init__()

    def load_config(self):
        self.cfg.set("bind", f"{self.settings.host}:{self.settings.http_port}")
        self.cfg.set("workers", self.workers)
        self.cfg.set("threads", self.settings.http_threads)
        self.cfg.set("worker_class", Worker)
        self.cfg.set("graceful_timeout", 30)
        self.cfg.set("timeout", 120)
        self.cfg.set("accesslog", None)  # the application logs each request itself, as JSON
        # A search the gateway takes (100 values: 99 INS with their system and a status run to 5.3 KB)
        # fitted gunicorn's default request line of 4,094 bytes only up to about 70 INS, and past it
        # gunicorn answered an HTML 414. Its largest, as Jetty's and nginx's 8 KB.
        self.cfg.set("limit_request_line", 8190)
        self.cfg.set("on_exit", lambda arbiter: _stop(self.helpers, self.owner))
        self.cfg.set("child_exit", _worker_gone)
        # gunicorn's control socket (for its `gunicornc`) is one path per user, in the home
        # directory: a second gateway on the host took it over from the first. gunicorn's master
        # still takes its signals (TERM, HUP, TTIN, TTOU).
        self.cfg.set("control_socket_disable", True)

    def load(self):
        from gateway.app import create_app

        return create_app(replace(self.settings, serves_mllp=self.serves_mllp))


def _worker_gone(_server, worker) -> None:
    """A worker's live gauges go with it (prometheus-client's multiprocess mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def _stop(processes: list, owner: int) -> None:
    """SIGTERM: the listener finishes and acknowledges the messages in flight, the sender of
    notifications finishes its round, then they exit.

    Only the process that started them may: gunicorn's workers are forks of it and unwind through
    the same code when they exit."""
    if owner != os.getpid():
        return
    running = [p for p in processes if p.poll() is None]
    for process in running:
        process.terminate()
    for process in running:
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


def _unusable(settings: Settings) -> list[str]:
    """What the settings name that serving cannot use, each in a sentence: with no key to verify
    tokens every request was answered 401, and with an unknown sender every sign-in failed."""
    from gateway.access.tokens import load_keys
    from gateway.listener import tls_problems
    from gateway.space.senders import SENDERS

    problems = [f"{path} does not exist (GATEWAY_JWT_KEYS)" for path in settings.jwt_keys
                if not path.exists() and not settings.uses_demo_token_key]
    try:
        if not load_keys(settings.jwt_keys):
            problems.append("no key to verify bearer tokens with: set GATEWAY_JWT_KEYS (PEM or JWKS files), or run "
                            "`gateway demo setup` for the development one")
    except ValueError as exc:
        problems.append(f"a key of GATEWAY_JWT_KEYS cannot be read: {exc}")
    if settings.message_sender not in SENDERS:
        problems.append(f"GATEWAY_MESSAGE_SENDER is {settings.message_sender!r}: it takes {', '.join(SENDERS)}")
    elif settings.message_sender == "smtp":
        port = os.environ.get("GATEWAY_SMTP_PORT", "587")
        if not os.environ.get("GATEWAY_SMTP_HOST"):
            problems.append("GATEWAY_MESSAGE_SENDER is smtp: set GATEWAY_SMTP_HOST")
        if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            problems.append(f"GATEWAY_SMTP_PORT is {port!r}: it takes 1 to 65535")
    return problems + tls_problems(settings)


def serve(settings: Settings, workers: int | None = None, mllp: bool = True) -> int:
    """Migrations, then the MLLP listener and the sender of notifications (their own processes) and
    the HTTP server side by side."""
    for name, host, port in (("HTTP", settings.host, settings.http_port),
                             ("MLLP", settings.mllp_host, settings.mllp_port) if mllp else (None, None, None)):
        if name and _port_taken(host, port):
            print(f"gateway: the {name} port {host}:{port} is in use: is a gateway already running? "
                  f"(GATEWAY_{'HTTP' if name == 'HTTP' else 'MLLP'}_PORT chooses another)", file=sys.stderr)
            return 1
    problems = _unusable(settings)
    for problem in problems:
        print(f"gateway: {problem}", file=sys.stderr)
    if problems:
        return 2
    from gateway.space import session_secret
    from gateway.storage.database import make_engine, version
    from gateway.storage.migrate import upgrade

    return_large_blocks()   # before gunicorn forks its workers, which inherit it
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
    if settings.message_sender == "outbox":
        log.warning("one-time codes and notifications go to the development outbox (`gateway outbox`): set "
                    "GATEWAY_MESSAGE_SENDER "
                    "for anything but a local trial")
    workers = workers or settings.http_workers
    # Their own processes, with the same environment: gunicorn forks its workers from this one,
    # which must hold no event loop or thread.
    helpers = [subprocess.Popen([sys.executable, "-m", "gateway", "notifications", "send", "--follow"])]
    if mllp:
        from gateway.listener import start_processes

        helpers += start_processes(settings.mllp_host, settings.mllp_port, settings.mllp_processes)
    log.info("serving", extra={"http": f"http://{settings.host}:{settings.http_port}", "fhir": settings.fhir_base,
                               "mllp": f"{settings.mllp_host}:{settings.mllp_port}" if mllp else None,
                               "database": database})
    owner = os.getpid()
    try:
        _Gunicorn(settings, workers, mllp, helpers).run()
    finally:
        _stop(helpers, owner)
    return 0
