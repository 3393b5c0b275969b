"""A gateway as a new user starts it (`gateway demo setup`, `gateway serve`), tokens from
`gateway token issue`, and Debian's Chromium: what the end-to-end tests share."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from conftest import ROOT, free_port

GATEWAY = Path(sys.executable).with_name("gateway")
CHROMIUM = os.environ.get("GATEWAY_CHROMIUM", "/usr/bin/chromium")
REQUIRE_BROWSER = os.environ.get("GATEWAY_REQUIRE_BROWSER") == "1"
# Chromium in a closed network: no background services, no sandbox as root.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextmanager
def chromium():
    """Debian's Chromium, driven by Playwright (no browser download). Without it the test is
    skipped, unless GATEWAY_REQUIRE_BROWSER=1 (CI) makes that a failure."""
    if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
        if REQUIRE_BROWSER:
            pytest.fail(f"GATEWAY_REQUIRE_BROWSER=1 but there is no Chromium at {CHROMIUM}")
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian package chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def start_listener(env: dict, port: int, log_path: Path) -> subprocess.Popen:
    """`gateway mllp` once it listens, its log appended to a file (a pipe nobody reads fills up and
    then blocks it); killed, and its log shown, if it does not listen in time."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen([str(GATEWAY), "mllp"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60   # a loaded 2-core machine starts it well within this
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    process.wait()
    raise AssertionError(log_path.read_text(errors="replace")[-2000:])


def start_gateway(var_dir: Path, database_url: str | None = None, *, environment: dict | None = None,
                  demo_setup: bool = True, log_dir: Path | None = None):
    """(process, base URL, environment) of a demo gateway served from var_dir, on its own SQLite
    file unless a database URL is given. `environment`: more of its variables (a node's shared demo
    directory, its public URL); `demo_setup`: False for a node whose database and keys another set up;
    `log_dir`: where its serve.log goes, var_dir by default."""
    port = free_port()
    env = dict(os.environ, GATEWAY_VAR_DIR=str(var_dir), GATEWAY_HTTP_PORT=str(port),
               GATEWAY_HOST="127.0.0.1", GATEWAY_WORKERS="1", GATEWAY_MLLP_PORT=str(free_port()))
    for name in ("GATEWAY_DATABASE_URL", "GATEWAY_PUBLIC_BASE_URL", "GATEWAY_SECRET_KEY", "GATEWAY_MESSAGE_SENDER"):
        env.pop(name, None)
    if database_url:
        env["GATEWAY_DATABASE_URL"] = database_url
    env.update(environment or {})
    if demo_setup:
        setup = subprocess.run([str(GATEWAY), "demo", "setup"], env=env, cwd=ROOT, capture_output=True, text=True,
                               timeout=120)
        assert setup.returncode == 0, setup.stderr[-2000:]
    # Its own process group: gunicorn, its workers and the MLLP listener are stopped together. Its
    # log goes to a file: a pipe nobody reads fills up and then blocks the server's next log line.
    var_dir.mkdir(parents=True, exist_ok=True)
    log_path = (log_dir or var_dir) / "serve.log"
    log = log_path.open("wb")
    process = subprocess.Popen([str(GATEWAY), "serve"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    log.close()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_SECONDS
    while True:
        try:
            # /health passes once the database takes writes and the MLLP listener listens.
            if requests.get(f"{base}/health", timeout=5).status_code == 200:
                break
        except requests.RequestException:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            stop_gateway(process)
            log_tail = log_path.read_text(errors="replace")[-2000:]
            pytest.fail(f"the gateway was not ready in time: {log_tail}")
        time.sleep(0.2)
    return process, base, env


READY_SECONDS = 90   # a loaded 2-core machine migrates, forks and binds within this


def stop_gateway(process) -> None:
    """SIGTERM to the whole group, then SIGKILL to whatever is still there after 30 s."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def token(env, *args: str) -> dict:
    """`gateway token issue ...`: the token is alone on the last line of its output."""
    issued = subprocess.run([str(GATEWAY), "token", "issue", *args], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert issued.returncode == 0, issued.stderr
    return {"Authorization": "Bearer " + issued.stdout.strip().splitlines()[-1]}
