"""`make bench`: ingest throughput, ITI-67 latency at 100,000 DocumentReferences, CDA-to-FHIR
conversion side by side with python-fhir-converter, HL7v2 reading costs, MLLP and POST /cda ingest
throughput, statements and CPU per input. Prints one JSON object.

Sizes can be lowered for a quick look: BENCH_DOCUMENTS (100 KB documents ingested, default 300),
BENCH_REFERENCES (DocumentReferences searched, default 100000), BENCH_QUERIES (per query kind, default 50),
BENCH_ADT and BENCH_MLLP_DOCUMENTS (messages sent over MLLP per scenario, defaults 400 and 360, the
documents shared among the three scenarios of a backend: 120 MDM^T02 each; with 60, 8 connections
sent 7 or 8 each, and the figures moved by 15 % between runs). With
GATEWAY_BENCH_POSTGRES_URL (a database the bench may write to), search, ingest and persistence are
measured on PostgreSQL too, and the audit trail's write rate with 1 and 2 gateways (bench/audit.py). The memory
figures (bench/memory.py, also `python -m bench.memory`) serve a gateway and send it eight
concurrent worst-case inputs of each kind, then N1 documents at the 20 MB limit over POST /cda, one
alone and eight at once.
"""
from __future__ import annotations

import functools
import io
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Iterator

from rich.console import Console
from sqlalchemy import event, true

from bench.audit import bench_audit
from bench.databases import holds_documents, kept_database
from bench.figures import backends, percentile
from bench.nodes import bench_nodes
from bench.hl7v2 import bench_mllp, bench_parsing, bench_statements
from bench.http_ingest import bench_cda_http
from bench.memory import bench_large_documents, bench_memory
from bench.records import bench_records
from bench.soak import bench_soak
from gateway.access import AccessContext
from gateway.access.rules import IDNATPS_SYSTEM
from gateway.access.tokens import issue, make_signing_key
from gateway.app import create_app
from gateway.bulk import ingest_paths
from gateway.config import Settings
from gateway.fhir.validation import validate
from gateway.mapping import document as mapping
from gateway.services.documents import ingest_cda, read_cda
from gateway.storage.database import make_engine, refresh_statistics, write_transaction
from gateway.storage.migrate import upgrade
from gateway.storage.repository import Repository, dumps
from gateway.storage.schema import INDEX_TABLE_BY_KIND, access_rules, resources
from gateway.storage.searchparams import index_rows

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
CORPUS = Path(os.environ.get("GATEWAY_CORPUS_DIR", ROOT.parent / "shared" / "corpus")) / "cda"
LIMIT = 20 * 1024 * 1024


@functools.cache
def _letter_and_padding() -> tuple[str, str]:
    template = (SAMPLES / "cda" / "ldl-ses-martin.xml").read_text()
    filler = "<paragraph>" + "Évolution clinique favorable, surveillance poursuivie. " * 18 + "</paragraph>"
    return template, filler * max(1, (100_000 - len(template)) // len(filler))


def hundred_kb_document(number: int) -> bytes:
    """A discharge letter of about 100 KB (the sample, its narrative repeated), its ids its own."""
    template, padding = _letter_and_padding()
    text = template.replace("1.2.250.1.213.1.1.9.2.1.1", f"1.2.250.1.213.1.1.9.3.{number}.1")
    text = text.replace("1.2.250.1.213.1.1.9.2.1\"", f"1.2.250.1.213.1.1.9.3.{number}\"")
    text = text.replace("Consultation de contrôle chez le médecin traitant à J10.",
                        "Consultation de contrôle chez le médecin traitant à J10." + padding)
    return text.encode()


def hundred_kb_documents(count: int) -> list[bytes]:
    return [hundred_kb_document(i) for i in range(count)]


def bench_ingest(workdir: Path, count: int) -> dict:
    """`count` documents one after the other through the service, then as many others through
    `gateway ingest`'s loop, which runs them side by side in windows (gateway/bulk.py)."""
    engine = make_engine(f"sqlite:///{workdir / 'ingest.db'}")
    upgrade(engine)
    repo = Repository(engine, AccessContext.system("bench"), "http://bench")
    documents = hundred_kb_documents(2 * count)
    started = time.perf_counter()
    for data in documents[:count]:
        assert ingest_cda(repo, data, max_bytes=LIMIT).created
    elapsed = time.perf_counter() - started
    folder = workdir / "gateway-ingest"
    folder.mkdir()
    for number, data in enumerate(documents[count:]):
        (folder / f"{number:05}.xml").write_bytes(data)
    settings = replace(Settings.from_env(), database_url=f"sqlite:///{workdir / 'ingest.db'}")
    bulk_started = time.perf_counter()
    report = ingest_paths(settings, [folder], Console(file=io.StringIO()))
    bulk_elapsed = time.perf_counter() - bulk_started
    assert report.ingested == count, (report.refused[:1], report.failed[:1])
    return {"documents": count, "mean_bytes": sum(map(len, documents)) // (2 * count), "backend": "sqlite",
            "seconds": round(elapsed, 2), "documents_per_second": round(count / elapsed, 1),
            "note": "service level: raw store, parse, rules, map, validate, persist with index rows; one commit "
                    "(fsync) per document",
            "gateway_ingest": {"seconds": round(bulk_elapsed, 2),
                               "documents_per_second": round(count / bulk_elapsed, 1),
                               "note": "`gateway ingest` of as many other documents from a folder, on the same "
                                       "database: the documents of a window (up to 64, 1 MiB) share transactions"}}


ATTENDING_DOCTORS = 200   # each patient's médecin traitant is one of these
MASKED_EVERY = 10         # one document in ten is masked from professionals (MASQUE_PS)


def attending_doctor(patient_number: int) -> str:
    return f"8{patient_number % ATTENDING_DOCTORS:011d}"


def hospital_doctor(patient_number: int) -> str:
    return f"8{1000 + patient_number % 50:011d}"


def load_references(urls: list[str], total: int, per_patient: int = 10) -> None:
    """Bulk-load synthetic DocumentReferences built by the real mapping and indexer, with the access
    rules of each patient's consents (an attending physician, an authorised hospital doctor, and one
    patient in twenty blocking a doctor) and one document in ten masked. Each batch is built once and
    written to every database given, so SQLite and PostgreSQL hold the same records. SQLite's loading
    connections do not wait for the disk at each commit (the gateway's do): a load cut short is
    thrown away, and the waits took half the load's time."""
    engines = [make_engine(url) for url in urls]
    for engine in engines:
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _no_flush_per_commit)
    try:
        # Each batch is written while the next one is built (the drivers let go of the GIL).
        with ThreadPoolExecutor(len(engines)) as writers:
            writing: list = []
            for batch in reference_batches(total, per_patient):
                for written in writing:
                    written.result()
                writing = [writers.submit(_write_batch, engine, batch) for engine in engines]
            for written in writing:
                written.result()
    finally:
        for engine in engines:
            engine.dispose()


def _write_batch(engine, batch: dict[str, list]) -> None:
    tables = {"resources": resources, "rules": access_rules, **INDEX_TABLE_BY_KIND}
    with write_transaction(engine) as conn:
        for kind, rows in batch.items():
            if rows:
                _bulk_insert(conn, tables[kind], rows)


def _no_flush_per_commit(dbapi_connection, _record) -> None:
    dbapi_connection.execute("PRAGMA synchronous=OFF")


def reference_batches(total: int, per_patient: int, size: int = 2000) -> Iterator[dict[str, list]]:
    parsed = read_cda((SAMPLES / "cda" / "cr-imagerie-irm-lefevre.xml").read_bytes(), LIMIT)
    header = parsed.header
    types = ["11490-0", "18748-4", "11502-2", "34874-8", "34112-3"]

    def empty() -> dict[str, list]:
        return {"resources": [], "token": [], "string": [], "date": [], "reference": [], "rules": []}

    batch = empty()
    for n in range(total):
        patient = f"p{n // per_patient}"
        if n % per_patient == 0:
            ins = f"1{n // per_patient:012d}"
            ins += "%02d" % (97 - int(ins) % 97)
            header.patient.ids[0] = mapping.II("1.2.250.1.213.1.4.10", ins)
            patient_resource = mapping.patient_resource(header.patient, patient)
            _add(batch, patient_resource, patient)
            number = n // per_patient
            rules = [("attending-physician", "permit", attending_doctor(number)),
                     ("professional", "permit", hospital_doctor(number))]
            if number % 20 == 0:
                rules.append(("professional", "deny", hospital_doctor(number + 1)))
            batch["rules"] += [dict(consent_id=f"c{number}-{k}", patient_id=patient, kind=kind, effect=effect,
                                    actor_system=IDNATPS_SYSTEM, actor_value=actor)
                               for k, (kind, effect, actor) in enumerate(rules)]
        header.code = mapping.Code(types[n % len(types)], "2.16.840.1.113883.6.1")
        header.unique_id = mapping.II(f"1.2.250.1.213.1.1.9.4.{n}")
        day = 1 + n % 28
        header.effective_time = f"2025{1 + n % 12:02d}{day:02d}101500+0100"
        links = mapping.Links(patient, "Organization/custodian", [])
        attachment = mapping.Attachment(f"http://bench/fhir/Binary/b{n}", "text/xml", 100_000, "AAAA")
        _add(batch, mapping.document_reference(header, f"d{n}", links, attachment), patient,
             masked=n % MASKED_EVERY == 0)
        if len(batch["resources"]) >= size:
            yield batch
            batch = empty()
    yield batch


def _bulk_insert(conn, table, rows: list[dict]) -> None:
    """Rows straight to the driver (COPY on PostgreSQL): SQLAlchemy's handling of each row's
    parameters took as long as building them."""
    columns = list(rows[0])
    cursor = conn.connection.driver_connection.cursor()
    if conn.dialect.name == "postgresql":
        with cursor.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row([row[c] for c in columns])
    else:
        cursor.executemany(f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                           [[row[c] for c in columns] for row in rows])


def _add(batch, resource: dict, patient: str, masked: bool = False) -> None:
    resource["meta"] = {**resource.get("meta", {}), "versionId": "1", "lastUpdated": "2026-01-01T00:00:00.000000Z"}
    body = dumps(resource)
    key = dict(res_type=resource["resourceType"], res_id=resource["id"], version=1,
               last_updated=f"2026-01-01T00:00:{len(batch['resources']) % 60:02d}.000000")
    batch["resources"].append(dict(key, deleted=False, patient_id=patient, blob_sha256=None, body=body,
                                   masked=masked, hidden_from_patient=False, hidden_from_representatives=False,
                                   authors=None, method="POST"))
    for kind, rows in index_rows(resource).items():
        batch[kind] += rows


def bench_search(workdir: Path, total: int, queries: int, postgres_url: str | None, directory: Path,
                 name: str) -> dict:
    """ITI-67 on SQLite and, given a server, PostgreSQL, over the same records loaded into both.
    The databases are kept (a SQLite file in `directory`, a PostgreSQL database `name` beside the
    one the URL names), and a later run that finds them loaded only measures. Those not loaded are
    loaded together (each batch built once)."""
    databases = {backend: kept_database(server, directory, name, holds_documents(total))
                 for backend, server in backends(postgres_url)}
    unloaded = [url for url, loaded in databases.values() if not loaded]
    load_seconds = prepared_for_search(unloaded, total, load=True) if unloaded else None
    prepared_for_search([url for url, loaded in databases.values() if loaded], total, load=False)
    return {backend: _bench_search(workdir, total, queries, url, "loaded by an earlier run" if loaded else load_seconds)
            for backend, (url, loaded) in databases.items()}


def prepared_for_search(urls: list[str], total: int, load: bool) -> float:
    """Load the databases (`load`) and refresh their statistics; the seconds it took."""
    started = time.perf_counter()
    for url in urls:
        upgrade(make_engine(url))
    if load:
        load_references(urls, total)
    for url in urls:
        engine = make_engine(url)
        refresh_statistics(engine)  # as `gateway ingest` and `gateway serve` do
        if engine.dialect.name == "postgresql":
            # autovacuum would analyse the new tables in its own time; the bench measures afterwards.
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("ANALYZE")
        engine.dispose()
    return round(time.perf_counter() - started, 1)


def _bench_search(workdir: Path, total: int, queries: int, url: str, load_seconds: float | str) -> dict:
    engine = make_engine(url)
    key_dir = workdir / "keys"
    signing_key = make_signing_key(key_dir, "bench")
    # Every search measured whole: the count without the access rules reads the whole database, and
    # with a page cache the machine had emptied that took longer than GATEWAY_SEARCH_TIMEOUT's 10 s,
    # which stopped it and the bench with it.
    settings = replace(Settings.from_env(), database_url=url, public_base_url="http://bench",
                       jwt_keys=[key_dir / "bench.pem"], search_seconds=600.0)
    client = create_app(settings, engine).test_client()
    patients = total // 10

    def as_doctor(idnatps: str) -> dict:
        token = issue(signing_key.read_bytes(), "bench", settings.jwt_issuer, settings.jwt_audience,
                      {"sub": idnatps, "role": "doctor"}, 3600)
        return {"Authorization": f"Bearer {token}"}

    kinds = {
        "patient.identifier+status": lambda i: {"patient.identifier": f"urn:oid:1.2.250.1.213.1.4.10|{_ins(i % patients)}",
                                                "status": "current"},
        "patient.identifier+status, authorised doctor (not attending)": lambda i: {
            "patient.identifier": f"urn:oid:1.2.250.1.213.1.4.10|{_ins(i % patients)}", "status": "current"},
        "patient+type+date": lambda i: {"patient": f"Patient/p{i % patients}", "type": "18748-4",
                                        "date": "ge2025-01-01", "status": "current"},
        "patient+_include": lambda i: {"patient": f"Patient/p{i % patients}", "_include": "DocumentReference:subject"},
        "type+date page (no patient)": lambda i: {"type": "11502-2", "date": f"2025-{1 + i % 12:02d}", "_count": "20"},
        "type+date page (no patient), _total=accurate": lambda i: {
            "type": "11502-2", "date": f"2025-{1 + i % 12:02d}", "_count": "20", "_total": "accurate"},
    }

    # Patients of their own for each run too: a run on kept databases would otherwise ask about the
    # pages the run before it read.
    start = random.randrange(patients)

    def run(kind: str, window: int, fmt: str = "json", count: int = queries) -> dict:
        numbers = [(start + window * queries + i) * 7919 for i in range(count)]
        doctor = hospital_doctor if "authorised doctor" in kind else attending_doctor
        headers = [as_doctor(doctor(n % patients)) for n in numbers]
        latencies, found = [], 0
        for n, header in zip(numbers, headers):
            t = time.perf_counter()
            response = client.get("/fhir/DocumentReference", query_string={**kinds[kind](n), "_format": fmt},
                                  headers=header)
            latencies.append((time.perf_counter() - t) * 1000)
            assert response.status_code == 200, (kind, response.data[:300])
            found += len(response.json.get("entry", [])) if fmt == "json" else response.data.count(b"<DocumentReference")
        assert found > 0, kind
        return {"p50_ms": round(percentile(latencies, 50), 2), "p95_ms": round(percentile(latencies, 95), 2),
                "mean_ms": round(statistics.mean(latencies), 2), "queries": count}

    def samples(kind: str, configuration: str) -> int:
        # A patient-less page without the access filter reads every document of its type and month,
        # one to ten seconds at 1,000,000: ten of them tell as much. Every other configuration times
        # them all (out of ten, one slow answer was the p95).
        return min(queries, 10) if "no patient" in kind and configuration == "no rules, no audit" else queries

    # Each kind asks about patients (or doctors) of its own. Every kind's first pass, as served, runs
    # before any other: the first touch, whose pages may have to come from disk (a pass without the
    # rules reads most of the database). The same requests are then timed three ways, on pages the
    # first pass brought into memory (as a serving gateway's working set is): as served (rules in
    # the SQL, an AuditEvent committed before each answer); without the audit write; and without
    # either (the filter replaced by TRUE).
    results: dict[str, dict] = {name: {"rules and audit, first touch": run(name, window)}
                                for window, name in enumerate(kinds)}
    original_filter, original_audit = AccessContext.resource_filter, Repository._search_audit

    def no_filter(self, table, res_type, listed=False):
        return true()

    def no_audit(self, conn, request, page):
        return []

    configurations = {"rules and audit": (original_filter, original_audit),
                      "rules, no audit": (original_filter, no_audit),
                      "no rules, no audit": (no_filter, no_audit)}
    try:
        for window, name in enumerate(kinds):
            for configuration, (resource_filter, search_audit) in configurations.items():
                AccessContext.resource_filter, Repository._search_audit = resource_filter, search_audit
                results[name][configuration] = run(name, window, count=samples(name, configuration))
    finally:
        AccessContext.resource_filter, Repository._search_audit = original_filter, original_audit
    # FHIR XML (fhir.resources' models) against JSON on the same search, rules and audit on.
    results["patient.identifier+status"]["rules and audit, XML"] = run("patient.identifier+status", 0, "xml")
    for figures in results.values():
        base, ruled = figures["no rules, no audit"]["mean_ms"], figures["rules, no audit"]["mean_ms"]
        figures["rules_cost_percent"] = round((ruled - base) / base * 100, 1)
        figures["audit_cost_ms"] = round(figures["rules and audit"]["mean_ms"] - ruled, 2)
    size = database_bytes(engine)
    engine.dispose()
    return {"document_references": total, "load_seconds": load_seconds,
            "database_mb": round(size / 1e6), "queries_per_kind": queries, "latency": results,
            "note": "through the Flask app (token check, routing, search, JSON bundle), no network; each query by "
                    "the attending physician of the patient it names (or of one patient in 200 when it names none), "
                    "or by a hospital doctor the patient authorised; "
                    "Bundle.total exact up to 1,000 matches (the default) unless _total=accurate; 'no rules' replaces "
                    "the access filter by TRUE"}


def database_bytes(engine) -> int:
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            return conn.exec_driver_sql("SELECT page_count * page_size FROM pragma_page_count, pragma_page_size").scalar()
        return conn.exec_driver_sql("SELECT pg_database_size(current_database())").scalar()


def _ins(patient_number: int) -> str:
    ins = f"1{patient_number:012d}"
    return ins + "%02d" % (97 - int(ins) % 97)


def bench_conversion(rounds: int = 5) -> dict:
    from fhir_converter.renderers import CcdaRenderer

    files = sorted((SAMPLES / "cda").glob("*.xml"))
    if CORPUS.is_dir():
        files += sorted(CORPUS.glob("fr_*.xml"))
    documents = [(f.name, f.read_bytes()) for f in files]
    renderer = CcdaRenderer()

    def ours(data: bytes) -> None:
        parsed = read_cda(data, LIMIT)
        links = mapping.Links("p", "Organization/o", [])
        attachment = mapping.Attachment("http://bench/fhir/Binary/b", "text/xml", len(data), "AAAA")
        for resource in (mapping.document_reference(parsed.header, "d", links, attachment),
                         mapping.patient_resource(parsed.header.patient, "p")):
            validate(resource)

    def theirs(data: bytes) -> None:
        renderer.render_to_fhir("CCD", data.decode("utf-8"))

    figures = {}
    for label, convert in (("gateway", ours), ("python-fhir-converter", theirs)):
        per_document, failures = [], []
        for name, data in documents:
            try:
                convert(data)
            except Exception as exc:  # a converter failing on a document is a result, recorded as such
                failures.append(f"{name}: {type(exc).__name__}")
                continue
            t = time.perf_counter()
            for _ in range(rounds):
                convert(data)
            per_document.append((time.perf_counter() - t) / rounds * 1000)
        figures[label] = {"documents_converted": len(per_document), "failures": failures,
                          "mean_ms": round(statistics.mean(per_document), 2) if per_document else None,
                          "p50_ms": round(percentile(per_document, 50), 2) if per_document else None,
                          "p95_ms": round(percentile(per_document, 95), 2) if per_document else None}
    return {"documents": [name for name, _ in documents], "rounds": rounds, "results": figures,
            "note": "gateway: parse + CI-SIS header + DMP rules + PDSm mapping + fhir.resources validation of "
                    "DocumentReference and Patient; python-fhir-converter: its CCD Liquid template to a FHIR Bundle "
                    "(no validation, no French metadata)"}


def machine() -> dict:
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "load_average_at_start": [round(v, 2) for v in os.getloadavg()]}


def write_report(report: dict, name: str) -> None:
    """Print the figures and keep them in bench/results/, with the load average at the end."""
    report["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    text = json.dumps(report, indent=2, ensure_ascii=False)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / name).write_text(text + "\n")
    print(text)


def scale() -> None:
    """`make bench-scale`: ITI-67 at BENCH_SCALE_REFERENCES (default 1,000,000) DocumentReferences,
    100,000 patients, on SQLite and (with GATEWAY_BENCH_POSTGRES_URL) PostgreSQL, in databases kept
    in var/bench-scale/ and as bench_scale_<count>."""
    references = int(os.environ.get("BENCH_SCALE_REFERENCES", "1000000"))
    queries = int(os.environ.get("BENCH_QUERIES", "50"))
    report = {"machine": machine()}
    with tempfile.TemporaryDirectory() as tmp:
        report["search"] = bench_search(Path(tmp), references, queries, os.environ.get("GATEWAY_BENCH_POSTGRES_URL"),
                                        ROOT / "var" / "bench-scale", f"bench_scale_{references}")
    write_report(report, "scale.json")


def main() -> None:
    documents = int(os.environ.get("BENCH_DOCUMENTS", "300"))
    references = int(os.environ.get("BENCH_REFERENCES", "100000"))
    queries = int(os.environ.get("BENCH_QUERIES", "50"))
    postgres_url = os.environ.get("GATEWAY_BENCH_POSTGRES_URL")
    unset = "GATEWAY_BENCH_POSTGRES_URL not set"
    mllp_documents = int(os.environ.get("BENCH_MLLP_DOCUMENTS", "360"))
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        sections = {
            "ingest": lambda: bench_ingest(workdir, documents),
            "search": lambda: bench_search(workdir, references, queries, postgres_url, ROOT / "var" / "bench",
                                           f"bench_search_{references}"),
            "conversion": bench_conversion,
            "hl7v2_parsing": lambda: bench_parsing(hundred_kb_documents(1)[0]),
            "mllp_ingest": lambda: bench_mllp(workdir, hundred_kb_documents(mllp_documents),
                                              int(os.environ.get("BENCH_ADT", "400")), postgres_url),
            "cda_http": lambda: bench_cda_http(hundred_kb_documents(160), postgres_url),
            "persistence_per_message": lambda: bench_statements(workdir, hundred_kb_documents(100), postgres_url),
            "audit_rate": lambda: bench_audit(postgres_url) if postgres_url else unset,
            "nodes": lambda: bench_nodes(postgres_url) if postgres_url and shutil.which("haproxy")
            else "needs GATEWAY_BENCH_POSTGRES_URL and haproxy",
            "memory": bench_memory,
            "large_documents": bench_large_documents,
            "large_record": lambda: bench_records(workdir, postgres_url, ROOT / "var" / "bench"),
        }
        report = {"machine": machine(), "seconds": {}}
        for name, measure in sections.items():
            started = time.perf_counter()
            report[name] = measure()
            report["seconds"][name] = round(time.perf_counter() - started, 1)
    write_report(report, "latest.json")


def soak() -> None:
    """`make bench-soak`: BENCH_SOAK_SECONDS (default 300) of sustained load a backend (bench/soak.py)."""
    report = {"machine": machine()}
    report["soak"] = bench_soak(os.environ.get("GATEWAY_BENCH_POSTGRES_URL"),
                                float(os.environ.get("BENCH_SOAK_SECONDS", "300")),
                                float(os.environ.get("BENCH_SOAK_INTERVAL", "30")), hundred_kb_document)
    write_report(report, "soak.json")


if __name__ == "__main__":
    {"scale": scale, "soak": soak}.get(sys.argv[1] if sys.argv[1:] else "", main)()
