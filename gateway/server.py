"""`gateway serve`: migrations, then the HTTP server (gunicorn, threads) on GATEWAY_HOST:GATEWAY_HTTP_PORT."""
from __future__ import annotations

import logging
import os

from gunicorn.app.base import BaseApplication

from gateway.config import Settings

log = logging.getLogger(__name__)


class _Gunicorn(BaseApplication):
    def __init__(self, settings: Settings, workers: int):
        self.settings = settings
        self.workers = workers
        super().__init__()

    def load_config(self):
        self.cfg.set("bind", f"{self.settings.host}:{self.settings.http_port}")
        self.cfg.set("workers", self.workers)
        self.cfg.set("threads", int(os.environ.get("GATEWAY_THREADS", "8")))
        self.cfg.set("worker_class", "gthread")
        self.cfg.set("graceful_timeout", 30)
        self.cfg.set("timeout", 120)
        self.cfg.set("accesslog", None)  # the application logs each request itself, as JSON

    def load(self):
        from gateway.app import create_app

        return create_app(self.settings)


def serve(settings: Settings, workers: int | None = None) -> int:
    from gateway.storage.database import make_engine
    from gateway.storage.migrate import upgrade

    upgrade(make_engine(settings.database_url))
    workers = workers or int(os.environ.get("GATEWAY_WORKERS", "2"))
    log.info("serving", extra={"http": f"http://{settings.host}:{settings.http_port}", "fhir": settings.fhir_base})
    _Gunicorn(settings, workers).run()
    return 0
