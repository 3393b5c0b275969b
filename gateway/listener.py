"""The MLLP listener process: asyncio for the connections, a thread pool for the database work.

Each connection's messages are processed one after the other, so a sender's order is kept; the
connections run side by side up to GATEWAY_MLLP_WORKERS at a time, and their writes share group
commits. `gateway serve` starts GATEWAY_MLLP_PROCESSES listeners on one socket (`start_processes`)."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from gateway.access import AccessContext
from gateway.config import Settings
from gateway.hl7v2 import mllp
from gateway.services import feeds
from gateway.storage.database import make_engine
from gateway.storage.repository import Repository

log = logging.getLogger(__name__)
SHUTDOWN_GRACE_SECONDS = 30.0
# The descriptor of the listening socket a `gateway mllp` process inherits from `start_processes`.
SOCKET_FD = "GATEWAY_MLLP_SOCKET_FD"


def start_processes(host: str, port: int, processes: int, env: dict | None = None, **popen) -> list[subprocess.Popen]:
    """`processes` listener processes (`gateway mllp`). Several share one listening socket, opened
    here, and the least busy takes each connection (mllp.FewestConnectionsFirst); one opens its own."""
    command = [sys.executable, "-m", "gateway", "mllp"]
    env = dict(os.environ if env is None else env)
    if processes <= 1:
        return [subprocess.Popen(command, env=env, **popen)]
    with mllp.listening_socket(host, port) as shared:
        env[SOCKET_FD] = str(shared.fileno())
        return [subprocess.Popen(command, env=env, pass_fds=[shared.fileno()], **popen) for _ in range(processes)]


async def listen(settings: Settings, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None) -> None:
    engine = make_engine(settings.database_url)
    pool = ThreadPoolExecutor(settings.mllp_workers, thread_name_prefix="mllp")
    loop = asyncio.get_running_loop()

    def repository(peer: str) -> Repository:
        # The sender's address is the audit trail's network address of what it wrote, as an HTTP
        # client's is (it wrote "localhost", the gateway's own processes' word).
        address = peer.rsplit(":", 1)[0] if peer != "unknown" else None
        return Repository(engine, AccessContext.system(f"mllp {peer}", address), settings.public_base_url)

    def process(data: bytes, peer: str) -> bytes | None:
        repo = repository(peer)
        return feeds.receive(repo, data, channel="mllp", max_bytes=settings.max_document_bytes,
                             senders=settings.mllp_senders, address=repo.access.address).ack

    def refuse(head: bytes, size: int, peer: str) -> bytes | None:
        return feeds.refuse_oversized(repository(peer), head, size, settings.mllp_max_bytes, "mllp").ack

    async def handle(data: bytes, peer: str) -> bytes | None:
        return await loop.run_in_executor(pool, process, data, peer)

    async def too_large(head: bytes, size: int, peer: str) -> bytes | None:
        return await loop.run_in_executor(pool, refuse, head, size, peer)

    def keep_unended(cut: mllp.UnendedFrame, peer: str) -> bytes | None:
        return feeds.refuse_unended(repository(peer), cut.head, cut.size, cut.idle, "mllp").ack

    async def unended(cut: mllp.UnendedFrame, peer: str) -> bytes | None:
        return await loop.run_in_executor(pool, keep_unended, cut, peer)

    tls = _tls(settings)
    listener = await mllp.serve(settings.mllp_host, settings.mllp_port, handle, too_large, unended,
                                max_bytes=settings.mllp_max_bytes, idle_timeout=settings.mllp_idle_timeout, tls=tls,
                                max_connections=settings.mllp_max_connections,
                                reuse_port=settings.mllp_processes > 1, shared=_inherited_socket(),
                                proxy_protocol=settings.mllp_proxy_protocol)
    stop = stop or asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (RuntimeError, ValueError):
            pass  # not the main thread (tests run the listener in a thread and set `stop` themselves)
    log.info("MLLP listening", extra={"mllp": f"{settings.mllp_host}:{settings.mllp_port}", "tls": tls is not None})
    if ready is not None:
        ready.set()
    await stop.wait()
    log.info("MLLP stopping: finishing the messages in flight")
    await listener.stop(SHUTDOWN_GRACE_SECONDS)
    pool.shutdown(wait=True)
    engine.dispose()


def _inherited_socket() -> socket.socket | None:
    descriptor = os.environ.get(SOCKET_FD)
    return socket.socket(fileno=int(descriptor)) if descriptor else None


def _tls(settings: Settings):
    if settings.mllp_tls_cert is None:
        return None
    return mllp.tls_context(str(settings.mllp_tls_cert), str(settings.mllp_tls_key),
                            str(settings.mllp_tls_client_ca) if settings.mllp_tls_client_ca else None)


def tls_problems(settings: Settings) -> list[str]:
    """Why the MLLP TLS settings cannot be used, if they cannot: a certificate without its key (or a
    client CA without either) served MLLP in clear text without a word, and a file missing or
    unreadable was a traceback in the listener."""
    given = (settings.mllp_tls_cert, settings.mllp_tls_key, settings.mllp_tls_client_ca)
    if not any(given):
        return []
    if settings.mllp_tls_cert is None or settings.mllp_tls_key is None:
        return ["GATEWAY_MLLP_TLS_CERT and GATEWAY_MLLP_TLS_KEY go together (GATEWAY_MLLP_TLS_CLIENT_CA with them): "
                "without both, MLLP would be served in clear text"]
    try:
        _tls(settings)
    except (OSError, ssl.SSLError) as exc:
        return [f"the MLLP TLS files cannot be used (GATEWAY_MLLP_TLS_CERT, _KEY, _CLIENT_CA): {exc.strerror or exc}"]
    return []


def run(settings: Settings) -> int:
    from gateway.logs import configure

    configure(settings.log_level)
    asyncio.run(listen(settings))
    return 0
