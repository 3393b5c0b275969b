"""Settings, read once from the environment (12-factor): nothing is configured in code."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class SettingsError(ValueError):
    """A GATEWAY_* variable the gateway cannot run with, told with its name and what it takes: each
    was a traceback at start-up, or taken (a port of 99999, a base URL without a scheme)."""


def _int(name: str, default: int, low: int = 1, high: int | None = None) -> int:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise SettingsError(f"{name} is {value!r}, not a whole number") from None
    if number < low or (high is not None and number > high):
        raise SettingsError(f"{name} is {number}: it takes " + (f"{low} to {high}" if high else f"{low} or more"))
    return number


def duration(text: str) -> float | None:
    """A number of seconds above 0 (not `nan`, not `inf`), or None: a setting's, or an argument's of
    the shell (`gateway.arguments.seconds`)."""
    try:
        seconds = float(text)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def _seconds(name: str, default: float) -> float:
    value = os.environ.get(name)
    if not value:
        return default
    seconds = duration(value)
    if seconds is None:
        raise SettingsError(f"{name} is {value!r}: it takes a number of seconds above 0")
    return seconds


def _sender(entry: str) -> str:
    """An admitted MLLP sender, MSH-3|MSH-4[@address]: written otherwise (MSH-3^MSH-4), it admitted
    no message, and every one was refused "not admitted"."""
    if entry.partition("@")[0].count("|") != 1:
        raise SettingsError(f"GATEWAY_MLLP_SENDERS holds {entry!r}: it takes MSH-3|MSH-4, optionally @address, "
                            "comma-separated (GAM|CH-SAINT-AUBIN@10.0.0.7)")
    return entry


def _web_address(name: str, value: str, *, origin: bool) -> str:
    """An http(s) URL with a host: the gateway's public base, or a web origin (nothing after the port)."""
    try:
        parts = urlsplit(value)
        parts.port   # noqa: B018 (raises on a port that is no number)
    except ValueError:
        parts = None
    if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.query
            or parts.fragment or (origin and parts.path)):
        form = "scheme://host[:port], each origin named (no '*')" if origin else "http(s)://host[:port][/path]"
        raise SettingsError(f"{name} holds {value!r}: it takes {form}")
    return value


def _path_list(name: str, default: list[Path]) -> list[Path]:
    value = os.environ.get(name)
    if not value:
        return default
    return [Path(p) for p in value.split(os.pathsep) if p]


def _optional_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


DEMO_TOKEN_KID = "demo-token-signing"
DEMO_ISSUER = "urn:dmp-gateway:demo-issuer"


@dataclass(frozen=True)
class Settings:
    var_dir: Path
    database_url: str
    host: str
    http_port: int
    mllp_port: int
    mllp_host: str
    public_base_url: str
    max_document_bytes: int
    trust_anchors: list[Path] = field(default_factory=list)
    demo_dir: Path = Path("var/demo")
    log_level: str = "INFO"
    # MLLP: a frame larger than this is refused (a 20 MB document is about 27 MB in base64).
    mllp_max_bytes: int = 32 * 1024 * 1024
    mllp_idle_timeout: float = 300.0
    # Seconds a search of the HTTP API or the patient space may run (Repository.search_seconds).
    search_seconds: float = 10.0
    # Seconds a client may take to send a request's headers, and may keep the server waiting within
    # its body or its answer (gateway.http.slow_clients).
    http_client_timeout: float = 30.0
    mllp_workers: int = 8
    # Listener processes sharing the port (listener.start_processes): Python runs one thread at a time per
    # process, so the ingest work of several connections uses several cores only in several processes.
    mllp_processes: int = 2
    # Connections open at once; with mllp_max_bytes, the most the listener buffers (32 x 32 MiB).
    mllp_max_connections: int = 32
    mllp_tls_cert: Path | None = None
    mllp_tls_key: Path | None = None
    mllp_tls_client_ca: Path | None = None
    # MLLP senders admitted ("APP|FACILITY" from MSH-3/MSH-4, optionally "@address"); empty admits any.
    mllp_senders: tuple[str, ...] = ()
    # Each MLLP connection begins with a load balancer's PROXY protocol header (haproxy's
    # send-proxy-v2), which gives the sender's address; a connection without one is closed.
    mllp_proxy_protocol: bool = False
    # Web origins (scheme://host[:port]) whose pages may call the FHIR API from a browser (CORS);
    # empty: none, and the API answers no cross-origin request a browser would let a page read.
    cors_origins: tuple[str, ...] = ()
    # Bearer tokens: verification keys (PEM or JWKS files), issuer and audience they must carry.
    jwt_keys: list[Path] = field(default_factory=list)
    jwt_issuer: str = DEMO_ISSUER
    jwt_audience: str = "dmp-gateway"
    # The patient space: the key that signs its session cookies (GATEWAY_SECRET_KEY; else a
    # development key file of `gateway demo setup`), and where one-time codes go.
    secret_key: str | None = None
    message_sender: str = "outbox"
    notify_interval: float = 10.0     # seconds between two rounds of `gateway notifications send --follow`
    # The private key and certificate that sign the copies of records patients download.
    export_key: Path = Path("var/demo/signer-key.pem")
    export_cert: Path = Path("var/demo/signer.pem")
    # Whether this process's /health answers for an MLLP listener too (set by `gateway serve`).
    serves_mllp: bool = False
    # `gateway serve`'s HTTP worker processes, and the threads of each.
    http_workers: int = 2
    http_threads: int = 8
    # The proxies in front of the HTTP server (a load balancer: 1) whose X-Forwarded-For gives the
    # client's address; with none, the header is ignored, as any client may send it.
    proxies: int = 0

    @property
    def demo_token_key(self) -> Path:
        """The private key `gateway token issue` signs with: created by `gateway demo setup`."""
        return self.demo_dir / f"{DEMO_TOKEN_KID}-private.pem"

    @property
    def uses_demo_token_key(self) -> bool:
        return any(p.name == f"{DEMO_TOKEN_KID}.pem" and p.parent == self.demo_dir for p in self.jwt_keys)

    @property
    def demo_session_key(self) -> Path:
        return self.demo_dir / "session-secret"

    @property
    def fhir_base(self) -> str:
        return self.public_base_url.rstrip("/") + "/fhir"

    @classmethod
    def from_env(cls) -> "Settings":
        var_dir = Path(os.environ.get("GATEWAY_VAR_DIR", "var"))
        host = os.environ.get("GATEWAY_HOST", "127.0.0.1")
        http_port = _int("GATEWAY_HTTP_PORT", 8080, high=65535)
        database_url = os.environ.get("GATEWAY_DATABASE_URL") or f"sqlite:///{var_dir / 'gateway.db'}"
        base = os.environ.get("GATEWAY_PUBLIC_BASE_URL")
        public_base_url = _web_address("GATEWAY_PUBLIC_BASE_URL", base, origin=False) if base else f"http://{host}:{http_port}"
        log_level = os.environ.get("GATEWAY_LOG_LEVEL", "INFO").upper()
        if log_level not in LOG_LEVELS:
            raise SettingsError(f"GATEWAY_LOG_LEVEL is {log_level!r}: it takes {', '.join(LOG_LEVELS)}")
        demo_dir = Path(os.environ.get("GATEWAY_DEMO_DIR", str(var_dir / "demo")))
        return cls(
            var_dir=var_dir,
            database_url=database_url,
            host=host,
            http_port=http_port,
            mllp_port=_int("GATEWAY_MLLP_PORT", 2575, high=65535),
            mllp_host=os.environ.get("GATEWAY_MLLP_HOST", host),
            public_base_url=public_base_url,
            max_document_bytes=_int("GATEWAY_MAX_DOCUMENT_BYTES", 20 * 1024 * 1024),
            # Trust anchors (PEM CA certificates) used to verify IHE DSG signatures.
            trust_anchors=_path_list("GATEWAY_TRUST_ANCHORS", [demo_dir / "ca.pem"]),
            demo_dir=demo_dir,
            log_level=log_level,
            mllp_max_bytes=_int("GATEWAY_MLLP_MAX_BYTES", 32 * 1024 * 1024),
            mllp_idle_timeout=_seconds("GATEWAY_MLLP_IDLE_TIMEOUT", 300.0),
            search_seconds=_seconds("GATEWAY_SEARCH_TIMEOUT", 10.0),
            http_client_timeout=_seconds("GATEWAY_HTTP_CLIENT_TIMEOUT", 30.0),
            mllp_workers=_int("GATEWAY_MLLP_WORKERS", 8, high=1024),
            mllp_processes=_int("GATEWAY_MLLP_PROCESSES", 2, high=256),
            mllp_max_connections=_int("GATEWAY_MLLP_MAX_CONNECTIONS", 32, high=65535),
            mllp_tls_cert=_optional_path("GATEWAY_MLLP_TLS_CERT"),
            mllp_tls_key=_optional_path("GATEWAY_MLLP_TLS_KEY"),
            mllp_tls_client_ca=_optional_path("GATEWAY_MLLP_TLS_CLIENT_CA"),
            mllp_senders=tuple(_sender(s.strip()) for s in os.environ.get("GATEWAY_MLLP_SENDERS", "").split(",")
                               if s.strip()),
            mllp_proxy_protocol=_int("GATEWAY_MLLP_PROXY_PROTOCOL", 0, low=0, high=1) == 1,
            cors_origins=tuple(_web_address("GATEWAY_CORS_ORIGINS", o.strip().rstrip("/"), origin=True)
                               for o in os.environ.get("GATEWAY_CORS_ORIGINS", "").split(",") if o.strip()),
            # Without GATEWAY_JWT_KEYS the demonstration key of `gateway demo setup` is trusted, and
            # `gateway serve` says so at start-up: a production gateway sets its own keys.
            jwt_keys=_path_list("GATEWAY_JWT_KEYS", [demo_dir / f"{DEMO_TOKEN_KID}.pem"]),
            jwt_issuer=os.environ.get("GATEWAY_JWT_ISSUER", DEMO_ISSUER),
            jwt_audience=os.environ.get("GATEWAY_JWT_AUDIENCE", "dmp-gateway"),
            secret_key=os.environ.get("GATEWAY_SECRET_KEY") or None,
            message_sender=os.environ.get("GATEWAY_MESSAGE_SENDER", "outbox"),
            notify_interval=_seconds("GATEWAY_NOTIFY_INTERVAL", 10.0),
            export_key=Path(os.environ.get("GATEWAY_EXPORT_KEY", demo_dir / "signer-key.pem")),
            export_cert=Path(os.environ.get("GATEWAY_EXPORT_CERT", demo_dir / "signer.pem")),
            http_workers=_int("GATEWAY_WORKERS", 2, high=256),
            http_threads=_int("GATEWAY_THREADS", 8, high=1024),
            proxies=_int("GATEWAY_PROXIES", 0, low=0, high=8),
        )
