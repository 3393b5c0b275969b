"""What the patient sees when something is refused or missing: a page in French, never a stack
trace, never a hint that a hidden document exists."""
from __future__ import annotations

import logging

from flask import flash, redirect, render_template, request, url_for
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from gateway.access import AccessRefused
from gateway.cda.errors import DocumentRefused
from gateway.space import space
from gateway.storage.repository import Gone, NotFound

log = logging.getLogger(__name__)


@space.errorhandler(DocumentRefused)
def refused(error: DocumentRefused):
    if error.status == 404:
        return not_found(error)
    flash(f"Action impossible : {error.reason}", "error")
    # Back to the page the form was on (only within this site).
    referrer = request.referrer or ""
    host = request.host_url
    return redirect(referrer if referrer.startswith(host) else url_for("space.documents_page"))


@space.errorhandler(NotFound)
@space.errorhandler(Gone)
def not_found(_error):
    return render_template("error.html", title="Introuvable",
                           message="Ce document ou cette page n'existe pas, ou ne vous est pas accessible."), 404


@space.errorhandler(AccessRefused)
def forbidden(_error):
    return render_template("error.html", title="Action non autorisée",
                           message="Votre compte ne permet pas cette action."), 403


@space.errorhandler(CSRFError)
def stale_form(_error):
    return render_template("error.html", title="Formulaire expiré",
                           message="Ce formulaire a expiré ou ne vient pas de cette page. Rechargez la page et "
                                   "recommencez."), 400


@space.errorhandler(HTTPException)
def http_error(error: HTTPException):
    return render_template("error.html", title="Erreur", message=error.description), error.code


@space.errorhandler(Exception)
def internal_error(error: Exception):
    if isinstance(error, HTTPException):
        return http_error(error)
    log.exception("patient space error")
    return render_template("error.html", title="Erreur du service",
                           message="Le service n'a pas pu répondre. Réessayez dans un moment."), 500
