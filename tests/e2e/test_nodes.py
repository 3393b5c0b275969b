"""Two nodes as a deployment runs them: two `gateway serve` over one PostgreSQL, behind Debian's
haproxy with the configuration the README gives (deploy/haproxy.cfg: HTTP in round robin, MLLP in
TCP mode to the node with fewer connections), all started here. Whichever node a connection
reaches, a message or a document is stored once, a search's `next` link from one node is followed
on the other, and the audit trail both extend verifies. No lock joins the nodes: with half the
audit trail's chains held by another transaction all along, both still acknowledge and answer (a
trail extended under one lock, as it was, stops them both). How much two nodes deliver against one
is measured in bench/nodes.py, not here."""
import json
import os
import re
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import hl7.client
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import bindparam, text

from conftest import ROOT, free_port, new_postgres_database
from e2e_support import GATEWAY, start_gateway, stop_gateway, token
from gateway.access import audit
from gateway.storage.database import make_engine

HAPROXY = shutil.which("haproxy", path=os.environ.get("PATH", "") + os.pathsep + "/usr/sbin")
GP = "899900000053"        # the demo's general practitioner: 7 documents of his patients
MESSAGES = 12


def adt_a28(n: int) -> bytes:
    return (f"MSH|^~\\&|GAM|NODES|GW|DMP|20260101||ADT^A28^ADT_A05|N{n:04d}|P|2.5\r"
            f"PID|1||7{n:08d}^^^CH&1.2.250.1.213.1.1.9.1001&ISO^PI||NODE{n}^TEST||19800101|F\r").encode()


def new_document() -> tuple[bytes, str]:
    """Paul Martin's lab report under a document id of its own: a new document to the gateway."""
    cda = (ROOT / "samples" / "cda" / "cr-biologie-martin.xml").read_text(encoding="utf-8")
    found = re.search(r'<id root="([0-9.]+)"/>', cda)
    document_id = f"{found.group(1)}.{time.time_ns()}"
    return cda.replace(found.group(0), f'<id root="{document_id}"/>', 1).encode(), document_id


SENT_FROM: list[int] = []   # the local port of each connection mllp_exchange opened


def mllp_exchange(port: int, message: bytes) -> bytes:
    """One message on a connection of its own (python-hl7's client): its ACK, unframed."""
    with hl7.client.MLLPClient("127.0.0.1", port) as client:
        client.socket.settimeout(60)
        SENT_FROM.append(client.socket.getsockname()[1])
        return client.send_message(message).strip(b"\x0b\x1c\r")


def counted(base: str, name: str, label: str, prefix: str) -> float:
    """A node's own counter (read from the node, not through haproxy), summed over the samples
    whose `label` starts with `prefix`."""
    scraped = requests.get(f"{base}/metrics", timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(scraped) for sample in family.samples
               if sample.name == name and sample.labels.get(label, "").startswith(prefix))


def at_once(send) -> list:
    """The answers of `send` run by two threads let go together."""
    start = threading.Barrier(2)

    def run(_):
        start.wait(30)
        return send()

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(run, range(2)))
    return answers


@pytest.fixture
def haproxy_binary():
    if HAPROXY is None:
        if os.environ.get("GATEWAY_REQUIRE_HAPROXY") == "1":
            pytest.fail("haproxy is required here (GATEWAY_REQUIRE_HAPROXY=1)")
        pytest.skip("haproxy is not installed (Debian: apt-get install haproxy)")
    return HAPROXY


def start_haproxy(binary: str, workdir: Path, http_port: int, mllp_port: int, nodes: list[dict]) -> subprocess.Popen:
    """deploy/haproxy.cfg, the configuration the README gives, with this machine's addresses and
    ports: each line it changes must be there, once."""
    config = (ROOT / "deploy" / "haproxy.cfg").read_text()
    lines = {"  bind :8080\n": f"  bind 127.0.0.1:{http_port}\n", "  bind :2575\n": f"  bind 127.0.0.1:{mllp_port}\n"}
    for number, node in enumerate(nodes, start=1):
        http, mllp = node["GATEWAY_HTTP_PORT"], node["GATEWAY_MLLP_PORT"]
        lines[f"10.0.0.1{number}:8080 check\n"] = f"127.0.0.1:{http} check\n"
        lines[f"10.0.0.1{number}:2575 check port 8080 "] = f"127.0.0.1:{mllp} check port {http} "
    for line, local in lines.items():
        assert config.count(line) == 1, line
        config = config.replace(line, local)
    (workdir / "haproxy.cfg").write_text(config)
    check = subprocess.run([binary, "-c", "-f", str(workdir / "haproxy.cfg")], capture_output=True, text=True,
                           timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    log = (workdir / "haproxy.log").open("wb")
    process = subprocess.Popen([binary, "-db", "-f", str(workdir / "haproxy.cfg")], stdout=subprocess.DEVNULL,
                               stderr=log)
    log.close()
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(f"http://127.0.0.1:{http_port}/health", timeout=5).status_code == 200:
                return process
        except requests.RequestException:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            process.wait(10)
            pytest.fail("haproxy did not forward to the nodes: " + (workdir / "haproxy.log").read_text()[-2000:])
        time.sleep(0.1)


def test_two_nodes_behind_haproxy_share_one_record_with_no_lock_between_them(tmp_path, haproxy_binary):
    http_port, mllp_port = free_port(), free_port()
    balancer = f"http://127.0.0.1:{http_port}"
    # The nodes share what a deployment shares: the database, the keys (tokens, the session and
    # search cursor key), the public URL, the load balancer's, and the client's address it forwards.
    shared = {"GATEWAY_DEMO_DIR": str(tmp_path / "demo"), "GATEWAY_PUBLIC_BASE_URL": balancer,
              "GATEWAY_MLLP_PROCESSES": "1", "GATEWAY_LOG_LEVEL": "WARNING", "GATEWAY_PROXIES": "1",
              "GATEWAY_MLLP_PROXY_PROTOCOL": "1"}
    with new_postgres_database("gateway_nodes") as url:
        started, proxy = [], None
        engine = make_engine(url)
        holder = engine.connect()
        try:
            for i in range(2):
                started.append(start_gateway(tmp_path / f"node{i}", url, environment=shared, demo_setup=i == 0))
            proxy = start_haproxy(haproxy_binary, tmp_path, http_port, mllp_port, [env for _, _, env in started])
            # Another transaction holds half the chains of the audit trail throughout (with a single
            # chain, that one).
            for chain in range(max(1, audit.CHAINS // 2)):
                holder.execute(text("SELECT pg_advisory_lock(:key, :chain)"), {"key": audit.AUDIT_LOCK, "chain": chain})

            # Each message on a connection of its own, the last one closed: both nodes have none
            # open, and haproxy takes them in turn.
            acks = [mllp_exchange(mllp_port, adt_a28(n)) for n in range(MESSAGES)]
            assert all(ack.split(b"\r")[1].startswith(b"MSA|AA|") for ack in acks), acks
            # The first message sent again, twice: one of the two lands on the node that did not
            # store it, and both are answered as the first was.
            assert [mllp_exchange(mllp_port, adt_a28(0)) for _ in range(2)] == [acks[0]] * 2

            gp = token(started[0][2], "--role", "doctor", "--sub", GP)
            pages, link = [], f"{balancer}/fhir/DocumentReference?status=current&_count=2"
            while link:
                page = requests.get(link, headers=gp, timeout=60)
                assert page.status_code == 200, page.text
                assert page.headers["Content-Encoding"] == "gzip"   # requests asks for it
                pages.append(page.json())
                link = next((li["url"] for li in page.json().get("link", []) if li["relation"] == "next"), None)
            assert sum(len(p.get("entry", [])) for p in pages) == 7 and len(pages) == 4
            # A new message, and a new document, each sent twice at once on connections of their
            # own (so once to each node): stored once, both messages acknowledged alike, the
            # second document answered as a duplicate.
            twice = at_once(lambda: mllp_exchange(mllp_port, adt_a28(MESSAGES)))
            assert twice[0] == twice[1] and twice[0].split(b"\r")[1].startswith(b"MSA|AA|"), twice
            # Each message is recorded as sent from its sender's connection (haproxy's PROXY
            # header), not from the balancer's to the node.
            with engine.connect() as conn:
                senders = [json.loads(r)["subject"] for r in conn.execute(
                    text("SELECT requester FROM raw_inputs WHERE channel = 'mllp'")).scalars()]
            assert len(senders) == MESSAGES + 1   # a duplicate is answered, not kept again
            assert {int(s.rsplit(":", 1)[1]) for s in senders} <= set(SENT_FROM), (senders, SENT_FROM)
            document, document_id = new_document()
            posted = at_once(lambda: requests.post(f"{balancer}/cda", data=document, timeout=60, headers={
                **gp, "Content-Type": "application/xml"}).status_code)
            assert sorted(posted) == [200, 201]
            assert "Content-Encoding" not in requests.get(f"{balancer}/connexion", timeout=60).headers
            # Both nodes took their share of the messages and of the searches.
            for _, base, _ in started:
                assert counted(base, "gateway_ingests_total", "channel", "mllp") > 0
                assert counted(base, "gateway_ingests_total", "channel", "cda") == 1
                assert counted(base, "gateway_http_requests_total", "endpoint", "/fhir/") > 0
        finally:
            holder.close()
            engine.dispose()
            if proxy is not None:
                proxy.terminate()
                proxy.wait(30)
            for process, _, _ in started:
                stop_gateway(process)

        for _, _, env in started:
            log = (Path(env["GATEWAY_VAR_DIR"]) / "serve.log").read_text(errors="replace")
            assert "[ERROR]" not in log, log[-2000:]
        with engine.connect() as conn:
            kept = conn.execute(text("SELECT control_id, count(*) FROM raw_inputs WHERE sender = 'GAM|NODES' "
                                     "GROUP BY control_id")).all()
            documents = conn.execute(text("SELECT count(*) FROM unique_identifiers WHERE res_type = "
                                          "'DocumentReference' AND value = :value"),
                                     {"value": f"urn:oid:{document_id}"}).scalar_one()
            patients = conn.execute(text("SELECT count(*) FROM unique_identifiers WHERE res_type = 'Patient' "
                                         "AND value IN :values").bindparams(bindparam("values", expanding=True)),
                                    {"values": [f"7{n:08d}" for n in range(MESSAGES + 1)]}).scalar_one()
        engine.dispose()
        assert sorted(kept) == [(f"N{n:04d}", 1) for n in range(MESSAGES + 1)]
        assert patients == MESSAGES + 1 and documents == 1
        verified = subprocess.run([str(GATEWAY), "audit", "verify"], env=started[0][2], cwd=ROOT,
                                  capture_output=True, text=True, timeout=120)
        assert verified.returncode == 0 and "intact" in verified.stdout, verified.stdout + verified.stderr
