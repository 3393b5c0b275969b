"""Helpers the benches share for the figures they print."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Callable


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def backends(postgres_url: str | None) -> list[tuple[str, str | None]]:
    """(name, server URL) of the backends a bench measures: SQLite (no server), and PostgreSQL when
    a server is given."""
    return [("sqlite", None)] + ([("postgresql", postgres_url)] if postgres_url else [])


def machine_busy(before: tuple[int, int]) -> tuple[float, float | None]:
    """Since `before` (machine_jiffies()): the CPU seconds the whole machine was busy (every
    process: the gateway, its database, the client, anything else), and that as a percentage of
    all its cores' time."""
    busy, total = (after - start for after, start in zip(machine_jiffies(), before))
    return busy / os.sysconf("SC_CLK_TCK"), (round(100 * busy / total, 1) if total else None)


def machine_jiffies() -> tuple[int, int]:
    """(busy, all) CPU time of the whole machine since boot, in clock ticks (/proc/stat)."""
    user, nice, system, idle, iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return user + nice + system + irq + softirq + steal, user + nice + system + idle + iowait + irq + softirq + steal


def cpu_figures(server_cpu: float, client_cpu: float, machine: tuple[float, float | None], count: int, unit: str,
                server: str) -> dict:
    """CPU per unit of work: the server's (its processes'), the client's (the bench's own process),
    the whole machine's (theirs, the database's, the kernel's and anything else running), and how
    busy the machine was: on 2 cores, the machine's CPU per message bounds the rate at 2,000 ms over it."""
    busy_seconds, busy_percent = machine
    return {f"{server}_cpu_ms_per_{unit}": round(server_cpu * 1000 / count, 1),
            f"client_cpu_ms_per_{unit}": round(client_cpu * 1000 / count, 2),
            f"machine_cpu_ms_per_{unit}": round(busy_seconds * 1000 / count, 1),
            "machine_busy_percent": busy_percent}


def wait_until(ready: Callable[[], bool], processes: list[subprocess.Popen], what: str, seconds: float = 90) -> None:
    """Ask `ready` every 50 ms until it holds; RuntimeError naming `what` if one of the processes
    stops first, or if `seconds` pass."""
    deadline = time.monotonic() + seconds
    while not ready():
        stopped = [process for process in processes if process.poll() is not None]
        if stopped:
            raise RuntimeError(f"{what}: {stopped[0].args} stopped ({stopped[0].returncode})")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {seconds:g} s")
        time.sleep(0.05)
