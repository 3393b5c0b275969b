"""Operations: GET /health (liveness and database) and GET /metrics (Prometheus)."""
from __future__ import annotations

import os
import socket

from flask import Blueprint, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.metrics import REGISTRY
from gateway.storage.database import accepts_writes, version

ops = Blueprint("ops", __name__)


@ops.get("/health")
def health():
    """What is really usable: the database takes a writer now, and the MLLP listener, when this
    gateway runs one, accepts connections."""
    engine, settings = current_app.config["ENGINE"], current_app.config["SETTINGS"]
    answer = {"status": "pass", "database": engine.dialect.name}
    try:
        accepts_writes(engine)
        answer["database_version"] = version(engine)
    except Exception as exc:  # any database failure makes the instance unhealthy
        return {"status": "fail", "database": "does not accept writes", "error": type(exc).__name__}, 503
    if settings.serves_mllp:
        try:
            socket.create_connection((settings.mllp_host, settings.mllp_port), timeout=2).close()
        except OSError as exc:
            return {**answer, "status": "fail", "mllp": "not listening", "error": type(exc).__name__}, 503
        answer["mllp"] = f"{settings.mllp_host}:{settings.mllp_port}"
    return answer


@ops.get("/metrics")
def metrics():
    """Every process's metrics when `gateway serve` runs several (multiprocess mode), else this one's."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
    return Response(generate_latest(REGISTRY), mimetype=CONTENT_TYPE_LATEST)
