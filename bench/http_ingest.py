"""POST /cda over HTTP: 100 KB CDA documents sent to a served gateway (`gateway serve`, 2 HTTP
workers, as `make run` starts it) by 1 and by 8 clients at once, on SQLite and (given a server)
PostgreSQL. Documents a second, the 201's latency p50/p95, and the gateway's CPU per document.
`python -m bench.http_ingest` takes GATEWAY_BENCH_POSTGRES_URL when set."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from bench.databases import scratch_database
from bench.figures import backends, cpu_figures, machine_busy, machine_jiffies, percentile
from bench.memory import served
from bench.nodes import _tree_cpu


def bench_cda_http(documents: list[bytes], postgres_url: str | None) -> dict:
    """Half the documents for 1 client, half for 8; every document a new one."""
    results: dict = {}
    half = len(documents) // 2
    for backend, server in backends(postgres_url):
        with contextlib.ExitStack() as stack:
            url = stack.enter_context(scratch_database(server, Path(stack.enter_context(tempfile.TemporaryDirectory())),
                                                       "cda_http")) if server else None
            base, _, auth, root = stack.enter_context(served(workers=2, database_url=url))
            for clients, share in ((1, documents[:half]), (8, documents[half:])):
                results.setdefault(backend, {})[f"{clients} client(s)"] = _posted(base, auth, root, share, clients)
    results["note"] = ("`gateway serve` (2 HTTP workers, 8 threads each) on loopback, the clients in this process "
                       "(requests, one session each); each 201 after the commit of its document. client_cpu: the bench's "
                       "process (the clients); machine_*: the whole machine's CPU over the run (gateway, client, "
                       "database, kernel, anything else running)")
    return results


def _posted(base: str, auth: dict, root: int, documents: list[bytes], clients: int) -> dict:
    latencies: list[float] = []

    def client(share: list[bytes]) -> list[int]:
        """The statuses of one client's answers (a count shared by the clients lost some of its updates)."""
        statuses = []
        with requests.Session() as session:
            for data in share:
                started = time.perf_counter()
                statuses.append(session.post(f"{base}/cda", data=data, timeout=120,
                                             headers={**auth, "Content-Type": "application/xml"}).status_code)
                latencies.append(time.perf_counter() - started)
        return statuses

    cpu, machine, own = _tree_cpu(root), machine_jiffies(), time.process_time()
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        answers = Counter(status for statuses in pool.map(client, [documents[i::clients] for i in range(clients)])
                          for status in statuses)
    elapsed = time.perf_counter() - started
    used = _tree_cpu(root) - cpu
    return {"documents": len(documents), "answers": dict(answers),
            "documents_per_second": round(len(documents) / elapsed, 1),
            "latency_ms_p50": round(percentile(latencies, 50) * 1000, 1),
            "latency_ms_p95": round(percentile(latencies, 95) * 1000, 1),
            **cpu_figures(used, time.process_time() - own, machine_busy(machine), len(documents), "document",
                          "gateway")}


if __name__ == "__main__":
    from bench.__main__ import hundred_kb_documents

    print(json.dumps(bench_cda_http(hundred_kb_documents(160), os.environ.get("GATEWAY_BENCH_POSTGRES_URL")),
                     indent=2))
