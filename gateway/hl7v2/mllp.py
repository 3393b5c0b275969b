"""MLLP release 1 over asyncio streams: <VT> message <FS><CR>.

`FrameReader` reads frames from an `asyncio.StreamReader` with a size limit, `serve` runs a
listener whose connections are each handled in order (one message, its ACK, then the next), and
`send_messages` is the blocking client `gateway send` and the benchmarks use.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import socket
import ssl
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Iterable, Iterator, Protocol

from proxyprotocol import ProxyProtocolIncompleteError
from proxyprotocol.detect import ProxyProtocolDetect
from proxyprotocol.result import ProxyResult

from . import batch
from .er7 import MLLP_START

START = MLLP_START.encode()
END = b"\x1c\r"
CHUNK = 64 * 1024
# On a socket shared with sibling processes: how long a listener waits, per connection it has
# open, before taking a new one, and at most (`FewestConnectionsFirst`).
ACCEPT_DELAY_PER_CONNECTION = 0.01
ACCEPT_DELAY_MAX = 0.1
HEAD_KEPT = 64 * 1024  # of an oversized frame: enough for its MSH, to answer it
# A load balancer sends its PROXY protocol header as soon as it connects; a v1 header is one line.
PROXY_HEADER_SECONDS = 5.0
PROXY_V1_BYTES = 107

log = logging.getLogger(__name__)


class FrameTooLarge(Exception):
    def __init__(self, head: bytes, size: int):
        super().__init__(f"frame of {size} bytes")
        self.head, self.size = head, size


class UnendedFrame(Exception):
    """A frame begun and not ended by <FS><CR>: the peer closed the connection, or sent nothing more
    for the idle timeout (a sender ending its frames with <FS> alone waits so for its ACK). `head`
    is what came of it (its first HEAD_KEPT bytes past the size limit), `size` its bytes."""

    def __init__(self, head: bytes, size: int, idle: bool):
        super().__init__(f"frame of {size} bytes not ended")
        self.head, self.size, self.idle = head, size, idle


class FrameReader:
    def __init__(self, reader: asyncio.StreamReader, max_bytes: int, idle_timeout: float, peer: str = ""):
        self.reader, self.max_bytes, self.idle_timeout, self.peer = reader, max_bytes, idle_timeout, peer
        self.buffer = bytearray()
        self.unframed = 0   # bytes outside any frame, line breaks and spaces aside

    def _outside(self, data: bytearray) -> None:
        """Bytes outside a frame are ignored, and said once per connection: a sender that does not
        frame its messages (raw TCP, another start byte) was answered nothing, and nothing told why."""
        meaningful = len(bytes(data).translate(None, b" \t\r\n"))
        if meaningful and not self.unframed:
            log.warning("MLLP bytes outside a frame ignored: a message is framed <VT> message <FS><CR>",
                        extra={"peer": self.peer, "hl7v2_unframed": data.lstrip().startswith(b"MSH")})
        self.unframed += meaningful

    async def _more(self) -> bytes:
        return await asyncio.wait_for(self.reader.read(CHUNK), self.idle_timeout)

    async def frame(self) -> bytearray | None:
        """The next message, or None when the peer closed the connection between frames.

        Bytes outside a frame are ignored; an oversized frame is read to its end and dropped,
        keeping its head, so the connection stays usable. A frame not ended raises UnendedFrame."""
        while True:
            start = self.buffer.find(START)
            if start >= 0:
                self._outside(self.buffer[:start])
                del self.buffer[:start + 1]
                break
            self._outside(self.buffer)
            self.buffer.clear()
            chunk = await self._more()
            if not chunk:
                return None
            self.buffer += chunk
        scanned, dropped, head = 0, 0, None
        while True:
            end = self.buffer.find(END, max(0, scanned - 1))
            if end >= 0:
                # The frame is the buffer itself, cut at its end, and what follows it a new buffer:
                # no copy of the frame (making bytes of it held a 27 MB frame twice), and the
                # frame's memory goes with it rather than staying in the buffer while it is processed.
                body, self.buffer = self.buffer, self.buffer[end + len(END):]
                del body[end:]
                if head is not None or len(body) > self.max_bytes:
                    raise FrameTooLarge(head or bytes(body[:HEAD_KEPT]), dropped + len(body))
                return body
            scanned = len(self.buffer)
            if head is None and len(self.buffer) > self.max_bytes:
                head = bytes(self.buffer[:HEAD_KEPT])
            if head is not None and len(self.buffer) > CHUNK:
                # Keep the last byte: it may be the <FS> of the end marker.
                dropped += len(self.buffer) - 1
                del self.buffer[:-1]
                scanned = 1
            try:
                chunk = await self._more()
            except asyncio.TimeoutError:
                chunk = None
            if not chunk:
                cut, self.buffer = self.buffer, bytearray()
                raise UnendedFrame(head or bytes(cut), dropped + len(cut), idle=chunk is None)
            self.buffer += chunk


def frame(message: bytes) -> bytes:
    return START + message + END


Handler = Callable[[bytes, str], Awaitable[bytes | None]]
OversizeHandler = Callable[[bytes, int, str], Awaitable[bytes | None]]
UnendedHandler = Callable[[UnendedFrame, str], Awaitable[bytes | None]]


class Accepting(Protocol):
    """What accepts a listener's connections: asyncio's server, or `FewestConnectionsFirst`."""
    def close(self) -> None: ...
    async def wait_closed(self) -> None: ...


class FewestConnectionsFirst:
    """Accepts connections from a listening socket that sibling listener processes share, so that
    the process with the fewest connections takes the next one.

    Each incoming connection wakes every process; one with connections open waits a moment per
    connection before it accepts, and finds it taken if a less busy sibling got there first. A
    sender keeps its connection for hours, and one process runs one thread of Python at a time: the
    kernel's SO_REUSEPORT hashing put two connections on one process half the time, and then that
    process's core set the pace of both. A sibling that is gone or stuck only delays a connection
    by the wait."""

    def __init__(self, sock: socket.socket, open_connections: Callable[[], int],
                 adopt: Callable[[socket.socket], Awaitable[None]]):
        self.sock, self.open_connections, self.adopt = sock, open_connections, adopt
        sock.setblocking(False)   # its siblings' too: they share the open socket, flags included
        self.adopting: set[asyncio.Task] = set()
        self.task = asyncio.create_task(self._accept())

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await _readable(loop, self.sock)
            # Those being adopted count: a burst of connections would otherwise find this process
            # still idle after it took the first.
            delay = min(ACCEPT_DELAY_PER_CONNECTION * (self.open_connections() + len(self.adopting)),
                        ACCEPT_DELAY_MAX)
            if delay:
                await asyncio.sleep(delay)
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                continue   # a sibling took it, or its client left
            except OSError:
                # Out of descriptors, or the like: the connection stays queued for a sibling, or
                # for this process once it has some to spare.
                log.warning("MLLP accept failed", exc_info=True)
                await asyncio.sleep(ACCEPT_DELAY_MAX)
                continue
            conn.setblocking(False)
            task = asyncio.create_task(self.adopt(conn))
            self.adopting.add(task)
            task.add_done_callback(self.adopting.discard)

    def close(self) -> None:
        self.task.cancel()

    async def wait_closed(self) -> None:
        await asyncio.gather(self.task, *self.adopting, return_exceptions=True)
        self.sock.close()   # this process's descriptor, once no longer watched: the siblings keep accepting


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    ready = loop.create_future()

    def on_readable() -> None:
        loop.remove_reader(sock)
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock, on_readable)
    try:
        await ready
    finally:
        loop.remove_reader(sock)


@dataclass
class Listener:
    """A running MLLP listener: `stop()` stops accepting, lets the messages being processed finish
    and be acknowledged, then closes every connection."""
    server: Accepting
    idle: set = field(default_factory=set)     # connection tasks waiting for their next frame
    busy: set = field(default_factory=set)     # connection tasks processing a message
    stopping: bool = False

    async def stop(self, grace: float = 30.0) -> None:
        self.stopping = True
        self.server.close()
        idle = list(self.idle)
        for task in idle:
            task.cancel()
        await asyncio.gather(*idle, return_exceptions=True)
        if self.busy:
            await asyncio.wait(list(self.busy), timeout=grace)
        remaining = list(self.busy | self.idle)
        for task in remaining:
            task.cancel()
        await asyncio.gather(*remaining, return_exceptions=True)
        await self.server.wait_closed()


async def _proxied_peer(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> str | None:
    """The sender's address:port a load balancer's PROXY protocol header (v1 or v2) gives, read off
    the connection before anything else; "unknown" when the balancer did not know it; None (the
    connection is then closed) when no such header came in PROXY_HEADER_SECONDS."""
    try:
        result = await asyncio.wait_for(_proxy_header(loop, conn), PROXY_HEADER_SECONDS)
    except (ValueError, EOFError, OSError, asyncio.TimeoutError):
        log.warning("MLLP connection closed: it did not begin with a PROXY protocol header (GATEWAY_MLLP_PROXY_PROTOCOL)",
                    extra={"balancer": _peer_of(conn)})
        return None
    if result is None:   # closed at once, as /health's look at the listener does
        return None
    if not result.proxied:   # LOCAL: the balancer's own connection, a health check
        return _peer_of(conn)
    return _address(result.peername) if isinstance(result.peername, tuple) else "unknown"


async def _proxy_header(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> ProxyResult | None:
    """proxy-protocol's parser, fed exactly what it asks for: what follows the header on the socket
    (TLS's handshake, the first frame) is left there, as a stream reader would have read it into its
    buffer, out of TLS's reach. A v1 line is read a byte at a time (its end is not announced).
    None: the connection closed before its first byte."""
    parser, data = ProxyProtocolDetect(), bytearray()
    while True:
        try:
            return parser.unpack(bytes(data))
        except ProxyProtocolIncompleteError as incomplete:
            wanted = incomplete.want_read.want_bytes or 1
        if wanted == 1 and len(data) >= PROXY_V1_BYTES:
            raise ValueError("a PROXY protocol v1 line is at most 107 bytes")
        more = await loop.sock_recv(conn, wanted)
        if not more and not data:
            return None
        if not more:
            raise EOFError("the connection ended within its PROXY protocol header")
        data += more


def _peer_of(conn: socket.socket) -> str:
    try:
        return _address(conn.getpeername())
    except OSError:
        return "unknown"


def _address(peer) -> str:
    return f"{peer[0]}:{peer[1]}" if peer else "unknown"


def listening_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket on host:port (IPv6 for an IPv6 host)."""
    return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                backlog=128, reuse_port=reuse_port)


async def serve(host: str, port: int, handle: Handler, too_large: OversizeHandler, unended: UnendedHandler, *,
                max_bytes: int,
                idle_timeout: float, tls: ssl.SSLContext | None = None, max_connections: int = 32,
                reuse_port: bool = False, shared: socket.socket | None = None,
                proxy_protocol: bool = False) -> Listener:
    """A listener of at most `max_connections` connections at a time (each buffers at most
    `max_bytes` of an unfinished frame): a further one is closed as soon as it is accepted. With
    `reuse_port`, other processes listen on the same port and the kernel spreads connections; with
    `shared`, a listening socket sibling processes hold too, the least busy takes each connection
    (host and port are then the socket's). With `proxy_protocol`, each connection begins with a
    load balancer's PROXY protocol header, which names the sender; TLS, if any, begins after it."""
    listener: Listener

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer_name: str | None = None
                         ) -> None:
        task = asyncio.current_task()
        peer_name = peer_name or _address(writer.get_extra_info("peername"))
        if len(listener.idle) + len(listener.busy) >= max_connections:
            log.warning("MLLP connection refused: the listener has its maximum of connections",
                        extra={"max_connections": max_connections})
            writer.close()
            return
        frames = FrameReader(reader, max_bytes, idle_timeout, peer_name)
        try:
            while not listener.stopping:
                listener.idle.add(task)
                peer_waits = True
                try:
                    message = await frames.frame()
                except FrameTooLarge as oversized:
                    answer = too_large(oversized.head, oversized.size, peer_name)
                except UnendedFrame as cut:
                    # What came of it is kept, refused, and answered if the peer is still there:
                    # it was dropped without a word, and the sender's message lost.
                    log.warning("MLLP frame not ended by <FS><CR>", extra={
                        "peer": peer_name, "bytes": cut.size, "why": "idle" if cut.idle else "closed"})
                    if not cut.size:
                        break
                    answer, peer_waits = unended(cut, peer_name), cut.idle
                else:
                    if message is None:
                        break
                    answer = handle(message, peer_name)
                listener.idle.discard(task)
                listener.busy.add(task)
                ack = await answer
                if ack is not None and peer_waits:
                    writer.write(frame(ack))
                    await writer.drain()
                listener.busy.discard(task)
                if not peer_waits:
                    break
        except (asyncio.TimeoutError, ConnectionError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("MLLP connection failed", extra={"peer": peer_name})
        finally:
            listener.idle.discard(task)
            listener.busy.discard(task)
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, asyncio.CancelledError, ssl.SSLError):
                pass

    if shared is None and not proxy_protocol:
        server = await asyncio.start_server(connection, host, port, ssl=tls, limit=CHUNK * 2, reuse_port=reuse_port)
        listener = Listener(server)
        return listener
    if shared is None:   # the header is read before asyncio takes the connection: the accepting is ours
        shared = listening_socket(host, port, reuse_port)
    loop = asyncio.get_running_loop()

    async def adopt(conn: socket.socket) -> None:
        # What asyncio.start_server does with each connection it accepts, after the PROXY header.
        peer_name = None
        try:
            if proxy_protocol:
                # Connections still sending their header count (this one among them): silent ones
                # would otherwise pile up unbounded, 5 s each.
                if len(listener.idle) + len(listener.busy) + len(listener.server.adopting) > max_connections:
                    conn.close()
                    return
                peer_name = await _proxied_peer(loop, conn)
                if peer_name is None:
                    conn.close()
                    return
            protocol = asyncio.StreamReaderProtocol(asyncio.StreamReader(limit=CHUNK * 2),
                                                    functools.partial(connection, peer_name=peer_name))
            await loop.connect_accepted_socket(lambda: protocol, conn, ssl=tls)
        except (OSError, ssl.SSLError, asyncio.TimeoutError) as failure:
            log.info("MLLP connection failed before its first frame", extra={"reason": type(failure).__name__})
            conn.close()

    listener = Listener(FewestConnectionsFirst(shared, lambda: len(listener.idle) + len(listener.busy), adopt))
    return listener


def tls_context(cert: str, key: str, client_ca: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    if client_ca:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def send_messages(host: str, port: int, messages: Iterable[bytes], *, timeout: float = 30.0,
                  tls: ssl.SSLContext | None = None) -> Iterator[bytes | None]:
    """Send each message on one connection, waiting for its ACK (None when none comes in time)."""
    with socket.create_connection((host, port), timeout=timeout) as raw:
        sock = tls.wrap_socket(raw, server_hostname=host) if tls else raw
        pending = bytearray()
        for message in messages:
            sock.sendall(frame(message))
            try:
                while END not in pending:
                    chunk = sock.recv(CHUNK)
                    if not chunk:
                        raise ConnectionError("the gateway closed the connection")
                    pending += chunk
            except socket.timeout:
                yield None
                continue
            end = pending.index(END)
            start = pending.find(START)
            yield bytes(pending[start + 1:end])
            del pending[:end + len(END)]


def unframed_text(data: bytes) -> bytes | None:
    """A file of plain messages, its segments ended by CR as HL7 ends them (a file written with LF
    or CRLF line ends); None for a file of MLLP frames."""
    if START in data and END in data:
        return None
    return data.replace(b"\r\n", b"\r").replace(b"\n", b"\r")


def split_file(data: bytes) -> tuple[list[bytes], list[str]]:
    """The messages of a file: MLLP frames, or plain messages one after another (each from MSH), a
    batch's envelope left out; and what the envelope says that the file does not hold (a BTS-1
    count of messages other than the batch's: a file cut short)."""
    text = unframed_text(data)
    if text is None:
        return [part.split(START, 1)[1] for part in data.split(END) if START in part], []
    read = batch.read(text)
    return read.messages, read.problems
