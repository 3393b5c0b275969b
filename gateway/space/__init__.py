"""The patient space: server-rendered pages in French where patients (and the legal
representatives of minors) read and control their record.

Every page reads and writes through the same per-request Repository, rules, services and audit as
the FHIR API, built from the signed-in account instead of a bearer token. Sign-in is a password
then a one-time code (accounts.py); forms carry a CSRF token (Flask-WTF); pages work without
JavaScript and forbid scripts outright (Content-Security-Policy).
"""
from __future__ import annotations

import logging
import secrets
from datetime import datetime
from zoneinfo import ZoneInfo

from flask import Blueprint, Flask, current_app, g, redirect, request, session, url_for
from flask_wtf.csrf import CSRFProtect

from gateway.config import Settings
from gateway.storage.repository import Repository

from . import accounts

log = logging.getLogger(__name__)
PARIS = ZoneInfo("Europe/Paris")

space = Blueprint("space", __name__, template_folder="templates", static_folder="static",
                  static_url_path="/espace-static")
csrf = CSRFProtect()
# Pages open before sign-in.
PUBLIC = ("space.sign_in", "space.enter_code", "space.home")
SECURITY_HEADERS = {
    # No script from anywhere: the pages need none, and no document content can run.
    "Content-Security-Policy": "default-src 'self'; script-src 'none'; object-src 'self'; frame-src 'self'; "
                               "frame-ancestors 'self'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def session_secret(settings: Settings) -> str:
    """GATEWAY_SECRET_KEY, else the development key of `gateway demo setup` (created if missing)."""
    if settings.secret_key:
        return settings.secret_key
    path = settings.demo_session_key
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


def init_space(app: Flask, settings: Settings) -> None:
    app.secret_key = session_secret(settings)
    app.config.update(
        SESSION_COOKIE_NAME="dmp_session", SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.public_base_url.startswith("https://"),
        # Only the patient space's forms need CSRF tokens; the API authenticates with bearer tokens.
        WTF_CSRF_CHECK_DEFAULT=False, WTF_CSRF_TIME_LIMIT=None,
    )
    csrf.init_app(app)
    from . import views  # noqa: F401  (registers the routes)
    app.register_blueprint(space)


@space.app_template_filter("local_time")
def local_time(instant: str) -> str:
    """A FHIR instant (UTC) as a patient reads it: French date and time in Paris."""
    try:
        moment = datetime.fromisoformat(instant.replace("Z", "+00:00"))
    except ValueError:
        return instant
    if moment.tzinfo is None:
        return moment.strftime("%d/%m/%Y %H:%M")
    return moment.astimezone(PARIS).strftime("%d/%m/%Y %H:%M")


@space.app_template_filter("local_date")
def local_date(value: str) -> str:
    """A FHIR date or dateTime as a French date."""
    if len(value) >= 10 and value[4] == "-" and value[7] == "-":
        return f"{value[8:10]}/{value[5:7]}/{value[:4]}"
    return value


@space.before_request
def signed_in():
    if request.endpoint == "space.static":
        return None   # the stylesheet: no session to look up (each lookup writes its new expiry)
    if request.method == "POST":
        csrf.protect()
    g.account = None
    session_id = session.get("sid")
    if session_id:
        g.account = accounts.session_account(current_app.config["ENGINE"], session_id)
        if g.account is None:
            session.clear()
    if g.account is not None:
        settings = current_app.config["SETTINGS"]
        g.repository = Repository(current_app.config["ENGINE"], g.account.access(request.remote_addr),
                                  settings.public_base_url)
    elif request.endpoint not in PUBLIC:
        return redirect(url_for("space.sign_in", next=request.full_path if request.method == "GET" else None))
    return None


@space.after_request
def security_headers(response):
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response
