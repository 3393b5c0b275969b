"""What the patient sees when something is refused or missing: a page in French, never a stack
trace, never a hint that a hidden document exists."""
from __future__ import annotations

import logging

from flask import flash, redirect, render_template, request, url_for
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from gateway.access import AccessRefused
from gateway.fhir.responses import FhirError
from gateway.refusal import Refused
from gateway.space import space
from gateway.storage.database import RETRY_AFTER_SECONDS, failure_reason, no_room, unavailable
from gateway.storage.repository import Gone, NotFound
from gateway.storage.search import SearchError

log = logging.getLogger(__name__)
GENERIC_REFUSAL = "cette demande n'a pas pu être enregistrée. Vérifiez les informations saisies et recommencez."


@space.errorhandler(Refused)
def refused(error: Refused):
    if error.status == 404:
        return not_found(error)
    # The reason is written for integration engineers, in English: a patient reads French.
    flash(f"Action impossible : {error.patient_text or GENERIC_REFUSAL}", "error")
    # Back to the page the form was on (only within this site).
    referrer = request.referrer or ""
    host = request.host_url
    return redirect(referrer if referrer.startswith(host) else url_for("space.documents_page"))


@space.errorhandler(SearchError)
def bad_search(_error):
    """A page link edited or from another site (`?page=`), or a search the gateway does not take:
    it was a 500 page, "Erreur du service", as if the service had failed."""
    return render_template("error.html", title="Demande incorrecte",
                           message="Cette page n'a pas pu être affichée : son adresse ou la recherche saisie "
                                   "n'est pas valide."), 400


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


# Werkzeug's descriptions are English: each status a page can meet, told in French.
HTTP_MESSAGES = {
    400: ("Demande incorrecte", "Cette demande n'a pas pu être comprise. Revenez à la page précédente et recommencez."),
    404: ("Introuvable", "Cette page n'existe pas."),
    405: ("Action impossible", "Cette page ne s'utilise pas ainsi : revenez à la page précédente."),
    408: ("Envoi interrompu", "Votre envoi n'est pas arrivé complet : vérifiez votre connexion et recommencez."),
    413: ("Fichier trop volumineux", "Le fichier envoyé dépasse la taille acceptée."),
    415: ("Envoi non pris en charge", "Cet envoi n'est pas dans un format accepté : recommencez depuis la page."),
    429: ("Trop de demandes", "Trop de demandes en peu de temps : patientez un moment puis recommencez."),
}


@space.errorhandler(HTTPException)
def http_error(error: HTTPException):
    return status_page(error.code)


@space.errorhandler(FhirError)
def undecoded_body(error: FhirError):
    """A body its Content-Encoding does not decode, or larger once decoded than the page takes
    (gateway.http.content_coding): it was the 500 page."""
    return status_page(error.status) + (error.headers,)


def _try_again_later(message: str):
    page = render_template("error.html", title="Service momentanément indisponible", message=message)
    return page, 503, {"Retry-After": str(RETRY_AFTER_SECONDS)}


def status_page(status: int) -> tuple[str, int]:
    title, message = HTTP_MESSAGES.get(status, ("Erreur", "Le service n'a pas pu répondre à cette demande."))
    return render_template("error.html", title=title, message=message), status


@space.errorhandler(Exception)
def internal_error(error: Exception):
    if isinstance(error, HTTPException):
        return http_error(error)
    if unavailable(error):
        log.warning("patient space: database unavailable", extra={"reason": failure_reason(error)})
        return _try_again_later("Le service n'a pas pu répondre. Réessayez dans un moment.")
    if no_room(error):
        # A temporary file's disk (TMPDIR): a form's file, a record's copy.
        log.warning("patient space: no room left on a disk", extra={"reason": error.strerror})
        return _try_again_later("Le service manque de place pour traiter cette demande. Réessayez plus tard.")
    log.exception("patient space error")
    return render_template("error.html", title="Erreur du service",
                           message="Le service n'a pas pu répondre. Réessayez dans un moment."), 500
