"""`gateway backup` while messages stream over MLLP, and `gateway restore`, as an operator runs them:
the copy holds every message acknowledged before the backup began and none sent after it ended, its
audit trail verifies, the stream is not stopped; a restore while the listener runs is refused; a
restore after the listener was killed (its WAL full of later commits) gives exactly the copy, and
keeps what it replaced."""
import itertools
import os
import signal
import subprocess
import threading

from sqlalchemy import select

from conftest import REPORT, free_port
from e2e_support import GATEWAY, ROOT, start_listener
from gateway.hl7v2 import mllp
from gateway.storage.database import make_engine
from gateway.storage.schema import raw_inputs

CONNECTIONS = 2
BEFORE_BACKUP = 100   # messages acknowledged before the backup starts
AFTER_BACKUP = 40     # messages each connection sends once it has ended


def message(n: int) -> bytes:
    return (f"MSH|^~\\&|GAM|BACKUP|GW|DMP|20260101||ADT^A28^ADT_A05|B{n:05d}|P|2.5\r"
            f"PID|1||7{n:08d}^^^CH&1.2.250.1.213.1.1.9.1001&ISO^PI||PATIENT{n}^TEST||19800101|F\r").encode()


def control_ids(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return set(conn.execute(select(raw_inputs.c.control_id)).scalars())
    finally:
        engine.dispose()


def gateway(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(GATEWAY), *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_a_backup_during_a_stream_and_its_restore(tmp_path):
    port = free_port()
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    env = dict(os.environ, GATEWAY_DATABASE_URL=url, GATEWAY_MLLP_PORT=str(port), GATEWAY_HOST="127.0.0.1",
               GATEWAY_VAR_DIR=str(tmp_path), GATEWAY_LOG_LEVEL="WARNING")
    listener = start_listener(env, port, tmp_path / "listener.log")
    numbers = itertools.count()
    acked: set[str] = set()
    sent_after_backup: set[str] = set()
    lock, started, ended = threading.Lock(), threading.Event(), threading.Event()
    failures = []

    def messages():
        after = 0
        while after < AFTER_BACKUP:
            with lock:
                n = next(numbers)
                if ended.is_set():
                    sent_after_backup.add(f"B{n:05d}")
                    after += 1
            yield message(n)

    def stream():
        try:
            for ack in mllp.send_messages("127.0.0.1", port, messages(), timeout=30):
                assert ack is not None and b"MSA|AA|" in ack, ack
                with lock:
                    acked.add(ack.split(b"MSA|AA|")[1].split(b"\r")[0].decode())
                    if len(acked) >= BEFORE_BACKUP:
                        started.set()
        except BaseException as failure:   # told by the test, not lost in the thread
            failures.append(failure)
            started.set()

    streams = [threading.Thread(target=stream) for _ in range(CONNECTIONS)]
    copy = tmp_path / "copy.db"
    try:
        for thread in streams:
            thread.start()
        assert started.wait(120) and not failures, failures
        with lock:
            acked_before = set(acked)
        made = gateway(env, "backup", str(copy))
        ended.set()
        with lock:
            acked_during = len(acked) - len(acked_before)
        for thread in streams:
            thread.join(120)
        assert not failures, failures
        # The listener still runs: the restore is refused, naming it, and changes nothing.
        refused = gateway(env, "restore", str(copy))
        assert refused.returncode == 2 and f"(process {listener.pid}, gateway mllp)" in refused.stderr, refused.stderr
        assert not list(tmp_path.glob("gateway.db.before-restore-*"))
    finally:
        ended.set()
        listener.send_signal(signal.SIGKILL)   # the database's WAL keeps the commits since its last checkpoint
        listener.wait(30)
    assert made.returncode == 0 and "backed up to" in made.stdout, made.stderr
    assert not (tmp_path / "copy.db.partial").exists()

    in_copy = control_ids(f"sqlite:///{copy}")
    assert acked_before <= in_copy, "a message acknowledged before the backup began is not in it"
    assert not in_copy & sent_after_backup, "the copy holds a message sent after the backup ended"
    live = control_ids(url)
    assert acked <= live and len(acked) == len(live)
    verified = gateway(dict(env, GATEWAY_DATABASE_URL=f"sqlite:///{copy}"), "audit", "verify")
    assert verified.returncode == 0 and "intact" in verified.stdout, verified.stdout + verified.stderr
    assert gateway(env, "backup", str(copy)).returncode == 2   # never over a file

    restored = gateway(env, "restore", str(copy))
    assert restored.returncode == 0, restored.stderr
    assert control_ids(url) == in_copy, "the restored database is not the copy"
    asides = list(tmp_path.glob("gateway.db.before-restore-*"))
    assert len(asides) == 1 and control_ids(f"sqlite:///{asides[0]}") == live, "what the restore replaced is lost"
    assert gateway(env, "audit", "verify").returncode == 0

    listener = start_listener(env, port, tmp_path / "listener.log")
    try:
        ack = next(mllp.send_messages("127.0.0.1", port, [message(99999)], timeout=30))
    finally:
        listener.terminate()
        listener.wait(30)
    assert ack is not None and b"MSA|AA|B99999" in ack
    assert control_ids(url) == in_copy | {"B99999"}
    REPORT.append(f"backup: taken during a stream of {len(live)} ADT on {CONNECTIONS} connections, "
                  f"{acked_during} acknowledged while it ran; the copy ({len(in_copy)}) restored after SIGKILL")
