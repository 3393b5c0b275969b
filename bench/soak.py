"""`make bench-soak`: a sustained load on one gateway as `make run` serves it (2 HTTP workers, 2
MLLP listeners), on SQLite and then, with GATEWAY_BENCH_POSTGRES_URL, on PostgreSQL: whether its
rate, its ACK latency, its memory and its files hold over minutes rather than the seconds `make
bench` measures.

The load: 8 MLLP connections, each sending as soon as its last message is acknowledged, three
ADT^A28 (a new patient each) for one MDM^T02 carrying a 100 KB CDA; beside them, 2 HTTP clients
reading patients the feed created (each read audited), so that readers hold snapshots while the
writers commit, as in production, where a SQLite log that readers never let be checkpointed would
grow without end. Every BENCH_SOAK_INTERVAL seconds (default 30) it samples the memory of the
gateway's processes and the size of its database (and of SQLite's log); after BENCH_SOAK_SECONDS
(default 300) a backend, it gives each interval's figures and how the last compares with the first.
"""
from __future__ import annotations

import itertools
import os
import random
import tempfile
import threading
import time
from collections import Counter
from http.client import HTTPConnection
from pathlib import Path

from sqlalchemy import text

from bench.databases import scratch_database
from bench.figures import backends, percentile
from bench.hl7v2 import adt, mdm
from bench.memory import served, tree_kb
from gateway.hl7v2 import mllp
from gateway.storage.database import make_engine

CONNECTIONS, READERS = 8, 2
# Of every four messages, the fourth is an MDM^T02 with a 100 KB CDA.
DOCUMENT_EVERY = 4
IPP_SYSTEM = "urn:oid:1.2.250.1.213.1.1.9.1001"   # the IPP domain of bench.hl7v2.adt's patients


def _tree_rss_mb(root: int) -> tuple[float, float]:
    """(all, the largest) resident memory of a process and its descendants, in MB."""
    sizes = tree_kb(root, "VmRSS").values()
    return round(sum(sizes) / 1024, 1), round(max(sizes, default=0) / 1024, 1)


def _database_mb(url: str, engine) -> dict:
    if url.startswith("sqlite"):
        path = Path(url.removeprefix("sqlite:///"))
        log = path.with_name(path.name + "-wal")
        return {"database_mb": round(path.stat().st_size / 2**20, 1),
                "log_mb": round(log.stat().st_size / 2**20, 1) if log.exists() else 0.0}
    with engine.connect() as conn:
        size = conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one()
    return {"database_mb": round(size / 2**20, 1)}


def _interval_figures(events: list[tuple[float, float, str]], start: float, end: float) -> dict:
    inside = [(latency, outcome) for done, latency, outcome in events if start <= done < end]
    latencies = [latency for latency, _ in inside]
    return {"per_second": round(len(inside) / (end - start), 1),
            "outcomes": dict(Counter(outcome for _, outcome in inside)),
            "ms_p50": round(percentile(latencies, 50) * 1000, 1) if latencies else None,
            "ms_p95": round(percentile(latencies, 95) * 1000, 1) if latencies else None}


def _soak(url: str, seconds: float, interval: float, document) -> dict:
    numbers = itertools.count()
    sent_patients: list[int] = []   # numbers of the ADT^A28 acknowledged AA, for the readers
    acks: list[list[tuple[float, float, str]]] = [[] for _ in range(CONNECTIONS)]
    reads: list[list[tuple[float, float, str]]] = [[] for _ in range(READERS)]
    engine = make_engine(url)
    with served(workers=2, database_url=url) as (base, mllp_port, auth, root):
        began = time.monotonic()
        stop_at = began + seconds

        def feed(slot: int) -> None:
            kinds: list[tuple[int, str]] = []

            def messages():
                while time.monotonic() < stop_at:
                    n = next(numbers)
                    kind = "MDM^T02" if n % DOCUMENT_EVERY == DOCUMENT_EVERY - 1 else "ADT^A28"
                    kinds.append((n, kind))
                    yield mdm(n, document(n)) if kind == "MDM^T02" else adt(n)

            started = time.monotonic()
            for reply in mllp.send_messages("127.0.0.1", mllp_port, messages(), timeout=120):
                now = time.monotonic()
                n, kind = kinds.pop()
                code = reply.split(b"\r")[1].split(b"|")[1].decode() if reply else "no answer"
                acks[slot].append((now - began, now - started, f"{kind} {code}"))
                if kind == "ADT^A28" and code == "AA":
                    sent_patients.append(n)
                started = now

        def read(slot: int) -> None:
            connection = HTTPConnection("127.0.0.1", int(base.rsplit(":", 1)[1]), timeout=60)
            chosen = random.Random(slot)
            while time.monotonic() < stop_at:
                if not sent_patients:
                    time.sleep(0.01)   # the feed's first patient is not acknowledged yet
                    continue
                n = sent_patients[chosen.randrange(len(sent_patients))]
                started = time.monotonic()
                connection.request("GET", f"/fhir/Patient?identifier={IPP_SYSTEM}|7{n:08d}", headers=auth)
                response = connection.getresponse()
                response.read()
                now = time.monotonic()
                reads[slot].append((now - began, now - started, str(response.status)))
            connection.close()

        threads = [threading.Thread(target=feed, args=(slot,)) for slot in range(CONNECTIONS)]
        threads += [threading.Thread(target=read, args=(slot,)) for slot in range(READERS)]
        for thread in threads:
            thread.start()
        samples = []
        next_sample = began
        while next_sample <= stop_at:
            time.sleep(max(0.0, next_sample - time.monotonic()))
            rss, largest = _tree_rss_mb(root)
            samples.append({"at_second": round(time.monotonic() - began), "rss_mb": rss,
                            "largest_process_rss_mb": largest, **_database_mb(url, engine),
                            "load_average": round(os.getloadavg()[0], 2)})
            next_sample += interval
        for thread in threads:
            thread.join()
    engine.dispose()
    every_ack = [event for connection in acks for event in connection]
    every_read = [event for reader in reads for event in reader]
    intervals = []
    for start in range(0, int(seconds), int(interval)):
        end = min(start + interval, seconds)
        intervals.append({"seconds": [start, end], "messages": _interval_figures(every_ack, start, end),
                          "reads": _interval_figures(every_read, start, end)})
    first, last = intervals[0]["messages"], intervals[-1]["messages"]
    sent = len(every_ack)
    return {
        "messages": sent, "acks": dict(Counter(outcome for _, _, outcome in every_ack)),
        "reads": len(every_read), "read_answers": dict(Counter(outcome for _, _, outcome in every_read)),
        "messages_per_second_first_last": [first["per_second"], last["per_second"]],
        "ack_ms_p95_first_last": [first["ms_p95"], last["ms_p95"]],
        "reads_per_second_first_last": [intervals[0]["reads"]["per_second"], intervals[-1]["reads"]["per_second"]],
        "read_ms_p95_first_last": [intervals[0]["reads"]["ms_p95"], intervals[-1]["reads"]["ms_p95"]],
        "rss_mb_first_last": [samples[min(1, len(samples) - 1)]["rss_mb"], samples[-1]["rss_mb"]],
        "database_kb_per_message": round((samples[-1]["database_mb"] - samples[0]["database_mb"]) * 1024
                                         / max(sent, 1), 1),
        **({"log_mb_largest": max(s["log_mb"] for s in samples)} if "log_mb" in samples[0] else {}),
        "intervals": intervals, "samples": samples,
    }


def bench_soak(postgres_url: str | None, seconds: float, interval: float, document) -> dict:
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend, server in backends(postgres_url):
            with scratch_database(server, Path(tmp), "soak") as url:
                results[backend] = _soak(url, seconds, interval, document)
    results["note"] = (f"one `gateway serve` (2 HTTP workers, 2 MLLP listeners) on a new database; {CONNECTIONS} "
                       f"MLLP connections sending without pause, {DOCUMENT_EVERY - 1} ADT^A28 for one MDM^T02 "
                       f"with a 100 KB CDA; {READERS} HTTP clients reading the patients fed (Patient by IPP, "
                       "audited); everything on this 2-core machine. rss_mb: the gateway's processes together, "
                       "sampled at the second interval (after its start) and at the end; log_mb: SQLite's WAL")
    return results
