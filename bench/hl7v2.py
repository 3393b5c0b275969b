"""HL7v2 figures: what reading a message costs (hl7apy's full parse, python-hl7, the gateway's
reader) and MLLP ingest throughput for ADT and for MDM^T02 carrying a 100 KB CDA, over 1 and 8
connections, against SQLite."""
from __future__ import annotations

import base64
import os
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import hl7
from hl7apy.core import Message as Hl7apyMessage
from hl7apy.parser import parse_message
from prometheus_client import CollectorRegistry, multiprocess

from bench.databases import scratch_database
from bench.figures import backends, cpu_figures, machine_busy, machine_jiffies, percentile, wait_until
from gateway.hl7v2 import ack, mllp
from gateway.hl7v2.er7 import Message
from gateway.listener import start_processes
from gateway.mapping import hl7v2 as v2
from gateway.storage.database import make_engine
from gateway.storage.migrate import upgrade

ROOT = Path(__file__).resolve().parents[1]
MARTIN_PID = ("PID|1||{ipp}^^^CH-SAINT-AUBIN&1.2.250.1.213.1.1.9.1001&ISO^PI~185067511204554^^^ASIP-SANTE-INS-NIR&"
              "1.2.250.1.213.1.4.10&ISO^INS||MARTIN^PAUL^PAUL ANDRE^^^^L||19850612|M")


def adt(n: int) -> bytes:
    return (f"MSH|^~\\&|GAM|BENCH|GW|DMP|20260101||ADT^A28^ADT_A05|A{n:07d}|P|2.5^FRA^2.11|||||FRA|UNICODE UTF-8\r"
            f"EVN||20260101\rPID|1||7{n:08d}^^^CH-SAINT-AUBIN&1.2.250.1.213.1.1.9.1001&ISO^PI||BENCH^PATIENT{n}^^^^^L"
            f"||19800101|F\rZFA|ACTIF|20260101|||||||INO|20260101|IC|20260101\r").encode()


def mdm(n: int, cda: bytes) -> bytes:
    return (f"MSH|^~\\&|DPI|BENCH|GW|DMP|20260101||MDM^T02^MDM_T02|M{n:07d}|P|2.6|||||FRA|UNICODE UTF-8|||"
            f"2.1^CISIS_CDA_HL7_V2\rEVN||20260101\r{MARTIN_PID.format(ipp='900000001')}\rPV1|1|I\rORC|NW|\r"
            f"TXA|1|11490-0|TEXT|20260101||||||||\r"
            f"OBX|1|ED|11490-0^Lettre de liaison^LN||^text^XML^Base64^{base64.b64encode(cda).decode()}||||||F|\r"
            "PRT||UC||SB^^participation|899900000012^BERNARD^Sophie^^^^^^ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS\r"
            "OBX|2|CWE|MASQUE_PS^Masqué aux PS^MetaDMPMSS||N^^expandedYes-NoIndicator||||||F|\r").encode()


def _mean_ms(action, rounds: int) -> float:
    started = time.perf_counter()
    for _ in range(rounds):
        action()
    return round((time.perf_counter() - started) / rounds * 1000, 3)


def bench_parsing(cda: bytes, rounds: int = 30) -> dict:
    adt_bytes, mdm_bytes = adt(1), mdm(1, cda)
    out = {}
    for name, data in (("ADT^A28 with ZFA", adt_bytes), ("MDM^T02 with a 100 KB CDA", mdm_bytes)):
        text = data.decode()

        def gateway_read():
            message = Message.from_bytes(data)
            v2.patient_info(message.first("PID"))
            for obx in message.all("OBX"):
                obx.raw_component(5, 5)

        out[name] = {
            "bytes": len(data),
            # PRT is not in hl7apy's 2.6 definitions: its full parse needs the groups (find_groups=True).
            "hl7apy_parse_message_ms": _mean_ms(lambda: parse_message(text, find_groups=True), rounds),
            "python_hl7_parse_ms": _mean_ms(lambda: hl7.parse(text), rounds),
            "gateway_reader_ms": _mean_ms(gateway_read, rounds),
        }
    message = Message.from_bytes(adt_bytes)
    outcome = ack.Outcome("AE", [ack.Issue("bench", "PID^1^3", "102")])

    def hl7apy_ack():
        m = Hl7apyMessage("ACK", version="2.5")
        m.msh.msh_3, m.msh.msh_5, m.msh.msh_9, m.msh.msh_10 = "GW", "GAM", "ACK^A28^ACK", "1"
        m.msa.msa_1, m.msa.msa_2 = "AE", "A0000001"
        m.to_er7()

    out["ACK"] = {"hl7apy_build_ms": _mean_ms(hl7apy_ack, rounds),
                  "gateway_build_ms": _mean_ms(lambda: ack.build(message, outcome), rounds)}
    return out


def _throughput(port: int, messages: list[bytes], connections: int) -> dict:
    shares = [messages[i::connections] for i in range(connections)]
    latencies: list[float] = []
    # One list of ACK codes a connection: a count shared by the threads lost some of their updates.
    codes_by_connection: list[list[str]] = [[] for _ in shares]

    def run_one_connection(share, codes):
        started = time.perf_counter()
        for reply in mllp.send_messages("127.0.0.1", port, share):
            now = time.perf_counter()
            latencies.append(now - started)
            started = now
            codes.append(reply.split(b"\r")[1].split(b"|")[1].decode())

    threads = [threading.Thread(target=run_one_connection, args=(share, codes))
               for share, codes in zip(shares, codes_by_connection)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    codes = Counter(code for connection in codes_by_connection for code in connection)
    return {"connections": connections, "messages": len(messages), "acks": dict(codes),
            "messages_per_second": round(len(messages) / elapsed, 1),
            "ack_latency_ms_p50": round(percentile(latencies, 50) * 1000, 2),
            "ack_latency_ms_p95": round(percentile(latencies, 95) * 1000, 2)}


def _batch_throughput(port: int, messages: list[bytes], size: int) -> dict:
    """The messages in HL7 batches of `size` (BHS, the messages, BTS), one frame each, on one
    connection: each batch's answer waited for before the next is sent."""
    batches = [b"BHS|^~\\&|GAM|BENCH\r" + b"".join(messages[i:i + size]) + b"BTS|%d\r" % len(messages[i:i + size])
               for i in range(0, len(messages), size)]
    latencies: list[float] = []
    codes: Counter = Counter()
    began = started = time.perf_counter()
    for answer in mllp.send_messages("127.0.0.1", port, batches, timeout=300):
        now = time.perf_counter()
        latencies.append(now - started)
        started = now
        codes.update(line.split(b"|")[1].decode() for line in answer.split(b"\r") if line.startswith(b"MSA|"))
    elapsed = time.perf_counter() - began
    return {"connections": 1, "messages": len(messages), "batch_size": size, "acks": dict(codes),
            "messages_per_second": round(len(messages) / elapsed, 1),
            "batch_answer_ms_p50": round(percentile(latencies, 50) * 1000, 1)}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cpu_seconds(pid: int) -> float:
    """User and system CPU a process has used (/proc/<pid>/stat, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _listeners(url: str, port: int, processes: int, workdir: Path, metrics_dir: Path) -> list[subprocess.Popen]:
    """`gateway mllp` processes on one port, as `gateway serve` starts them (their metrics in one
    directory, prometheus-client's multiprocess mode); ready when each accepts."""
    metrics_dir.mkdir(parents=True)
    env = dict(os.environ, GATEWAY_DATABASE_URL=url, GATEWAY_MLLP_PORT=str(port), GATEWAY_HOST="127.0.0.1",
               GATEWAY_MLLP_PROCESSES=str(processes), GATEWAY_LOG_LEVEL="WARNING", GATEWAY_VAR_DIR=str(workdir),
               GATEWAY_PUBLIC_BASE_URL="http://bench", PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    started = start_processes("127.0.0.1", port, processes, env, cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: all(_accepting(p.pid, port) for p in started), started, "the MLLP listeners started", 60)
        return started
    except BaseException:
        _stop(started)
        raise


def _write_transaction_seconds(metrics_dir: Path) -> float:
    """The listeners' group-commit write transactions so far, in seconds, summed over them."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(metrics_dir))
    return registry.get_sample_value("gateway_write_transaction_seconds_sum") or 0.0


def _accepting(pid: int, port: int) -> bool:
    """Whether the process's event loop watches a socket listening on the port. (Listeners that
    share one socket hold it from their start, before they accept: connecting proves nothing.)"""
    table = Path("/proc/net/tcp").read_text().splitlines()[1:] + Path("/proc/net/tcp6").read_text().splitlines()[1:]
    inodes = {f"socket:[{line.split()[9]}]" for line in table
              if line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A"}
    descriptors = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            descriptors[fd] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            pass   # closed meanwhile
    listening = {fd for fd, target in descriptors.items() if target in inodes}
    for fd, target in descriptors.items():
        if target == "anon_inode:[eventpoll]":
            watched = {line.split()[1] for line in Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines()
                       if line.startswith("tfd:")}
            if watched & listening:
                return True
    return False


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(60)


def bench_mllp(workdir: Path, cdas: list[bytes], adt_count: int, postgres_url: str | None = None) -> dict:
    """`gateway mllp` processes (as `gateway serve` runs them) on a fresh database, the client in
    this process; each scenario sends distinct messages. CPU per message is the listeners' own."""
    results: dict = {}
    offset = 0
    for backend, server in backends(postgres_url):
        with scratch_database(server, workdir, "mllp") as url:
            offset = _bench_listeners(url, backend, workdir, cdas, adt_count, offset, results)
    results["note"] = ("`gateway mllp` processes sharing one listening socket (the least busy takes each connection), "
                       "8 worker threads each, loopback; "
                       "the client in the bench's process. SQLite WAL synchronous=FULL; writes in group commits "
                       "(several messages' units share a transaction and a flush); AA only after the commit of "
                       "the message's result. client_cpu: the bench's process (the MLLP clients); machine_*: the whole "
                       "machine's CPU over the run (listeners, client, database, kernel, anything else running); "
                       "write_transaction_seconds_per_second: the listeners' group-commit write transactions, from "
                       "their start to the end of their commit, summed over the listeners, per second of the run "
                       "(gateway_write_transaction_seconds): on SQLite, the share of the time its one writer was held")
    return results


# (listener processes, the connection counts each is measured with) of a backend's MLLP scenarios.
LISTENER_SCENARIOS = ((1, (1, 8)), (2, (8,)))


def _bench_listeners(url: str, backend: str, workdir: Path, cdas: list[bytes], adt_count: int, offset: int,
                     results: dict) -> int:
    """One backend: 1 listener process on 1 then 8 connections, then 2 on 8 (one connection keeps
    one of two busy, the other idle: 15–20 s of `make bench` that told nothing more), ADT then
    MDM^T02; with one process, ADT in HL7 batches too."""
    upgrade(make_engine(url))
    scenario = 0
    for processes, connection_counts in LISTENER_SCENARIOS:
        port = _free_port()
        metrics_dir = workdir / f"metrics-{backend}-{processes}"
        listeners = _listeners(url, port, processes, workdir, metrics_dir)
        try:
            for connections in connection_counts:
                # Every scenario registers documents of its own: a document sent again is a
                # duplicate, answered without the work of a new one.
                share = len(cdas) // sum(len(counts) for _, counts in LISTENER_SCENARIOS)
                documents = cdas[scenario * share:(scenario + 1) * share]
                scenario += 1
                for kind, count in (("ADT", adt_count), ("MDM^T02 with a 100 KB CDA", len(documents))):
                    if kind == "ADT":
                        batch = [adt(offset + n) for n in range(count)]
                    else:
                        batch = [mdm(offset + n, cda) for n, cda in enumerate(documents)]
                    offset += count
                    cpu, machine, client = sum(_cpu_seconds(p.pid) for p in listeners), machine_jiffies(), \
                        time.process_time()
                    held, began = _write_transaction_seconds(metrics_dir), time.perf_counter()
                    figures = _throughput(port, batch, connections)
                    held = _write_transaction_seconds(metrics_dir) - held
                    figures["write_transaction_seconds_per_second"] = round(held / (time.perf_counter() - began), 2)
                    used = sum(_cpu_seconds(p.pid) for p in listeners) - cpu
                    figures.update(cpu_figures(used, time.process_time() - client, machine_busy(machine), count,
                                               "message", "listener"))
                    results.setdefault(backend, {})[
                        f"{kind}, {connections} connection(s), {processes} process(es)"] = figures
            if processes == 1:
                batch = [adt(offset + n) for n in range(adt_count)]
                offset += adt_count
                cpu, machine, client = sum(_cpu_seconds(p.pid) for p in listeners), machine_jiffies(), \
                    time.process_time()
                figures = _batch_throughput(port, batch, 100)
                used = sum(_cpu_seconds(p.pid) for p in listeners) - cpu
                figures.update(cpu_figures(used, time.process_time() - client, machine_busy(machine), adt_count,
                                           "message", "listener"))
                results[backend]["ADT in HL7 batches of 100, 1 connection, 1 process(es)"] = figures
        finally:
            _stop(listeners)
    return offset


def bench_statements(workdir: Path, cdas: list[bytes], postgres_url: str | None, adt_count: int = 50) -> dict:
    """Per message or document, in-process on SQLite and (given a server) PostgreSQL: SQL
    statements and writing commits (SQLAlchemy's engine events, and the statements run on the
    driver's cursor), and the CPU split between persistence (building and running the statements,
    the driver, the commits: the time inside SQLAlchemy's Connection and in storage/statements.py)
    and the document work (the rest: reading, rules, mapping, validation, index rows, hashes, the
    ACK). Every input is a new one: a patient, a document."""
    results = {}
    for backend, server in backends(postgres_url):
        with scratch_database(server, workdir, "statements") as url:
            results[backend] = _statements(url, cdas, adt_count)
    return results


def _statements(url: str, cdas: list[bytes], adt_count: int) -> dict:
    from sqlalchemy import event
    from sqlalchemy.engine import Connection

    from gateway.access import AccessContext
    from gateway.services import feeds
    from gateway.services.documents import ingest_cda
    from gateway.storage.repository import Repository
    from gateway.storage import statements
    from gateway.storage.statements import Prebuilt

    engine = make_engine(url)
    upgrade(engine)
    counts = {"statements": 0, "commits": 0, "persistence": 0.0}
    wrote = set()   # connections whose transaction wrote: a read-only transaction's commit flushes nothing
    timing = [0]    # the persistence timers running: a timed call inside another counts once

    def statement(conn, cursor, text, *args):
        counts["statements"] += 1
        if text.lstrip()[:6].upper() in ("INSERT", "UPDATE", "DELETE"):
            wrote.add(id(conn))

    def commit(conn):
        if id(conn) in wrote:
            wrote.discard(id(conn))
            counts["commits"] += 1

    def timed(method):
        def run(*args, **kwargs):
            timing[0] += 1
            started = time.thread_time()
            try:
                return method(*args, **kwargs)
            finally:
                timing[0] -= 1
                if not timing[0]:
                    counts["persistence"] += time.thread_time() - started
        return run

    def counted(run):   # a statement run on the driver's cursor, which SQLAlchemy's events do not see
        def counted_run(conn, method, text, arguments):
            counts["statements"] += 1
            if text.lstrip()[:6].upper() in ("INSERT", "UPDATE", "DELETE", "WITH P"):
                wrote.add(id(conn))
            return run(conn, method, text, arguments)
        return staticmethod(counted_run)

    event.listen(engine, "before_cursor_execute", statement)
    event.listen(engine, "commit", commit)
    repo = Repository(engine, AccessContext.system("bench"), "http://bench")
    results = {}
    originals = (Connection.execute, Connection._commit_impl, Prebuilt.execute, Prebuilt.executemany, Prebuilt._run,
                 statements.insert_together)
    Connection.execute, Connection._commit_impl = timed(Connection.execute), timed(Connection._commit_impl)
    Prebuilt.execute, Prebuilt.executemany = timed(Prebuilt.execute), timed(Prebuilt.executemany)
    Prebuilt._run = counted(Prebuilt._run)
    statements.insert_together = timed(statements.insert_together)
    half = len(cdas) // 2

    def message(data: bytes) -> None:
        reply = feeds.receive(repo, data, channel="bench", max_bytes=20 * 1024 * 1024)
        assert reply.code == "AA", reply.ack

    def document(data: bytes) -> None:
        assert ingest_cda(repo, data, max_bytes=20 * 1024 * 1024).created

    try:
        for name, send, messages in (
                ("ADT^A28", message, [adt(900_000 + n) for n in range(adt_count)]),
                ("MDM^T02 with a 100 KB CDA", message, [mdm(900_000 + n, cda) for n, cda in enumerate(cdas[:half])]),
                ("POST /cda, 100 KB CDA", document, cdas[half:])):
            counts.update(statements=0, commits=0, persistence=0.0)
            started = time.thread_time()
            for data in messages:
                send(data)
            total = time.thread_time() - started
            results[name] = {
                "messages": len(messages), "statements_per_message": round(counts["statements"] / len(messages), 1),
                "commits_per_message": round(counts["commits"] / len(messages), 2),
                "cpu_ms_per_message": round(total * 1000 / len(messages), 1),
                "persistence_cpu_ms": round(counts["persistence"] * 1000 / len(messages), 1),
                "document_work_cpu_ms": round((total - counts["persistence"]) * 1000 / len(messages), 1)}
    finally:
        (Connection.execute, Connection._commit_impl, Prebuilt.execute, Prebuilt.executemany, run,
         statements.insert_together) = originals
        Prebuilt._run = staticmethod(run)
    engine.dispose()
    return results
