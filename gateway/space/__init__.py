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

from flask import Blueprint, Flask, current_app, g, redirect, render_template, request, session, url_for
from flask_wtf.csrf import CSRFProtect

from gateway.access.audit import Outcome
from gateway.access.context import ClosedToHolder
from gateway.config import Settings
from gateway.fhir.primitives import present
from gateway.http.content_coding import decode_request_body
from gateway.http.inputs import holds_nul
from gateway.refusal import Refused
from gateway.storage.repository import Repository

from . import accounts

log = logging.getLogger(__name__)
PARIS = ZoneInfo("Europe/Paris")

space = Blueprint("space", __name__, template_folder="templates", static_folder="static",
                  static_url_path="/espace-static")
csrf = CSRFProtect()
# Pages open before sign-in.
PUBLIC = ("space.sign_in", "space.enter_code", "space.home")
# Pages open before a representative of several children has chosen whose record to open.
CHOOSING = ("space.choose_record", "space.open_record", "space.sign_out", "space.password_page")
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
    engine = current_app.config["ENGINE"]
    g.account = g.record = g.record_name = None
    session_id = session.get("sid")
    signed = accounts.session_account(engine, session_id) if session_id else None
    if session_id and signed is None:
        session.clear()
    if signed is None and request.endpoint not in PUBLIC:
        return redirect(url_for("space.sign_in", next=request.full_path if request.method == "GET" else None))
    if request.method == "POST":
        # Only once the sender may post here is the body read: the form was read, a compressed body
        # decoded, before a visitor signed in nowhere was sent to the sign-in page, so that 1 MB of
        # gzip posted to /dossier/verifier had 1 GB written to a temporary file.
        decode_request_body(request)
        if holds_nul(fields=request.form.items(multi=True)):
            raise Refused("a form field holds the character U+0000 (NUL)", status=400, code="value")
        csrf.protect()
    if signed is None:
        return None
    g.account, g.record, g.record_name = signed.account, signed.record, signed.record_name
    if g.record is None:
        return None if request.endpoint in PUBLIC + CHOOSING else redirect(url_for("space.choose_record"))
    repository = record_repository(g.record)
    if closed := repository.closed_to_holder():
        return record_closed_to_holder(repository, closed)
    g.repository = repository
    if g.record_name is None:
        # Read once per session (an audited read of the Patient), then shown on every page.
        g.record_name = record_holder(g.repository)
        accounts.open_record(engine, session_id, g.record, g.record_name)
    return None


def record_closed_to_holder(repository: Repository, closed: ClosedToHolder):
    """A record closed to this account (its holder died, the child came of age): the rules show it
    none of it, and this page says why (audited, as the API's refusal is). Choosing another record
    stays open."""
    if request.endpoint in PUBLIC + CHOOSING:
        return None
    repository.record_authorization("AuthZ-Role", Outcome("4", closed.reason), closed.patient_id)
    return render_template("error.html", title="Dossier qui ne vous est plus accessible",
                           message=closed_to_holder_text(closed),
                           link=url_for("space.choose_record") if len(g.account.records) > 1 else None,
                           link_text="Ouvrir un autre dossier"), 403


def closed_to_holder_text(closed: ClosedToHolder) -> str:
    if closed.deceased:
        return ("Ce dossier indique le décès de son titulaire : il n'est plus accessible depuis un espace santé. "
                "Ses ayants droit peuvent demander aux professionnels qui l'ont soigné les informations que la loi "
                "leur ouvre (article L1110-4 du code de la santé publique). S'il s'agit d'une erreur, l'établissement "
                "qui l'a déclaré peut la corriger.")
    if closed.came_of_age is None:
        return ("Ce dossier n'indique pas la date de naissance de son titulaire : un représentant légal n'accède "
                "qu'au dossier d'un enfant mineur. Le service qui a créé votre compte peut la faire compléter.")
    return (f"Le titulaire de ce dossier est majeur depuis le {closed.came_of_age.strftime('%d/%m/%Y')} : "
            "l'autorité parentale a pris fin, et son dossier ne vous est plus accessible. Il peut ouvrir son "
            "propre espace santé.")


def record_repository(record: str) -> Repository:
    """The repository of this request, as the signed-in account on one of its records."""
    settings = current_app.config["SETTINGS"]
    return Repository(current_app.config["ENGINE"], g.account.access(record, request.remote_addr),
                      settings.public_base_url, settings.search_seconds)


def record_holder(repository: Repository) -> str:
    """The name of the record's holder as a page shows it: "Léa MOREAU"."""
    patient_id = repository.own_patient_id()
    if patient_id is None:
        return "dossier non trouvé"
    names = repository.read("Patient", patient_id).json().get("name", [])
    # The name in use (nom d'usage) before the birth name: "Claire DUBOIS", born LEFEVRE.
    name = next((n for use in ("usual", "official") for n in names if n.get("use") == use), names[0] if names else {})
    given = " ".join(part.capitalize() for part in present(name.get("given"))[:1])
    return " ".join(p for p in (given, name.get("family", "").upper()) if p) or "nom non renseigné"


def record_closed_on() -> str | None:
    """The date the open record was closed, None while it is open (no data, so no trail)."""
    if "record_closed_on" not in g:
        # The page's view has usually looked the Patient id up already (views.common.patient_id).
        patient_id = g.get("patient_id") or g.repository.own_patient_id()
        if patient_id:
            g.patient_id = patient_id
        state = g.repository.record_states([patient_id]).get(patient_id) if patient_id else None
        g.record_closed_on = state.closed_on if state else None
    return g.record_closed_on


@space.context_processor
def record_context():
    """What every page says about the record open: whose it is, and whether it is closed."""
    if g.get("repository") is None:
        return {}
    return {"record_name": g.record_name, "record_closed_on": record_closed_on(),
            "several_records": len(g.account.records) > 1}


@space.after_request
def security_headers(response):
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response
