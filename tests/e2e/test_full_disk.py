"""`gateway serve` started on a full disk (its SQLite database's, GATEWAY_VAR_DIR's), as an
operator meets it: each input is refused for now (ACK AE, 503 with Retry-After) and said in the
log in the database's words, /health warns, and once there is room again the same inputs are
taken. It was a loop of gunicorn workers killed by SIGBUS (the metrics' files, mapped into memory
on that disk), every answer a 500, /health's too, and no MLLP listener at all (its start-up's
statistics could not be written).

The disk is a small tmpfs mounted for the test, which needs root (as CI runs it); elsewhere the
test is skipped."""
import errno
import subprocess
from pathlib import Path

import pytest
import requests

from conftest import REPORT, sample
from e2e_support import start_gateway, stop_gateway, token
from gateway.cli import metrics_folder
from gateway.hl7v2 import mllp

ADT = (b"MSH|^~\\&|GAM|FULL|GW|DMP|20260101||ADT^A28^ADT_A05|FULL0001|P|2.5\r"
       b"PID|1||700000001^^^CH&1.2.250.1.213.1.1.9.1001&ISO^PI||PATIENT^TEST||19800101|F\r")


@pytest.fixture
def small_disk(tmp_path):
    """A 32 MB disk, mounted for the test."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"a small filesystem cannot be mounted here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def fill(disk) -> None:
    try:
        with open(disk / "filler", "wb") as filler:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
    except OSError as full:
        assert full.errno == errno.ENOSPC, full


def test_a_gateway_whose_disk_fills_refuses_each_input_for_now_and_takes_it_once_there_is_room(small_disk):
    environment = {"GATEWAY_MAX_DOCUMENT_BYTES": str(256 * 1024), "GATEWAY_LOG_LEVEL": "WARNING"}
    # Its log elsewhere, as a journal is.
    process, base, env = start_gateway(small_disk, environment=environment, log_dir=small_disk.parent)
    metrics = metrics_folder(small_disk)
    try:
        assert requests.get(f"{base}/health", timeout=30).json()["status"] == "pass"
        assert metrics.parent == Path("/dev/shm") and metrics.is_dir()
        fill(small_disk)
        health = requests.get(f"{base}/health", timeout=30)
        assert health.status_code == 200 and health.json()["status"] == "warn", health.text
        assert "the largest input admitted may need" in health.json()["disk"]
        port = int(env["GATEWAY_MLLP_PORT"])
        [ack] = mllp.send_messages("127.0.0.1", port, [ADT], timeout=60)
        assert b"MSA|AE|FULL0001" in ack and b"send it again" in ack, ack
        system = {**token(env, "--role", "system", "--sub", "hospital"), "Content-Type": "application/xml"}
        cda = sample("cr-biologie-martin.xml").replace(   # a document the demo data does not hold
            b'<id root="1.2.250.1.213.1.1.9.2.7.1"/>', b'<id root="1.2.250.1.213.1.1.9.2.7.1.99"/>', 1)
        for _ in range(3):
            refused = requests.post(f"{base}/cda", data=cda, headers=system, timeout=60)
            assert refused.status_code == 503 and refused.headers["Retry-After"], refused.text
            assert refused.json()["issue"][0]["code"] == "transient"

        (small_disk / "filler").unlink()
        [ack] = mllp.send_messages("127.0.0.1", port, [ADT], timeout=60)
        assert b"MSA|AA|FULL0001" in ack, ack
        assert requests.post(f"{base}/cda", data=cda, headers=system, timeout=60).status_code == 201
        assert requests.get(f"{base}/health", timeout=30).json()["status"] == "pass"
        assert "gateway_ingests_total" in requests.get(f"{base}/metrics", timeout=30).text
    finally:
        stop_gateway(process)
    assert not metrics.exists(), "a gateway stopped left its metrics in memory"
    log = (small_disk.parent / "serve.log").read_text(errors="replace")
    assert "SIGBUS" not in log and "Traceback" not in log, log[-3000:]
    assert '"reason": "database or disk is full"' in log
    REPORT.append("full disk: a running gateway's disk filled, /health warned, MLLP AE and POST /cda 503 "
                  "(3), then freed: AA and 201, no worker lost")
