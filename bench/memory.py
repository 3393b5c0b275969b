"""Peak memory of a served gateway under eight concurrent worst-case inputs of each kind the limits
admit: bodies just under each endpoint's limit (an ITI-65 Bundle carrying the largest document, a
1 MiB deeply nested JSON), bodies over it (refused before they are read), and MLLP frames of the
largest size. Peak RSS (VmHWM) of every process of the gateway, before and after."""
from __future__ import annotations

import atexit
import base64
import contextlib
import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from bench.figures import wait_until
from gateway.demo import build_submission
from gateway.fhir.formats import FHIR_XML, to_xml

ROOT = Path(__file__).resolve().parents[1]
GATEWAY = Path(sys.executable).with_name("gateway")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_kb(field: str, pid: int | str = "self") -> int:
    """A size (kB) the system gives of a process in /proc/<pid>/status: VmRSS, VmHWM (its peak)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith(field + ":")))


def tree_kb(root_pid: int, field: str = "VmHWM") -> dict[int, int]:
    """A size (kB, `status_kb`'s field: the peak by default) of a process and of each of its
    descendants still running."""
    out, todo = {}, [root_pid]
    while todo:
        pid = todo.pop()
        try:
            size = status_kb(field, pid)
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        out[pid] = size
        todo += [int(c) for c in children]
    return out


@functools.cache
def _demo_keys() -> str:
    """The folder of `gateway demo setup`'s keys and test CA, made once for every gateway the bench
    starts: the set-up, its demo data loaded, took 4 s or more before each."""
    var = tempfile.mkdtemp(prefix="bench-demo-")
    atexit.register(shutil.rmtree, var, True)
    env = dict(os.environ, GATEWAY_VAR_DIR=var, GATEWAY_LOG_LEVEL="WARNING")
    env.pop("GATEWAY_DATABASE_URL", None)
    subprocess.run([str(GATEWAY), "demo", "setup"], env=env, cwd=ROOT, capture_output=True, check=True)
    return str(Path(var) / "demo")


@contextlib.contextmanager
def served(workers: int = 2, database_url: str | None = None):
    """(base URL, MLLP port, system token headers, root pid) of a gateway as `make run` serves it,
    with the demo's keys, `workers` HTTP workers and as many MLLP listener processes, on a new
    database: its own SQLite file, or `database_url`."""
    with tempfile.TemporaryDirectory() as tmp:
        port, mllp_port = _free_port(), _free_port()
        env = dict(os.environ, GATEWAY_VAR_DIR=tmp, GATEWAY_DEMO_DIR=_demo_keys(), GATEWAY_HTTP_PORT=str(port),
                   GATEWAY_MLLP_PORT=str(mllp_port), GATEWAY_HOST="127.0.0.1", GATEWAY_WORKERS=str(workers),
                   GATEWAY_MLLP_PROCESSES=str(workers), GATEWAY_LOG_LEVEL="WARNING")
        env.pop("GATEWAY_DATABASE_URL", None)
        if database_url:
            env["GATEWAY_DATABASE_URL"] = database_url
        process = subprocess.Popen([str(GATEWAY), "serve"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: _healthy(base), [process], "the bench's gateway healthy")
            token = subprocess.run([str(GATEWAY), "token", "issue", "--role", "system", "--sub", "bench"], env=env,
                                   cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            yield base, mllp_port, {"Authorization": f"Bearer {token}"}, process.pid
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(60)


def _healthy(base: str) -> bool:
    try:
        return requests.get(f"{base}/health", timeout=5).status_code == 200
    except requests.RequestException:
        return False


def bench_memory(concurrency: int = 8) -> dict:
    with served() as (base, mllp_port, auth, root):
        headers = {**auth, "Content-Type": "application/fhir+json"}
        before = tree_kb(root)
        document = b"%PDF-1.4\n" + os.urandom(15 * 1024 * 1024)
        bundle = json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:b", "resource": {"resourceType": "Binary", "contentType": "application/pdf",
                                                   "data": base64.b64encode(document).decode()},
             "request": {"method": "POST", "url": "Binary"}}]}).encode()
        nested = ("[" * 40 + "1" + "]" * 40).encode() * (1024 * 1024 // 82)
        oversized = b"{" + b" " * (40 * 1024 * 1024) + b"}"
        frame = b"\x0bMSH|^~\\&|A|B|C|D|2026||ADT^A28|1|P|2.5\r" + b"Z" * (32 * 1024 * 1024 - 64) + b"\x1c\r"
        kinds = {
            "ITI-65 with a 15 MB document (just under the limit)": lambda: requests.post(
                f"{base}/fhir", data=bundle, headers=headers, timeout=300).status_code,
            "1 MiB of nested JSON": lambda: requests.post(f"{base}/fhir/Patient", data=nested, headers=headers,
                                                          timeout=300).status_code,
            "40 MB JSON body (over the limit)": lambda: requests.post(f"{base}/fhir/Patient", data=oversized,
                                                                      headers=headers, timeout=300).status_code,
            "32 MiB MLLP frames": lambda: _mllp(mllp_port, frame),
        }
        results = {}
        for name, send in kinds.items():
            started = time.perf_counter()
            with ThreadPoolExecutor(concurrency) as pool:
                statuses = sorted(set(str(s) for s in pool.map(lambda _: send(), range(concurrency))))
            results[name] = {"answers": statuses, "seconds": round(time.perf_counter() - started, 1)}
        after = tree_kb(root)
    return {"concurrency": concurrency, "inputs": results,
            "peak_rss_mb_before": {str(pid): round(kb / 1024) for pid, kb in before.items()},
            "peak_rss_mb_after": {str(pid): round(kb / 1024) for pid, kb in after.items()},
            "note": "gateway serve: gunicorn master, 2 workers (8 threads each), the MLLP listener; VmHWM of each"}


def large_n1_cda(document_bytes: int, number: int) -> bytes:
    """An N1 CDA (a sample's header, a random "PDF" body) of about `document_bytes`, with its own id."""
    cda = (ROOT / "samples" / "cda" / "cr-hospitalisation-lefevre.xml").read_text(encoding="utf-8")
    cda = cda.replace('<id root="1.2.250.1.213.1.1.9.2.2.1"/>', f'<id root="1.2.250.1.213.1.1.9.2.2.{900 + number}"/>')
    pdf = base64.b64encode(b"%PDF-1.4\n" + os.urandom((document_bytes - len(cda)) * 3 // 4)).decode()
    return re.sub(r'(representation="B64">)[^<]+(</text>)', lambda m: m.group(1) + pdf + m.group(2), cda,
                  count=1).encode()


def large_mdm(cda: bytes, number: int) -> bytes:
    """An MDM^T02 (a sample's segments, its patient the CDA's) carrying `cda` in base64 in OBX-5."""
    message = (ROOT / "samples" / "hl7v2" / "mdm-1-t02-cr-imagerie-irm-lefevre.hl7").read_text(encoding="utf-8")
    message = message.replace("18748-4^CR d'imagerie médicale^LN", "34112-3^CR hospitalier (séjour)^LN")
    message = message.replace("1.2.250.1.213.1.1.9.2.4.1", f"1.2.250.1.213.1.1.9.2.2.{900 + number}")
    return re.sub(r"\^Base64\^[^|]+\|", lambda _: f"^Base64^{base64.b64encode(cda).decode()}|", message,
                  count=1).encode()


def bench_large_documents(document_bytes: int = 20_000_000) -> dict:
    """An N1 CDA at the document limit: POST /cda one alone, then 8 at once; one alone in an ITI-65
    Bundle (JSON and XML) and in an MDM^T02 over MLLP. Each on a fresh gateway with one HTTP worker
    and one MLLP listener, first warmed by a small document sent the same way (the modules and
    caches a first request loads are the gateway's, not the document's), so that each peak is its
    own. Peak RSS growth of the busiest process against the document."""
    out = {"document_bytes": document_bytes}
    warm_cda = large_n1_cda(200_000, 99)

    def post_cda(documents):
        def send(base, _, auth):
            with ThreadPoolExecutor(len(documents)) as pool:
                return list(pool.map(lambda data: _answer(requests.post(
                    f"{base}/cda", data=data, headers={**auth, "Content-Type": "application/xml"}, timeout=600)),
                    documents))
        return send

    for concurrency in (1, 8):
        documents = [large_n1_cda(document_bytes, n) for n in range(concurrency)]
        out[f"{concurrency} at once"] = _peak(document_bytes, concurrency, post_cda(documents), post_cda([warm_cda]))

    def provide(cda, media="application/fhir+json"):
        submission = build_submission(cda, 2 * document_bytes)
        bundle = to_xml(submission) if media == FHIR_XML else json.dumps(submission).encode()
        return lambda base, _, auth: [_answer(requests.post(
            f"{base}/fhir", data=bundle, headers={**auth, "Content-Type": media}, timeout=600))]

    def mdm(cda, number):
        message = b"\x0b" + large_mdm(cda, number) + b"\x1c\r"
        return lambda _, mllp_port, auth: [_mllp(mllp_port, message)]

    cda = large_n1_cda(document_bytes, 0)
    out["ITI-65, 1 alone"] = _peak(document_bytes, 1, provide(cda), provide(warm_cda))
    out["ITI-65 in XML, 1 alone"] = _peak(document_bytes, 1, provide(cda, FHIR_XML), provide(warm_cda, FHIR_XML))
    out["MLLP MDM^T02, 1 alone"] = _peak(document_bytes, 1, mdm(cda, 0), mdm(warm_cda, 99))
    return out


def _answer(response: requests.Response) -> str:
    return f"{response.status_code} {response.text[:120]}" if response.status_code >= 300 else str(response.status_code)


def _peak(document_bytes: int, concurrency: int, send, warm) -> dict:
    """Warm, then send, on a fresh gateway; the answers and the peak RSS growth of its busiest process."""
    with served(workers=1) as (base, mllp_port, auth, root):
        warmed = warm(base, mllp_port, auth)
        before = tree_kb(root)
        started = time.perf_counter()
        answers = send(base, mllp_port, auth)
        seconds = time.perf_counter() - started
        after = tree_kb(root)
    grown = max(after[pid] - before.get(pid, 0) for pid in after) / 1024
    return {"answers": sorted(set(answers)), "warmed_by": sorted(set(warmed)), "seconds": round(seconds, 1),
            "peak_rss_growth_mb": round(grown), "peak_rss_mb": round(max(after.values()) / 1024),
            "growth_per_document_size": round(grown * 1024 * 1024 / document_bytes / concurrency, 1)}


def _mllp(port: int, frame: bytes) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=300) as sock:
        sock.sendall(frame)
        answer = sock.recv(4096)
    return answer.split(b"\r")[1][:12].decode(errors="replace") if b"\r" in answer else "closed"


if __name__ == "__main__":
    print(json.dumps({"limits": bench_memory(), "large documents": bench_large_documents()}, indent=1))
