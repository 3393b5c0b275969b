"""Operations: GET /health (liveness and database) and GET /metrics (Prometheus)."""
from __future__ import annotations

import os
import socket

from flask import Blueprint, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.metrics import REGISTRY
from gateway.storage.database import accepts_writes, disk_room, is_sqlite, version

ops = Blueprint("ops", __name__)
# The room a document of GATEWAY_MAX_DOCUMENT_BYTES may take, in documents: an MLLP message keeps
# it in base64 (4/3 of it) beside its decoded bytes, and SQLite writes each page to its log, then
# to the database at a checkpoint.
INPUT_ROOM = 5


@ops.get("/health")
def health():
    """What is really usable: the database takes a writer now, and the MLLP listener, when this
    gateway runs one, accepts connections. A SQLite database's disk without room for the largest
    input admitted is a warning (200, "warn"), before inputs are refused for want of it: writers
    still start on a full disk, and this said "pass" while every request was refused (503, ACK AE;
    a read too, as its audit is written). A warning, not a failure: with less room than that, the
    smaller inputs and the reads still fit, and a balancer has no other node of a SQLite database
    to send them to."""
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
    if is_sqlite(engine) and engine.url.database not in (None, "", ":memory:"):
        free, needed = disk_room(engine.url.database), INPUT_ROOM * settings.max_document_bytes
        if free < needed:
            answer.update(status="warn", disk=f"{free / 1e6:,.0f} MB free beside the database, less than the "
                                               f"{needed / 1e6:,.0f} MB the largest input admitted may need")
    return answer


@ops.get("/metrics")
def metrics():
    """Every process's metrics when `gateway serve` runs several (multiprocess mode), else this one's."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
    return Response(generate_latest(REGISTRY), mimetype=CONTENT_TYPE_LATEST)
