"""Nodes that add up: one and two `gateway serve` over one PostgreSQL behind Debian's haproxy (HTTP,
and MLLP in TCP mode), measured with the same load: audited ITI-67 searches (each writes its
AuditEvent) over HTTP, and ADT^A28 over MLLP on 8 connections.

`python -m bench.nodes` needs GATEWAY_BENCH_POSTGRES_URL and haproxy; `make bench` runs it when
both are there. Every process runs on this machine: the client, haproxy and PostgreSQL share its
cores with the nodes, so the figures show the mechanism (no lock between nodes; CPU the limit), not
what separate machines would reach."""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.client import HTTPConnection
from pathlib import Path
from typing import Callable

from bench.databases import scratch_database
from bench.figures import machine_busy, machine_jiffies, wait_until
from bench.hl7v2 import _cpu_seconds, _free_port, _throughput, adt

ROOT = Path(__file__).resolve().parents[1]
SECONDS = 6.0
# Enough searches in flight that two nodes' 8 threads each always have one to serve: with 2x6,
# two nodes waited for the clients (331 searches a second where 2x16 gave 366-397).
CLIENT_PROCESSES, CLIENT_THREADS = 2, 16


def _wait_for(port: int, process: subprocess.Popen) -> None:
    wait_until(lambda: _accepts(port), [process], f"something listening on {port}")


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _tree_cpu(pid: int) -> float:
    """CPU seconds of a process and of its children still running."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return _cpu_seconds(pid) + sum(_tree_cpu(int(child)) for child in children)


def _node(env: dict, workdir: Path, index: int) -> tuple[subprocess.Popen, int, int]:
    http, mllp = _free_port(), _free_port()
    node_env = dict(env, GATEWAY_HTTP_PORT=str(http), GATEWAY_MLLP_PORT=str(mllp),
                    GATEWAY_VAR_DIR=str(workdir / f"node{index}"))
    log = open(workdir / f"node{index}.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], env=node_env, cwd=ROOT,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    _wait_for(http, process)
    _wait_for(mllp, process)
    return process, http, mllp


def _haproxy(workdir: Path, nodes: list[tuple[int, int]]) -> tuple[subprocess.Popen, int, int]:
    http, mllp = _free_port(), _free_port()
    config = workdir / "haproxy.cfg"
    config.write_text("\n".join([
        "global", "  maxconn 1000",
        "defaults", "  timeout connect 5s", "  timeout client 300s", "  timeout server 300s",
        f"frontend http\n  mode http\n  bind 127.0.0.1:{http}\n  default_backend nodes",
        "backend nodes\n  mode http\n  balance roundrobin\n  option http-keep-alive",
        *[f"  server n{i} 127.0.0.1:{h}" for i, (h, _) in enumerate(nodes)],
        f"frontend mllp\n  mode tcp\n  bind 127.0.0.1:{mllp}\n  default_backend listeners",
        "backend listeners\n  mode tcp\n  balance leastconn",
        *[f"  server l{i} 127.0.0.1:{m}" for i, (_, m) in enumerate(nodes)], ""]))
    process = subprocess.Popen([shutil.which("haproxy") or "/usr/sbin/haproxy", "-db", "-f", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(http, process)
    return process, http, mllp


def _searcher(port: int, tokens: list[str], start_at: float, counts) -> None:
    done = [0] * CLIENT_THREADS
    failures = [0] * CLIENT_THREADS

    def run(slot: int) -> None:
        # http.client rather than requests: a fifth of the CPU a request, which the nodes share.
        connection = HTTPConnection("127.0.0.1", port, timeout=30)
        while time.time() < start_at:
            time.sleep(0.001)
        i = slot
        while time.time() < start_at + SECONDS:
            token = tokens[i % len(tokens)]
            connection.request("GET", "/fhir/DocumentReference?status=current",
                               headers={"Authorization": f"Bearer {token}"})
            response = connection.getresponse()
            response.read()
            if response.status == 200:
                done[slot] += 1
            else:
                failures[slot] += 1
            i += CLIENT_THREADS
        connection.close()

    threads = [threading.Thread(target=run, args=(slot,)) for slot in range(CLIENT_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counts.put((sum(done), sum(failures)))


def _measured(run: Callable[[Callable[[], None]], dict], nodes_cpu: Callable[[], float], work: str) -> dict:
    """`run`'s figures, with the nodes' CPU seconds over its measured part (from its call of the
    `begin` it is given to its end), its `work` (searches or messages, whose rate the figures give)
    per node-CPU-second, and how busy the whole machine was meanwhile."""
    start: dict = {}

    def begin() -> None:
        start["cpu"], start["jiffies"] = nodes_cpu(), machine_jiffies()

    figures = run(begin)
    used, (_, busy_percent) = nodes_cpu() - start["cpu"], machine_busy(start["jiffies"])
    seconds = figures.pop("seconds")
    figures["nodes_cpu_seconds"] = round(used, 1)
    figures[f"{work}_per_node_cpu_second"] = round(figures[f"{work}_per_second"] * seconds / used, 1)
    figures["machine_busy_percent"] = busy_percent
    return figures


def _searches(port: int, tokens: list[str], begin: Callable[[], None]) -> dict:
    context = multiprocessing.get_context("spawn")
    counts = context.Queue()
    start_at = time.time() + 3.0
    clients = [context.Process(target=_searcher, args=(port, tokens, start_at, counts))
               for _ in range(CLIENT_PROCESSES)]
    for client in clients:
        client.start()
    time.sleep(max(0.0, start_at - time.time()))  # the clients' start: the measure covers their run only
    begin()
    results = [counts.get(timeout=120) for _ in clients]
    for client in clients:
        client.join(30)
    done, failures = sum(r[0] for r in results), sum(r[1] for r in results)
    return {"searches_per_second": round(done / SECONDS, 1), "failures": failures, "seconds": SECONDS}


def _ingest(port: int, messages: list[bytes], begin: Callable[[], None]) -> dict:
    begin()
    started = time.perf_counter()
    figures = _throughput(port, messages, 8)
    figures["seconds"] = time.perf_counter() - started
    return figures


def bench_nodes(postgres_url: str) -> dict:
    from gateway.access.tokens import issue, make_signing_key
    from gateway.config import Settings
    from gateway.services.documents import ingest_cda
    from gateway.access import AccessContext
    from gateway.storage.database import make_engine
    from gateway.storage.migrate import upgrade
    from gateway.storage.repository import Repository

    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp, scratch_database(postgres_url, Path(tmp), "nodes") as url:
        workdir = Path(tmp)
        engine = make_engine(url)
        upgrade(engine)
        # A few records to search: each patient's documents, read by a doctor the patient has as
        # attending physician (the sample's own).
        repo = Repository(engine, AccessContext.system("bench"), "http://bench")
        for name in ("ldl-ses-martin.xml", "cr-biologie-martin.xml", "cr-hospitalisation-lefevre.xml"):
            ingest_cda(repo, (ROOT / "samples" / "cda" / name).read_bytes(), max_bytes=20 << 20)
        engine.dispose()
        key = make_signing_key(workdir / "keys", "bench")
        settings = Settings.from_env()
        tokens = [issue(key.read_bytes(), "bench", settings.jwt_issuer, settings.jwt_audience,
                        {"sub": "patient", "role": "patient", "patient": ins}, 3600)
                  for ins in ("185067511204554", "292086938701277")]
        env = dict(os.environ, GATEWAY_DATABASE_URL=url, GATEWAY_JWT_KEYS=str(workdir / "keys" / "bench.pem"),
                   GATEWAY_HOST="127.0.0.1", GATEWAY_WORKERS="1", GATEWAY_MLLP_PROCESSES="1",
                   GATEWAY_LOG_LEVEL="WARNING", GATEWAY_PUBLIC_BASE_URL="http://bench",
                   GATEWAY_DEMO_DIR=str(workdir / "demo"))
        offset = 0
        for count in (1, 2):
            nodes = [_node(env, workdir, i) for i in range(count)]
            proxy, http, mllp = _haproxy(workdir, [(h, m) for _, h, m in nodes])
            try:
                # The nodes' processes (gunicorn, its worker, the listener, the notifier): their CPU.
                def nodes_cpu() -> float:
                    return sum(_tree_cpu(p.pid) for p, _, _ in nodes)

                figures = _measured(lambda begin: _searches(http, tokens, begin), nodes_cpu, "searches")
                messages = [adt(offset + n) for n in range(400)]
                figures["ingest"] = _measured(lambda begin: _ingest(mllp, messages, begin), nodes_cpu, "messages")
                offset += 400
                figures["load_average"] = round(os.getloadavg()[0], 2)
                results[f"{count} node(s)"] = figures
            finally:
                proxy.terminate()
                proxy.wait(30)
                for process, _, _ in nodes:
                    process.terminate()
                for process, _, _ in nodes:
                    process.wait(60)
        one, two = results["1 node(s)"], results["2 node(s)"]
        results["searches_two_nodes_over_one"] = round(two["searches_per_second"] / one["searches_per_second"], 2)
        results["ingest_two_nodes_over_one"] = round(two["ingest"]["messages_per_second"]
                                                     / one["ingest"]["messages_per_second"], 2)
    results["note"] = (f"each node: `gateway serve` with 1 HTTP worker and 1 MLLP listener; haproxy roundrobin "
                       f"(HTTP) and leastconn (MLLP, TCP mode); {CLIENT_PROCESSES}x{CLIENT_THREADS} client threads "
                       f"searching for {SECONDS:.0f} s (each search writes its AuditEvent), then 400 ADT^A28 on 8 "
                       "connections; everything on this 2-core machine. Per node-CPU-second: the work one node's "
                       "CPU does, which a lock between nodes would lower; machine_busy_percent: all the machine's "
                       "CPU in use, the client, haproxy and PostgreSQL included")
    return results


if __name__ == "__main__":
    print(json.dumps(bench_nodes(os.environ["GATEWAY_BENCH_POSTGRES_URL"]), indent=2))
