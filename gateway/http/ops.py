"""Operations: GET /health (liveness and database) and GET /metrics (Prometheus)."""
from __future__ import annotations

from flask import Blueprint, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.metrics import REGISTRY
from gateway.storage.database import ping

ops = Blueprint("ops", __name__)


@ops.get("/health")
def health():
    try:
        ping(current_app.config["ENGINE"])
    except Exception as exc:  # any database failure makes the instance unhealthy
        return {"status": "fail", "database": "unreachable", "error": type(exc).__name__}, 503
    return {"status": "pass", "database": current_app.config["ENGINE"].dialect.name}


@ops.get("/metrics")
def metrics():
    return Response(generate_latest(REGISTRY), mimetype=CONTENT_TYPE_LATEST)
