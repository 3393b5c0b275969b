"""Bounds on how long a client may keep one of the HTTP server's threads waiting on it.

A gunicorn worker serves `GATEWAY_THREADS` requests at a time, each in a thread that reads the
request and writes the answer with blocking calls: nothing bounded those waits. Sixteen
connections that sent part of a request's headers and nothing more held both workers' threads for
as long as they stayed open, and the gateway answered nobody, its `/health` included, so that the
load balancer took the node out. Here, with `GATEWAY_HTTP_CLIENT_TIMEOUT` (30 s):

- a request's line and headers must arrive within it, however slowly they trickle: past it the
  client gets `408` and the connection is closed (`HeadDeadlines`, one watchdog thread per worker);
- within a request's body and its answer, no read or write waits on the client longer than it: the
  kernel's own timeouts on the connection (`SO_RCVTIMEO`, `SO_SNDTIMEO`), set once the headers are
  in. A stalled body is answered `408` (`StalledBodies`); a stalled reader's answer is cut.
"""
from __future__ import annotations

import logging
import socket
import struct
import threading
import time

from werkzeug.exceptions import RequestTimeout

_HEAD_LATE = b"the request's line and headers did not all arrive within GATEWAY_HTTP_CLIENT_TIMEOUT\n"
HEAD_TIMED_OUT = (b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(_HEAD_LATE), _HEAD_LATE))


class HeadDeadlines:
    """The connections whose request head is being read, each with the moment it must be in by.

    A thread blocked reading a head cannot be interrupted: the watchdog shuts its connection down,
    which ends the read (gunicorn then drops the connection as one the client closed)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.reading: dict = {}
        self.lock = threading.Lock()
        self.watchdog = threading.Thread(target=self._watch, name="request-head-deadlines", daemon=True)
        self.watchdog.start()

    def start(self, sock: socket.socket) -> None:
        with self.lock:
            self.reading[sock] = time.monotonic() + self.seconds

    def done(self, sock: socket.socket) -> None:
        with self.lock:
            self.reading.pop(sock, None)

    def _watch(self) -> None:
        period = min(1.0, self.seconds / 4)
        while True:
            time.sleep(period)
            now = time.monotonic()
            with self.lock:
                late = [sock for sock, deadline in self.reading.items() if deadline <= now]
                for sock in late:
                    del self.reading[sock]
                    _close_late(sock)


def _close_late(sock: socket.socket) -> None:
    try:
        # The reading thread owns the connection: only what cannot block is done here.
        sock.send(HEAD_TIMED_OUT, socket.MSG_DONTWAIT)
    except OSError:
        pass
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def wait_at_most(sock: socket.socket, seconds: float | None) -> None:
    """The kernel's bound on one blocking read or write on `sock` (None: none). Python's own socket
    timeout would not hold: gunicorn sets its sockets blocking again before each request."""
    whole = int(seconds or 0)
    value = struct.pack("ll", whole, int(((seconds or 0) - whole) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


class StalledBodies:
    """WSGI middleware: a body read that waited out the connection's timeout is a `408`, not the
    `400` "could not understand" werkzeug makes of a failed read (a `500` for a chunked body)."""

    def __init__(self, app, seconds: float):
        self.app = app
        self.seconds = seconds

    def __call__(self, environ, start_response):
        environ["wsgi.input"] = _TimedInput(environ["wsgi.input"], self.seconds)
        return self.app(environ, start_response)


class _TimedInput:
    def __init__(self, stream, seconds: float):
        self.stream = stream
        self.seconds = seconds

    def read(self, *size):
        return self._waited(self.stream.read, *size)

    def readline(self, *size):
        return self._waited(self.stream.readline, *size)

    def readlines(self, *hint):
        return self._waited(self.stream.readlines, *hint)

    def __iter__(self):
        return iter(self.readline, b"")

    def _waited(self, reading, *arguments):
        try:
            return reading(*arguments)
        except (BlockingIOError, TimeoutError):
            raise RequestTimeout(f"no byte of the request's body arrived for {self.seconds:g} seconds "
                                 "(GATEWAY_HTTP_CLIENT_TIMEOUT): the request was not read") from None


class StalledReaders(logging.Filter):
    """gunicorn logs an answer it could not write, its client having read nothing for the timeout,
    as a socket error with its traceback: that is a client's doing, said in a line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, (BlockingIOError, TimeoutError)):
            record.msg, record.args, record.exc_info, record.exc_text = (
                "a client read nothing of its answer within GATEWAY_HTTP_CLIENT_TIMEOUT: its connection was "
                "closed", (), None, None)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True
