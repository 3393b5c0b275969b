"""HL7v2 figures: what reading a message costs (hl7apy's full parse, python-hl7, the gateway's
reader) and MLLP ingest throughput for ADT and for MDM^T02 carrying a 100 KB CDA, over 1 and 8
connections, against SQLite."""
from __future__ import annotations

import asyncio
import base64
import statistics
import threading
import time
from dataclasses import replace
from pathlib import Path

import hl7
from hl7apy.core import Message as Hl7apyMessage
from hl7apy.parser import parse_message

from gateway.config import Settings
from gateway.hl7v2 import ack, mllp
from gateway.hl7v2.er7 import Message
from gateway.listener import listen
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


def _run_listener(settings: Settings):
    loop = asyncio.new_event_loop()
    started, state = threading.Event(), {}

    async def main():
        state["stop"], ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(listen(settings, ready, state["stop"]))
        await ready.wait()
        started.set()
        await task

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    started.wait(10)
    return lambda: (loop.call_soon_threadsafe(state["stop"].set), thread.join(60))


def _throughput(port: int, messages: list[bytes], connections: int) -> dict:
    shares = [messages[i::connections] for i in range(connections)]
    latencies: list[float] = []
    codes: dict[str, int] = {}

    def run_one_connection(share):
        started = time.perf_counter()
        for reply in mllp.send_messages("127.0.0.1", port, share):
            now = time.perf_counter()
            latencies.append(now - started)
            started = now
            code = reply.split(b"\r")[1].split(b"|")[1].decode()
            codes[code] = codes.get(code, 0) + 1

    threads = [threading.Thread(target=run_one_connection, args=(share,)) for share in shares]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    return {"connections": connections, "messages": len(messages), "acks": codes,
            "messages_per_second": round(len(messages) / elapsed, 1),
            "ack_latency_ms_p50": round(statistics.median(latencies) * 1000, 2),
            "ack_latency_ms_p95": round(sorted(latencies)[int(0.95 * (len(latencies) - 1))] * 1000, 2)}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bench_mllp(workdir: Path, cdas: list[bytes], adt_count: int) -> dict:
    """One listener on a fresh SQLite database; each scenario sends distinct messages."""
    url = f"sqlite:///{workdir / 'mllp.db'}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    settings = replace(Settings.from_env(), database_url=url, mllp_host="127.0.0.1", mllp_port=_free_port(),
                       public_base_url="http://bench", log_level="WARNING")
    stop = _run_listener(settings)
    results = {}
    try:
        offset = 0
        for connections in (1, 8):
            batch = [adt(offset + n) for n in range(adt_count)]
            offset += adt_count
            results[f"ADT, {connections} connection(s)"] = _throughput(settings.mllp_port, batch, connections)
        half = len(cdas) // 2
        for connections, share in ((1, cdas[:half]), (8, cdas[half:])):
            batch = [mdm(offset + n, cda) for n, cda in enumerate(share)]
            offset += len(share)
            results[f"MDM^T02 with a 100 KB CDA, {connections} connection(s)"] = _throughput(
                settings.mllp_port, batch, connections)
    finally:
        stop()
    results["note"] = ("gateway listener in-process (asyncio + 8 worker threads), loopback, SQLite WAL with "
                       "synchronous=FULL: two commits (fsync) per message, the raw copy then the resources; AA only after "
                       "the second")
    return results


def bench_statements(workdir: Path, cdas: list[bytes], adt_count: int = 50) -> dict:
    """SQL statements and writing commits per message, in-process on SQLite: the persistence cost
    the throughput figures pay per message (counted with SQLAlchemy's engine events)."""
    from sqlalchemy import event

    from gateway.access import AccessContext
    from gateway.services import feeds
    from gateway.storage.repository import Repository

    url = f"sqlite:///{workdir / 'statements.db'}"
    engine = make_engine(url)
    upgrade(engine)
    counts = {"statements": 0, "commits": 0}
    wrote = set()   # connections whose transaction wrote: a read-only transaction's commit flushes nothing

    def statement(conn, cursor, text, *args):
        counts["statements"] += 1
        if text.lstrip()[:6].upper() in ("INSERT", "UPDATE", "DELETE"):
            wrote.add(id(conn))

    def commit(conn):
        if id(conn) in wrote:
            wrote.discard(id(conn))
            counts["commits"] += 1

    event.listen(engine, "before_cursor_execute", statement)
    event.listen(engine, "commit", commit)
    repo = Repository(engine, AccessContext.system("bench"), "http://bench")
    results = {}
    for name, messages in (("ADT^A28", [adt(900_000 + n) for n in range(adt_count)]),
                           ("MDM^T02 with a 100 KB CDA", [mdm(900_000 + n, cda) for n, cda in enumerate(cdas)])):
        counts.update(statements=0, commits=0)
        for message in messages:
            reply = feeds.receive(repo, message, channel="bench", max_bytes=20 * 1024 * 1024)
            assert reply.code == "AA", reply.ack
        results[name] = {"messages": len(messages), "statements_per_message": round(counts["statements"] / len(messages), 1),
                         "commits_per_message": round(counts["commits"] / len(messages), 2)}
    engine.dispose()
    return results
