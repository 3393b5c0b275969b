"""Nothing lost, nothing twice: messages stream over MLLP on several connections at once (so the
listener's group commit writes several in each transaction), one at a time or in HL7 batches, while
the listener is killed with SIGKILL twice and restarted; each connection resends what was not
acknowledged, as an interface engine does (a batch whole: the messages of it that were processed
before the kill are then found sent before). Every message that got AA is then stored exactly once."""
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


def message(n: int) -> bytes:
    return (f"MSH|^~\\&|GAM|CRASH|GW|DMP|20260101||ADT^A28^ADT_A05|C{n:05d}|P|2.5\r"
            f"PID|1||8{n:08d}^^^CH&1.2.250.1.213.1.1.9.1001&ISO^PI||PATIENT{n}^TEST||19800101|F\r").encode()


def test_kill_9_during_a_stream_loses_and_duplicates_nothing(tmp_path):
    total, connections = 2000, 8
    elapsed, interrupted = stream_through_kills(tmp_path, [[n] for n in range(total)], connections, (500, 1300))
    REPORT.append(f"crash safety: {total} ADT over MLLP on {connections} connections, SIGKILL x2, "
                  f"{interrupted} interrupted connections resent, every AA stored once ({elapsed:.1f} s)")


def test_kill_9_during_a_stream_of_batches_loses_and_duplicates_nothing(tmp_path):
    total, size, connections = 600, 20, 4
    batches = [list(range(first, first + size)) for first in range(0, total, size)]
    elapsed, interrupted = stream_through_kills(tmp_path, batches, connections, (150, 390))
    REPORT.append(f"crash safety, batches: {total} ADT in HL7 batches of {size} over MLLP on {connections} "
                  f"connections, SIGKILL x2, {interrupted} failed connections retried, each batch not answered "
                  f"sent again whole, every AA stored once ({elapsed:.1f} s)")


def stream_through_kills(tmp_path, frames: list[list[int]], connections: int,
                         kill_after: tuple[int, ...]) -> tuple[float, int]:
    """Send each frame (the numbers of its messages: one is a message, more an HL7 batch) on
    `connections` connections, the listener killed once each count of acknowledged messages in
    `kill_after` is passed; the seconds it took, and the connections interrupted."""
    port = free_port()
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    env = dict(os.environ, GATEWAY_DATABASE_URL=url, GATEWAY_MLLP_PORT=str(port), GATEWAY_HOST="127.0.0.1",
               GATEWAY_VAR_DIR=str(tmp_path), GATEWAY_LOG_LEVEL="WARNING")
    log_path = tmp_path / "listener.log"
    server = {"process": start_listener(env, port, log_path), "kills": 0}
    acked: dict[int, str] = {}
    total = sum(len(frame) for frame in frames)

    def killer():
        # Kill at a moment unrelated to the client's rhythm: usually with a message in flight.
        rng = random.Random(7)
        for threshold in kill_after:
            while len(acked) < threshold:
                if not any(client.is_alive() for client in streams):
                    return   # the streams stopped short: the assertions below say so
                time.sleep(0.001)
            time.sleep(rng.uniform(0, 0.004))
            server["process"].send_signal(signal.SIGKILL)
            server["process"].wait()
            server["kills"] += 1
            server["process"] = start_listener(env, port, log_path)

    def framed(numbers: list[int]) -> bytes:
        if len(numbers) == 1:
            return message(numbers[0])
        return b"BHS|^~\\&|GAM|CRASH\r" + b"".join(map(message, numbers)) + b"BTS|%d\r" % len(numbers)

    interrupted = []

    def stream(share: list[list[int]]) -> None:
        position = 0
        while position < len(share):
            try:
                pending = share[position:]
                for numbers, answer in zip(pending, mllp.send_messages("127.0.0.1", port, map(framed, pending),
                                                                       timeout=30)):
                    if answer is None:
                        break
                    codes = [line.split(b"|")[1].decode() for line in answer.split(b"\r") if line.startswith(b"MSA|")]
                    assert len(codes) == len(numbers), answer
                    acked.update(zip(numbers, codes))
                    position += 1
            except OSError:
                interrupted.append(1)
                time.sleep(0.05)  # the listener restarts; then resend from the first frame not acknowledged

    streams = [threading.Thread(target=stream, args=(frames[i::connections],)) for i in range(connections)]
    thread = threading.Thread(target=killer)
    started = time.perf_counter()
    try:
        for client in streams:
            client.start()
        thread.start()
        for client in streams:
            client.join(300)
        thread.join(60)
    finally:
        server["process"].terminate()
        server["process"].wait(30)
    elapsed = time.perf_counter() - started
    assert server["kills"] == len(kill_after) and len(acked) == total
    assert set(acked.values()) == {"AA"}
    engine = make_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(select(raw_inputs.c.control_id, func.count()).group_by(raw_inputs.c.control_id)).all()
        patients = conn.execute(select(func.count()).select_from(resources).where(
            resources.c.res_type == "Patient")).scalar_one()
        identifiers = conn.execute(select(func.count()).select_from(unique_identifiers)).scalar_one()
        statuses = dict(conn.execute(select(raw_inputs.c.status, func.count()).group_by(raw_inputs.c.status)).all())
    assert len(rows) == total and all(count == 1 for _, count in rows), "a message was stored twice"
    assert patients == total and identifiers == total
    assert statuses == {"processed": total}
    return elapsed, len(interrupted)
