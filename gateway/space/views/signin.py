"""Sign-in (identifier, password, then the one-time code) and sign-out."""
from __future__ import annotations

import logging
import re
import smtplib

from flask import current_app, flash, g, redirect, render_template, request, session, url_for

from gateway.space import accounts, space
from gateway.space.senders import RecipientRefused, code_mail, message_sender

log = logging.getLogger(__name__)


# A page of this site: "/" then path characters, no scheme, no host, no backslash, no control or
# white-space character (browsers drop tabs and newlines: "/\t/evil.example" is "//evil.example").
LOCAL_PATH = re.compile(r"^/(?![/\\])[A-Za-z0-9\-._~!$&'()*+,;=:@%/?]*$")
# The same characters percent-encoded: a control character, a backslash.
ENCODED_TRAP = re.compile(r"%(?:[01][0-9a-f]|7f|5c)", re.IGNORECASE)


def _next_page() -> str:
    target = session.get("next") or ""
    if isinstance(target, str) and LOCAL_PATH.match(target) and not ENCODED_TRAP.search(target):
        return target
    return url_for("space.documents_page")


@space.get("/")
def home():
    return redirect(url_for("space.documents_page" if g.account else "space.sign_in"))


@space.route("/connexion", methods=["GET", "POST"])
def sign_in():
    if request.method == "GET":
        if request.args.get("next"):
            session["next"] = request.args["next"]
        return render_template("signin.html")
    engine, settings = current_app.config["ENGINE"], current_app.config["SETTINGS"]
    login = request.form.get("identifiant", "").strip()
    try:
        account, challenge, code = accounts.check_password(engine, login, request.form.get("mot_de_passe", ""),
                                                           request.remote_addr)
    except accounts.SignInRefused as refusal:
        return render_template("signin.html", error=str(refusal), login=login), 401
    try:
        message_sender(settings.message_sender)(settings, code_mail(account.contact, code))
    except RecipientRefused as refusal:
        log.warning("one-time code not sent: the mail server refused the address", extra={"code": refusal.code})
        return render_template("signin.html", login=login, error="Le code de connexion n'a pas pu être envoyé : "
                               "la messagerie refuse l'adresse de votre compte. Contactez le service qui a créé "
                               "votre compte pour la corriger."), 503
    except (OSError, smtplib.SMTPException) as failure:
        # The mail server down or refusing: the patient is told to try again, not "Erreur du service".
        log.warning("one-time code not sent", extra={"error": type(failure).__name__})
        return render_template("signin.html", login=login, error="Le code de connexion n'a pas pu vous être envoyé. "
                               "Réessayez dans un moment."), 503, {"Retry-After": "60"}
    session["challenge"] = challenge
    session["contact"] = _masked(account.contact)
    return redirect(url_for("space.enter_code"))


def _masked(contact: str) -> str:
    """Where the code went, without writing the whole address in the page."""
    name, at, domain = contact.partition("@")
    if at:
        return f"{name[:2]}•••@{domain}"
    return "•••" + contact[-2:]


@space.route("/connexion/code", methods=["GET", "POST"])
def enter_code():
    if "challenge" not in session:
        return redirect(url_for("space.sign_in"))
    if request.method == "GET":
        return render_template("code.html", contact=session.get("contact"))
    try:
        account, session_id = accounts.check_code(current_app.config["ENGINE"], session["challenge"],
                                                  request.form.get("code", ""), request.remote_addr)
    except accounts.SignInRefused as refusal:
        return render_template("code.html", contact=session.get("contact"), error=str(refusal)), 401
    target = _next_page()
    session.clear()   # a new session after sign-in: nothing set before it carries over
    session["sid"] = session_id
    log.info("patient space sign-in", extra={"role": account.role})
    return redirect(target)


@space.post("/deconnexion")
def sign_out():
    accounts.end_session(current_app.config["ENGINE"], session.get("sid", ""))
    session.clear()
    flash("Vous êtes déconnecté·e.")
    return redirect(url_for("space.sign_in"))
