"""What bounds a slow client's hold on a thread (gateway.http.slow_clients), part by part; the
gateway served with them is tests/e2e/test_slow_clients.py."""
import io
import logging
import socket
import struct
import sys

import pytest
from werkzeug.exceptions import RequestTimeout

from gateway.http.slow_clients import HEAD_TIMED_OUT, HeadDeadlines, StalledBodies, StalledReaders, wait_at_most


def test_a_head_not_in_by_its_deadline_is_answered_408_and_its_connection_shut():
    server, client = socket.socketpair()
    with server, client:
        deadlines = HeadDeadlines(0.2)
        deadlines.start(server)
        client.settimeout(30)
        answer = b""
        while chunk := client.recv(4096):   # the shutdown ends it: a read blocked on `server` returns too
            answer += chunk
        assert answer == HEAD_TIMED_OUT
        assert server.recv(10) == b""
        assert server not in deadlines.reading


def test_a_head_read_in_time_is_left_alone():
    server, client = socket.socketpair()
    with server, client:
        deadlines = HeadDeadlines(0.2)
        deadlines.start(server)
        deadlines.done(server)
        other, other_client = socket.socketpair()
        with other, other_client:
            # One started later is shut once its own deadline passes: the watchdog has looked since.
            deadlines.start(other)
            other_client.settimeout(30)
            while other_client.recv(4096):
                pass
        client.setblocking(False)
        with pytest.raises(BlockingIOError):
            client.recv(1)   # nothing was sent to it, and it is still open


def test_the_kernel_bounds_each_read_and_write_and_none_lifts_it():
    sock = socket.socket()
    with sock:
        wait_at_most(sock, 2.5)
        for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
            assert struct.unpack("ll", sock.getsockopt(socket.SOL_SOCKET, option, 16)) == (2, 500000)
        wait_at_most(sock, None)
        assert struct.unpack("ll", sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16)) == (0, 0)


class StallingBody(io.BytesIO):
    def read(self, *size):
        raise BlockingIOError(11, "Resource temporarily unavailable")

    readline = readlines = read


@pytest.mark.parametrize("read", ["read", "readline", "readlines", "iterate"])
def test_a_body_read_that_waited_out_the_timeout_is_a_408(read):
    seen = {}

    def app(environ, start_response):
        stream = environ["wsgi.input"]
        seen["error"] = pytest.raises(RequestTimeout, list if read == "iterate" else getattr(stream, read),
                                      *([stream] if read == "iterate" else []))
        return []

    StalledBodies(app, 30)({"wsgi.input": StallingBody()}, None)
    assert "for 30 seconds (GATEWAY_HTTP_CLIENT_TIMEOUT)" in seen["error"].value.description


def test_a_body_read_as_it_comes_is_untouched():
    def app(environ, start_response):
        stream = environ["wsgi.input"]
        return [stream.readline(), stream.read(3), *stream]

    assert StalledBodies(app, 30)({"wsgi.input": io.BytesIO(b"one\ntwo\nthree\n")}, None) == \
        [b"one\n", b"two", b"\n", b"three\n"]


def test_an_answer_its_client_did_not_read_is_logged_in_a_line():
    def record(error: BaseException) -> logging.LogRecord:
        try:
            raise error
        except OSError:
            return logging.LogRecord("gunicorn.error", logging.ERROR, __file__, 1, "Socket error processing request.",
                                     (), sys.exc_info())

    stalled = record(BlockingIOError(11, "Resource temporarily unavailable"))
    assert StalledReaders().filter(stalled)
    assert (stalled.levelname, stalled.exc_info) == ("WARNING", None)
    assert stalled.getMessage().startswith("a client read nothing of its answer")
    other = record(OSError(9, "Bad file descriptor"))
    assert StalledReaders().filter(other)
    assert other.levelname == "ERROR" and other.exc_info is not None
