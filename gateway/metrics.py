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


def observe_ingest(channel: str, outcome: str, started: float) -> None:
    INGESTS.labels(channel, outcome).inc()
    INGEST_LATENCY.labels(channel, outcome).observe(time.perf_counter() - started)
