"""MLLP behind a TCP load balancer (deploy/haproxy.cfg): haproxy's PROXY protocol header
(send-proxy, send-proxy-v2) names each connection's sender, whom GATEWAY_MLLP_SENDERS' @address
admits and the raw input records. Without it every sender had the balancer's address: a rule
naming a hospital's address refused all its messages, one naming the balancer admitted anyone."""
import json
import socket
import ssl
from dataclasses import replace
from ipaddress import IPv4Address

import pytest
from proxyprotocol.result import ProxyResultIPv4
from proxyprotocol.v2 import ProxyProtocolV2
from sqlalchemy import select

from conftest import ROOT, free_port
from gateway.storage.schema import raw_inputs, resources
from test_mllp import listener_running, mllp_send_on, msa
from test_mllp_tls import make_pki

ADMITTED = ("GAM|CH-SAINT-AUBIN@10.0.0.7",)
A01 = (ROOT / "samples" / "hl7v2" / "adt-a01-martin.hl7").read_bytes()


def message(control_id: str) -> bytes:
    return A01.replace(b"|ADT0001|", f"|{control_id}|".encode(), 1)


@pytest.fixture
def backend():
    """The header is the transport's: one backend shows it."""
    return "sqlite"


def v1(source: str, port: int) -> bytes:
    """The line haproxy's send-proxy writes."""
    return f"PROXY TCP4 {source} 10.0.0.1 {port} 2575\r\n".encode()


def v2(source: str, port: int) -> bytes:
    """haproxy's send-proxy-v2 header, as proxy-protocol builds it."""
    return ProxyProtocolV2().pack(ProxyResultIPv4((IPv4Address(source), port), (IPv4Address("10.0.0.1"), 2575)))


def requesters(engine) -> list[str]:
    with engine.connect() as conn:
        return [json.loads(r)["subject"] for r in conn.execute(select(raw_inputs.c.requester).order_by(raw_inputs.c.id))
                .scalars()]


def test_the_balancer_s_header_names_the_sender_whom_the_address_rule_admits(settings, database, caplog):
    live = replace(settings, mllp_host="127.0.0.1", mllp_port=free_port(), mllp_senders=ADMITTED,
                   mllp_proxy_protocol=True)
    with listener_running(live):
        with socket.create_connection(("127.0.0.1", live.mllp_port), timeout=30) as sender:
            sender.sendall(v2("10.0.0.8", 40001))
            [ack] = mllp_send_on(sender, message("PROXY1"))
            assert msa(ack)[1] == "AR" and b"not admitted" in ack
        for n, header in enumerate((v1("10.0.0.7", 40002), v2("10.0.0.7", 40003)), start=2):
            with socket.create_connection(("127.0.0.1", live.mllp_port), timeout=30) as sender:
                sender.sendall(header)
                [ack] = mllp_send_on(sender, message(f"PROXY{n}"))
                assert msa(ack)[1] == "AA", ack
        # Opened and closed at once, as /health looks at the listener (and haproxy's checks ask
        # /health every 2 s): nothing to say.
        socket.create_connection(("127.0.0.1", live.mllp_port), timeout=30).close()
        # No header: the connection is closed unanswered, nothing kept (a sender that reaches the
        # node past the balancer could write any address in one).
        with socket.create_connection(("127.0.0.1", live.mllp_port), timeout=30) as sender:
            sender.sendall(b"\x0b" + message("PROXY4") + b"\x1c\r")
            try:
                assert sender.recv(4096) == b""
            except ConnectionResetError:   # closed with the message unread
                pass
    assert requesters(database[0]) == ["mllp 10.0.0.8:40001", "mllp 10.0.0.7:40002", "mllp 10.0.0.7:40003"]
    # The trail gives what the sender wrote its address (it was "localhost", as for the gateway's own processes).
    with database[0].connect() as conn:
        events = [json.loads(body) for body in conn.execute(select(resources.c.body).where(
            resources.c.res_type == "AuditEvent")).scalars()]
    networks = {json.dumps(agent["network"]) for event in events for agent in event["agent"] if agent.get("requestor")}
    assert networks == {json.dumps({"address": "10.0.0.7", "type": "2"})}, networks
    assert [r.getMessage() for r in caplog.records if r.name == "gateway.hl7v2.mllp"] == [
        "MLLP connection closed: it did not begin with a PROXY protocol header (GATEWAY_MLLP_PROXY_PROTOCOL)"]


def test_tls_begins_after_the_header(settings, database, tmp_path):
    """haproxy passes TLS through (mode tcp) and writes its header before the sender's handshake."""
    pki = make_pki(tmp_path / "pki")
    live = replace(settings, mllp_host="127.0.0.1", mllp_port=free_port(), mllp_senders=ADMITTED,
                   mllp_proxy_protocol=True, mllp_tls_cert=pki / "listener.pem", mllp_tls_key=pki / "listener-key.pem")
    trusting = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    with listener_running(live):
        with socket.create_connection(("127.0.0.1", live.mllp_port), timeout=30) as plain:
            plain.sendall(v1("10.0.0.7", 40004))
            with trusting.wrap_socket(plain, server_hostname="localhost") as sender:
                [ack] = mllp_send_on(sender, message("PROXYTLS"))
                assert msa(ack)[1] == "AA", ack
    assert requesters(database[0]) == ["mllp 10.0.0.7:40004"]
