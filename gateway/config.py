"""Settings, read once from the environment (12-factor): nothing is configured in code."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def _path_list(name: str, default: list[Path]) -> list[Path]:
    value = os.environ.get(name)
    if not value:
        return default
    return [Path(p) for p in value.split(os.pathsep) if p]


@dataclass(frozen=True)
class Settings:
    var_dir: Path
    database_url: str
    host: str
    http_port: int
    mllp_port: int
    public_base_url: str
    max_document_bytes: int
    trust_anchors: list[Path] = field(default_factory=list)
    demo_dir: Path = Path("var/demo")
    log_level: str = "INFO"

    @property
    def fhir_base(self) -> str:
        return self.public_base_url.rstrip("/") + "/fhir"

    @classmethod
    def from_env(cls) -> "Settings":
        var_dir = Path(os.environ.get("GATEWAY_VAR_DIR", "var"))
        host = os.environ.get("GATEWAY_HOST", "127.0.0.1")
        http_port = _int("GATEWAY_HTTP_PORT", 8080)
        database_url = os.environ.get("GATEWAY_DATABASE_URL") or f"sqlite:///{var_dir / 'gateway.db'}"
        public_base_url = os.environ.get("GATEWAY_PUBLIC_BASE_URL") or f"http://{host}:{http_port}"
        demo_dir = Path(os.environ.get("GATEWAY_DEMO_DIR", str(var_dir / "demo")))
        return cls(
            var_dir=var_dir,
            database_url=database_url,
            host=host,
            http_port=http_port,
            mllp_port=_int("GATEWAY_MLLP_PORT", 2575),
            public_base_url=public_base_url,
            max_document_bytes=_int("GATEWAY_MAX_DOCUMENT_BYTES", 20 * 1024 * 1024),
            # Trust anchors (PEM CA certificates) used to verify IHE DSG signatures.
            trust_anchors=_path_list("GATEWAY_TRUST_ANCHORS", [demo_dir / "ca.pem"]),
            demo_dir=demo_dir,
            log_level=os.environ.get("GATEWAY_LOG_LEVEL", "INFO"),
        )
