"""Clients that send their request, or read its answer, slowly or not at all hold none of the HTTP
server's threads for longer than GATEWAY_HTTP_CLIENT_TIMEOUT (gateway.http.slow_clients).

The gateway here serves with one worker of two threads: two such clients held every thread before,
and nobody was answered, `/health` included, for as long as they stayed connected."""
import base64
import json
import os
import re
import socket
import time
from contextlib import ExitStack

import pytest
import requests
from sqlalchemy import func, select

from conftest import sample
from e2e_support import start_gateway, stop_gateway, token
from gateway.storage.database import make_engine
from gateway.storage.schema import raw_inputs

THREADS = 2
TIMEOUT = 3   # GATEWAY_HTTP_CLIENT_TIMEOUT, seconds
PATIENCE = 60   # what the test waits for any answer, far past TIMEOUT on a loaded machine
CUT_OFF = "a client read nothing of its answer within GATEWAY_HTTP_CLIENT_TIMEOUT"
GP = "899900000053"   # Dr NOEL, the attending physician of the demo record the document is added to


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    var = tmp_path_factory.mktemp("slow-clients") / "var"
    process, base, env = start_gateway(var, environment={"GATEWAY_THREADS": str(THREADS),
                                                         "GATEWAY_HTTP_CLIENT_TIMEOUT": str(TIMEOUT)})
    yield base, env, var
    stop_gateway(process)


def connect(base: str, receive_buffer: int | None = None) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.socket()
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(PATIENCE)
    sock.connect((host, int(port)))
    return sock


def read_to_the_end(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(1 << 20):
        received += chunk
    return received


def read_answer(sock: socket.socket) -> bytes:
    """One answer, by its Content-Length (gunicorn keeps the connection a few seconds more, to
    drain what is left of the body)."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        assert chunk, received
        received += chunk
    length = int(re.search(rb"\r\ncontent-length: (\d+)\r\n", received, re.IGNORECASE).group(1))
    while len(received.partition(b"\r\n\r\n")[2]) < length:
        chunk = sock.recv(65536)
        assert chunk, received
        received += chunk
    return received


def stored_inputs(var) -> int:
    engine = make_engine(f"sqlite:///{var / 'gateway.db'}")
    try:
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(raw_inputs)).scalar_one()
    finally:
        engine.dispose()


def test_requests_whose_headers_stall_are_answered_408_and_others_are_served(served):
    base, _env, _var = served
    with ExitStack() as stack:
        stalled = [stack.enter_context(connect(base)) for _ in range(2 * THREADS)]
        for sock in stalled:
            sock.sendall(b"GET /fhir/metadata HTTP/1.1\r\nHost: gateway\r\nAccept: application/fhir+json\r\n")
        # Every thread is, or was, reading one of those heads; the stalled clients stay connected.
        assert requests.get(f"{base}/health", timeout=PATIENCE).status_code == 200
        for sock in stalled:
            answer = read_to_the_end(sock)
            assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer[:200]
            assert b"GATEWAY_HTTP_CLIENT_TIMEOUT" in answer


@pytest.mark.parametrize("framing", ["Content-Length: 4000", "Transfer-Encoding: chunked"])
def test_a_body_that_stalls_is_answered_408_and_nothing_is_kept(served, framing):
    base, env, var = served
    system = token(env, "--role", "system", "--sub", "hospital")["Authorization"]
    kept = stored_inputs(var)
    with connect(base) as sock:
        first_part = b"<?xml version='1.0'?><ClinicalDocument xmlns='urn:hl7-org:v3'>"
        if "chunked" in framing:
            first_part = b"%x\r\n%s\r\n" % (len(first_part), first_part)
        sock.sendall(f"POST /cda HTTP/1.1\r\nHost: gateway\r\nAuthorization: {system}\r\n"
                     f"Content-Type: application/xml\r\n{framing}\r\n\r\n".encode() + first_part)
        answer = read_answer(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer[:300]
    outcome = json.loads(body)
    assert outcome["issue"][0]["code"] == "timeout"
    assert f"for {TIMEOUT} seconds (GATEWAY_HTTP_CLIENT_TIMEOUT)" in outcome["issue"][0]["diagnostics"]
    assert stored_inputs(var) == kept


def test_a_sign_in_form_that_stalls_is_told_in_french(served):
    base, _env, _var = served
    with connect(base) as sock:
        sock.sendall(b"POST /connexion HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: 200\r\n\r\nidentifiant=paul.martin&mot_de_passe=")
        answer = read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]
    assert "Envoi interrompu".encode() in answer and "pas arrivé complet".encode() in answer


def test_clients_that_read_nothing_of_a_large_answer_are_cut_off_and_others_are_served(served):
    base, env, var = served
    cda = sample("cr-hospitalisation-lefevre.xml").decode()
    cda = cda.replace('<id root="1.2.250.1.213.1.1.9.2.2.1"/>', '<id root="1.2.250.1.213.1.1.9.2.2.1.5401"/>', 1)
    pdf = base64.b64encode(b"%PDF-1.4\n" + os.urandom(8 << 20)).decode()   # an 11 MB document
    cda = re.sub(r'(representation="B64">)[^<]+(</text>)', lambda m: m.group(1) + pdf + m.group(2), cda, count=1)
    posted = requests.post(f"{base}/cda", data=cda.encode(), timeout=PATIENCE,
                           headers={"Content-Type": "application/xml",
                                    **token(env, "--role", "system", "--sub", "hospital")})
    assert posted.status_code == 201, posted.text[:500]
    binary = posted.json()["content"][0]["attachment"]["url"].removeprefix(base)
    doctor = token(env, "--role", "doctor", "--sub", GP)["Authorization"]
    with ExitStack() as stack:
        readers = [stack.enter_context(connect(base, receive_buffer=4096)) for _ in range(THREADS)]
        for sock in readers:
            sock.sendall(f"GET {binary} HTTP/1.1\r\nHost: gateway\r\nAuthorization: {doctor}\r\n"
                         "Accept: application/xml\r\n\r\n".encode())
        for sock in readers:
            # Its answer has begun: the thread is writing 11 MB to a client that reads nothing more.
            assert sock.recv(12, socket.MSG_WAITALL) == b"HTTP/1.1 200"
        assert requests.get(f"{base}/health", timeout=PATIENCE).status_code == 200
        # One reader cut off frees a thread for /health; the other may be cut a moment later. Each
        # is read only once the gateway has said it cut it: read earlier, its answer would go on.
        deadline = time.monotonic() + PATIENCE
        while (var / "serve.log").read_text().count(CUT_OFF) < THREADS:
            assert time.monotonic() < deadline, "the gateway did not cut every reader off"
            time.sleep(0.1)
        for sock in readers:
            answer = b"HTTP/1.1 200" + read_to_the_end(sock)
            length = int(re.search(rb"\r\nContent-Length: (\d+)\r\n", answer).group(1))
            assert len(answer.partition(b"\r\n\r\n")[2]) < length   # cut off, not held
    assert "Socket error processing request" not in (var / "serve.log").read_text()
