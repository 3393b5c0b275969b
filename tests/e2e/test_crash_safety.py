"""Nothing lost, nothing twice: 2,000 messages stream over MLLP on 8 connections at once (so the
listener's group commit writes several in each transaction) while the listener is killed with
SIGKILL twice and restarted; each connection resends what was not acknowledged, as an interface
engine does. Every message that got AA is then stored exactly once."""
import os
import random
import signal
import threading
import time

from sqlalchemy import func, select

from conftest import REPORT, free_port
from e2e_support import start_listener
from gateway.hl7v2 import mllp
from gateway.storage.database import make_engine
from gateway.storage.schema import raw_inputs, resources, unique_identifiers

TOTAL = 2000
CONNECTIONS = 8
KILL_AFTER = (500, 1300)  # acknowledged messages after which the listener is killed


def message(n: int) -> bytes:
    return (f"MSH|^~\\&|GAM|CRASH|GW|DMP|20260101||ADT^A28^ADT_A05|C{n:05d}|P|2.5\r"
            f"PID|1||8{n:08d}^^^CH&1.2.250.1.213.1.1.9.1001&ISO^PI||PATIENT{n}^TEST||19800101|F\r").encode()


def test_kill_9_during_a_stream_loses_and_duplicates_nothing(tmp_path):
    port = free_port()
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    env = dict(os.environ, GATEWAY_DATABASE_URL=url, GATEWAY_MLLP_PORT=str(port), GATEWAY_HOST="127.0.0.1",
               GATEWAY_VAR_DIR=str(tmp_path), GATEWAY_LOG_LEVEL="WARNING")
    log_path = tmp_path / "listener.log"
    server = {"process": start_listener(env, port, log_path), "kills": 0}
    acked: dict[int, str] = {}

    def killer():
        # Kill at a moment unrelated to the client's rhythm: usually with a message in flight.
        rng = random.Random(7)
        for threshold in KILL_AFTER:
            while len(acked) < threshold:
                time.sleep(0.001)
            time.sleep(rng.uniform(0, 0.004))
            server["process"].send_signal(signal.SIGKILL)
            server["process"].wait()
            server["kills"] += 1
            server["process"] = start_listener(env, port, log_path)

    interrupted = []

    def stream(share: list[int]) -> None:
        position = 0
        while position < len(share):
            try:
                pending = share[position:]
                for n, ack in zip(pending, mllp.send_messages("127.0.0.1", port, (message(n) for n in pending),
                                                              timeout=10)):
                    if ack is None:
                        break
                    acked[n] = ack.split(b"\r")[1].split(b"|")[1].decode()
                    position += 1
            except OSError:
                interrupted.append(1)
                time.sleep(0.05)  # the listener restarts; then resend from the first message not acknowledged

    thread = threading.Thread(target=killer)
    thread.start()
    streams = [threading.Thread(target=stream, args=(list(range(TOTAL))[i::CONNECTIONS],))
               for i in range(CONNECTIONS)]
    started = time.perf_counter()
    try:
        for client in streams:
            client.start()
        for client in streams:
            client.join(300)
        thread.join(60)
    finally:
        server["process"].terminate()
        server["process"].wait(30)
    elapsed = time.perf_counter() - started
    assert server["kills"] == len(KILL_AFTER) and len(acked) == TOTAL
    assert set(acked.values()) == {"AA"}
    engine = make_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(select(raw_inputs.c.control_id, func.count()).group_by(raw_inputs.c.control_id)).all()
        patients = conn.execute(select(func.count()).select_from(resources).where(
            resources.c.res_type == "Patient")).scalar_one()
        identifiers = conn.execute(select(func.count()).select_from(unique_identifiers)).scalar_one()
        statuses = dict(conn.execute(select(raw_inputs.c.status, func.count()).group_by(raw_inputs.c.status)).all())
    assert len(rows) == TOTAL and all(count == 1 for _, count in rows), "a message was stored twice"
    assert patients == TOTAL and identifiers == TOTAL
    assert statuses == {"processed": TOTAL}
    REPORT.append(f"crash safety: {TOTAL} ADT over MLLP on {CONNECTIONS} connections, SIGKILL x{server['kills']}, "
                  f"{len(interrupted)} interrupted "
                  f"connections resent, every AA stored once ({elapsed:.1f} s)")
