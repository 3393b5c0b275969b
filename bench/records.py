"""What one large record costs the writers: an A40 merge that moves its documents to another
patient, then its destruction, each one unit of work under the write lock (SQLite's holds every
other ingest back meanwhile). BENCH_RECORD_DOCUMENTS documents (default 1,000) fed as CDA.

A merge of 3,000 documents (11,800 resources) took 66 s on SQLite: each resource's archived
version was an INSERT … SELECT, whose statement journal SQLite truncated, inside the unit's
savepoint, by walking all the savepoint had journaled. Its destruction took 69 s: each of its
blobs was asked of the whole of `resources`. Each record runs in a process of its own, whose
peak memory during the merge is read from the system (VmHWM, reset before it)."""
from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import event

from bench.databases import holds_documents, kept_database, scratch_database
from bench.figures import backends
from bench.memory import status_kb
from gateway.access import AccessContext
from gateway.services import feeds, retention
from gateway.services.documents import ingest_cda
from gateway.storage.database import make_engine
from gateway.storage.migrate import upgrade
from gateway.storage.repository import Repository

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "cda" / "cr-biologie-martin.xml"
MARTIN = "185067511204554"
HOSPITAL = "CH-SAINT-AUBIN&1.2.250.1.213.1.1.9.1001&ISO^PI"
MERGE = "\r".join([
    "MSH|^~\\&|GAM|CH-SAINT-AUBIN|GW|DMP|20260310080000||ADT^A40^ADT_A39|BENCHMERGE|P|2.5^FRA^2.11|||||FRA|UNICODE UTF-8",
    "EVN||20260310080000", f"PID|1||900000090^^^{HOSPITAL}||DUBOIS^CLAIRE^^^^^L||19920823|F",
    f"MRG|900000001^^^{HOSPITAL}"]) + "\r"


def bench_records(workdir: Path, postgres_url: str | None, directory: Path) -> dict:
    """The record is built once into a kept database (`directory`, or `bench_record_<count>` beside
    the PostgreSQL URL's: 30 s of the bench's 5 minutes) and each run works on a copy of it."""
    count = int(os.environ.get("BENCH_RECORD_DOCUMENTS", "1000"))
    figures = {"documents": count}
    for backend, server in backends(postgres_url):
        kept, loaded = kept_database(server, directory, f"bench_record_{count}", holds_documents(count))
        if not loaded:
            _build(kept, count)
        with scratch_database(server, workdir, "records", template=kept) as url:
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as own_process:
                measured = own_process.submit(_record, url, count).result()
            figures[backend] = measured | {"record": "built by an earlier run" if loaded else "built"}
    return figures


def _build(url: str, count: int) -> None:
    template = SAMPLE.read_text()
    engine = make_engine(url)
    try:
        upgrade(engine)
        system = Repository(engine, AccessContext.system("bench"), "http://bench")
        for n in range(count):
            data = template.replace('<id root="1.2.250.1.213.1.1.9.2.7.1"/>',
                                    f'<id root="1.2.250.1.213.1.1.9.2.7.1.{n}"/>', 1).encode()
            assert ingest_cda(system, data, max_bytes=1 << 20).created
    finally:
        engine.dispose()


def _record(url: str, count: int) -> dict:
    engine = make_engine(url)
    upgrade(engine)
    statements = []

    def counted(conn, cursor, statement, *_):
        statements.append(statement)

    try:
        system = Repository(engine, AccessContext.system("bench"), "http://bench")
        Path("/proc/self/clear_refs").write_text("5")   # VmHWM from now on
        before = status_kb("VmRSS")
        started = time.perf_counter()
        reply = feeds.receive(system, MERGE.encode(), channel="bench", max_bytes=1 << 20)
        merged = time.perf_counter() - started
        merge_memory = status_kb("VmHWM") - before
        assert reply.code == "AA", reply.ack
        survivor = Repository(engine, AccessContext(role="patient", subject=MARTIN, patient_ins=MARTIN,
                                                    name="Paul MARTIN", address=None), "http://bench")
        retention.close_record(survivor)
        retention.request_destruction(survivor)
        event.listen(engine, "before_cursor_execute", counted)
        started = time.perf_counter()
        [destroyed] = retention.carry_out(engine, datetime.now(timezone.utc) + timedelta(days=3660))
        removed = time.perf_counter() - started
        event.remove(engine, "before_cursor_execute", counted)
    finally:
        engine.dispose()
    return {"merge_seconds": round(merged, 2), "merge_ms_per_document": round(merged * 1000 / count, 2),
            "merge_peak_memory_mb": round(merge_memory / 1024, 1),
            "destruction_seconds": round(removed, 2), "destroyed_resources": destroyed.resources,
            "destroyed_raw_inputs": destroyed.raw_inputs, "destruction_statements": len(statements)}
