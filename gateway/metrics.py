"""Prometheus metrics: HTTP requests and ingests, with latencies, by outcome."""
from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry()

HTTP_REQUESTS = Counter("gateway_http_requests_total", "HTTP requests answered",
                        ["method", "endpoint", "status"], registry=REGISTRY)
HTTP_LATENCY = Histogram("gateway_http_request_seconds", "HTTP request latency",
                         ["method", "endpoint"], registry=REGISTRY)
INGESTS = Counter("gateway_ingests_total", "Documents and messages received, by channel and outcome",
                  ["channel", "outcome"], registry=REGISTRY)
INGEST_LATENCY = Histogram("gateway_ingest_seconds", "Time to ingest one document or message",
                           ["channel", "outcome"], registry=REGISTRY)
GROUP_COMMIT_UNITS = Histogram("gateway_group_commit_units", "Units of work committed together in one transaction",
                               buckets=(1, 2, 4, 8, 16, 32, 64), registry=REGISTRY)
# A group commit's transaction: the wait to begin it (on SQLite, for the database's one writer) and
# the time from its start to the end of its commit (on SQLite, the writer held). Summed over every
# process of one SQLite database, the second one's rate is the share of time its writer is held:
# near 1, the writer is what limits ingest (README, "Not reached here, and why").
_WRITE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
WRITE_WAIT = Histogram("gateway_write_wait_seconds", "Wait for a group commit's write transaction to begin",
                       buckets=_WRITE_BUCKETS, registry=REGISTRY)
WRITE_HELD = Histogram("gateway_write_transaction_seconds",
                       "A group commit's write transaction, from its start to the end of its commit",
                       buckets=_WRITE_BUCKETS, registry=REGISTRY)


def observe_ingest(channel: str, outcome: str, started: float) -> None:
    INGESTS.labels(channel, outcome).inc()
    INGEST_LATENCY.labels(channel, outcome).observe(time.perf_counter() - started)
