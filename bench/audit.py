"""The audit trail's write rate: AuditEvents committed per second by 1 and by 2 gateway processes
(8 threads each, every one writing the audit of a search, as a search does) on one PostgreSQL;
with the trail's 16 chains, and with 1 chain (the design before: one lock held through every
commit's flush). `python -m bench.audit` needs GATEWAY_BENCH_POSTGRES_URL; `make bench` runs it
when that is set."""
from __future__ import annotations

import json
import multiprocessing
import os
import tempfile
import threading
import time
from pathlib import Path

from sqlalchemy import func, select

from bench.databases import scratch_database
from bench.figures import machine_busy, machine_jiffies
from gateway.access import AccessContext, audit
from gateway.storage.database import make_engine
from gateway.storage.migrate import upgrade
from gateway.storage.repository import Repository
from gateway.storage.schema import audit_chain

THREADS = 8
SECONDS = 5.0


def _gateway(url: str, chains: int, start_at: float, counts) -> None:
    audit.CHAINS = chains
    engine = make_engine(url)
    repo = Repository(engine, AccessContext.system("bench audit"), "http://bench")
    written = [0] * THREADS

    def searches(slot: int) -> None:
        while time.time() < start_at:
            time.sleep(0.001)
        end = start_at + SECONDS
        while time.time() < end:
            repo.record_audit([repo._event("search-type", None, query="type=11490-0")])
            written[slot] += 1

    threads = [threading.Thread(target=searches, args=(slot,)) for slot in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counts.put(sum(written))
    engine.dispose()


def bench_audit(server_url: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp, scratch_database(server_url, Path(tmp), "audit") as url:
        return _bench_audit(url)


def _bench_audit(url: str) -> dict:
    engine = make_engine(url)
    upgrade(engine)
    context = multiprocessing.get_context("spawn")
    results = {}
    for chains in (1, audit.CHAINS):
        for gateways in (1, 2):
            with engine.connect() as conn:
                before = conn.execute(select(func.count()).select_from(audit_chain)).scalar_one()
            counts = context.Queue()
            start_at = time.time() + 3.0   # every process imported and connected
            processes = [context.Process(target=_gateway, args=(url, chains, start_at, counts))
                         for _ in range(gateways)]
            cpu_before = os.times()
            for process in processes:
                process.start()
            # The machine's CPU over the writing itself, not the processes' start.
            time.sleep(max(0.0, start_at - time.time()))
            machine = machine_jiffies()
            time.sleep(max(0.0, start_at + SECONDS - time.time()))
            busy_seconds, busy_percent = machine_busy(machine)
            written = sum(counts.get(timeout=120) for _ in processes)
            for process in processes:
                process.join(60)
            with engine.connect() as conn:
                after = conn.execute(select(func.count()).select_from(audit_chain)).scalar_one()
            assert after - before == written, (after - before, written)
            results[f"{chains} chain(s), {gateways} gateway(s)"] = {
                "audited_writes_per_second": round(written / SECONDS, 1), "load_average": os.getloadavg()[0],
                "machine_busy_percent": busy_percent,
                "machine_cpu_ms_per_write": round(busy_seconds * 1000 / written, 2),
                "children_cpu_seconds": round(os.times().children_user - cpu_before.children_user
                                              + os.times().children_system - cpu_before.children_system, 1)}
    report = audit.verify_chain(engine)
    engine.dispose()
    results["chain_verified"] = report.reason is None
    results["note"] = (f"{THREADS} threads per gateway process, each writing one search's AuditEvent at a time "
                       f"for {SECONDS:.0f} s; a gateway's threads share group commits; PostgreSQL on this machine; "
                       "machine_*: the whole machine's CPU over those seconds (the gateways, PostgreSQL, the kernel)")
    return results


if __name__ == "__main__":
    print(json.dumps(bench_audit(os.environ["GATEWAY_BENCH_POSTGRES_URL"]), indent=2))
