"""Helpers the benches share for the figures they print."""
from __future__ import annotations


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def backends(postgres_url: str | None) -> list[tuple[str, str | None]]:
    """(name, server URL) of the backends a bench measures: SQLite (no server), and PostgreSQL when
    a server is given."""
    return [("sqlite", None)] + ([("postgresql", postgres_url)] if postgres_url else [])
