"""Who can access my record: authorise, block and unblock professionals, choose the attending
physician, oppose or allow emergency and SAMU access. Each choice is a Consent, made and revoked
through the same service as `POST /fhir/Consent`."""
from __future__ import annotations

import re
from datetime import date, datetime

from flask import flash, g, redirect, render_template, request, url_for

from gateway.access.context import PARIS
from gateway.access.rules import (FINESS, IDNATPS_SYSTEM, ORGANIZATION_SYSTEMS, consent_actors, consent_kind,
                                  for_a_period, rule_actor)
from gateway.mapping import codes
from gateway.refusal import Refused
from gateway.services import consents
from gateway.space import space
from gateway.storage import search as search_sql
from gateway.storage.repository import StoredResource

from . import common

OPPOSITIONS = {"emergency-access": "l'accès en urgence (bris de glace)",
               "regulation-access": "l'accès du médecin régulateur du SAMU (centre 15)"}


def _decisions() -> list[tuple[StoredResource, str, str, list[tuple[str, str]]]]:
    """(Consent, kind, permit|deny, its actors (system, value)) of each active decision."""
    out = []
    for stored in common.decisions():
        consent = stored.json()
        out.append((stored, consent_kind(consent), consent.get("provision", {}).get("type"), consent_actors(consent)))
    return out


def _typed_idnatps(raw: str) -> str | None:
    """The IdNatPs of what the patient typed: an RPPS number (8 + RPPS), an ADELI number (0 +
    ADELI, professions not yet in the RPPS), or an IdNatPs of either."""
    value = raw.strip().replace(" ", "")
    if re.fullmatch(r"\d{11}", value):
        return "8" + value
    if re.fullmatch(r"\d{9}", value):
        return "0" + value
    if re.fullmatch(r"8\d{11}|0\d{9}", value):
        return value
    return None


def _professional_id(raw: str) -> str:
    """The IdNatPs of what the patient typed, or chose in the list the directory gives, which offers
    a professional by their IdNatPs whatever its kind (3 + FINESS/…, a salaried professional's)."""
    idnatps = _typed_idnatps(raw)
    if idnatps:
        return idnatps
    if raw.strip() and common.practitioner(raw.strip()) is not None:
        return raw.strip()
    raise Refused("the professional is an RPPS or ADELI number or an IdNatPs", location="professionnel", status=422,
                  patient_text="saisissez un numéro RPPS (11 chiffres) ou ADELI (9 chiffres), ou choisissez un "
                               "professionnel dans la liste.")


def _search_professionals(query: str) -> list[dict]:
    query = query.strip()
    if not query:
        return []
    digits = query.replace(" ", "")
    if digits.isascii() and digits.isdigit():
        params = [("identifier", f"{IDNATPS_SYSTEM}|{_typed_idnatps(digits) or digits}")]
    else:
        # A name, commas and all ("Dupont, Jean"): not a FHIR list of names to choose among (a lone
        # comma was a search with no value, and a 500 page).
        params = [("name", query.replace(",", "\\,"))]
    found = g.repository.search(search_sql.parse_search("Practitioner", params + [("_count", "20")])).entries
    out = []
    for stored in found:
        idnatps = common.idnatps_of(stored.json())
        if idnatps:
            out.append({"id": idnatps, **common.professional(idnatps)})
    return out


def _search_establishments(query: str) -> list[dict]:
    """The establishments of the directory by name, or by FINESS (9 characters, 2A or 2B in Corsica)."""
    query = query.strip()
    compact = query.replace(" ", "").upper()
    if FINESS.fullmatch(compact):
        params = [("identifier", f"{codes.FINESS_SYSTEM}|{compact}")]
    elif query and not compact.isdigit():
        # Part of its name: "Saint-Aubin" finds the "Centre hospitalier de Saint-Aubin".
        params = [("name:contains", query.replace(",", "\\,"))]
    else:
        return []
    found = g.repository.search(search_sql.parse_search("Organization", params + [("_count", "20")])).entries
    out = []
    for stored in found:
        organization = stored.json()
        finess = next((i.get("value") for i in organization.get("identifier", [])
                       if i.get("system") == codes.FINESS_SYSTEM and FINESS.fullmatch(i.get("value", ""))), None)
        if finess:
            out.append({"finess": finess, "name": organization.get("name") or f"Établissement FINESS {finess}"})
    return out


def _described(system: str, value: str) -> dict:
    """A professional's name, specialty and organisation from the directory, the RPPS number only when
    it is unknown; an organisation's name (a decision an app made about every professional acting for it)."""
    if system in ORGANIZATION_SYSTEMS:
        return {"name": common.organization_name(rule_actor(system, value)[1]), "specialty": None,
                "organization": None, "establishment": True}
    return common.professional(value) or {"name": common.professional_name(value), "specialty": None,
                                          "organization": None}


def _actor_field(system: str, value: str) -> str:
    return f"{system}|{value}"


def _period(consent: dict) -> dict:
    """An authorisation given for a period: its days as the patient reads them, and whether it holds."""
    return common.period_state(consent["provision"]["period"]) if for_a_period(consent) else {}


@space.get("/acces")
def sharing_page():
    decisions = _decisions()
    people = []
    for stored, kind, effect, actors in decisions:
        if kind in ("attending-physician", "professional"):
            for system, value in actors:
                people.append({"consent": stored.res_id, "actor": _actor_field(system, value),
                               **_described(system, value), "kind": kind, "effect": effect,
                               **_period(stored.json())})
    # The attending physician first, then those authorised, then those blocked.
    people.sort(key=lambda p: (p["kind"] != "attending-physician", p["effect"] != "permit", p["name"]))
    opposed = {kind: stored.res_id for stored, kind, effect, _ in decisions if kind in OPPOSITIONS and effect == "deny"}
    consultation_refused = any(kind == "consultation" and effect == "deny" for _, kind, effect, _ in decisions)
    query = request.args.get("q", "")
    return render_template("sharing.html", people=people, opposed=opposed, oppositions=OPPOSITIONS,
                           consultation_refused=consultation_refused, query=query,
                           results=_search_professionals(query), establishments=_search_establishments(query))


@space.post("/acces/professionnel")
def decide_professional():
    idnatps = _professional_id(request.form.get("professionnel", ""))
    decision = request.form.get("decision")
    if decision not in ("autoriser", "bloquer", "medecin-traitant"):
        flash("Choix inconnu.", "error")
        return redirect(url_for("space.sharing_page"))
    name = common.professional_name(idnatps)
    if decision == "bloquer":
        asked = common.confirmation(f"Bloquer {name} ?", f"{name} ne pourra plus rien voir de ce dossier, même en "
                                    "urgence. Vous pourrez le débloquer à tout moment.",
                                    url_for("space.sharing_page"))
        if asked:
            return asked
    kind, effect = ("attending-physician", "permit") if decision == "medecin-traitant" else (
        "professional", "permit" if decision == "autoriser" else "deny")
    made = consents.decision(kind, effect, idnatps)
    until = _last_day(request.form.get("jusqu_au", "")) if decision == "autoriser" else None
    if until:
        made["provision"]["period"] = {"end": until.isoformat()}
    # One decision per professional, one attending physician: the earlier one is revoked with it.
    consents.create(g.repository, made)
    if until:
        flash(f"{name} peut consulter votre dossier jusqu'au {until.strftime('%d/%m/%Y')} inclus.")
        return redirect(url_for("space.sharing_page"))
    flash({"autoriser": f"{name} peut désormais consulter votre dossier.",
           "bloquer": f"{name} est bloqué·e : ce professionnel ne voit plus rien de votre dossier.",
           "medecin-traitant": f"{name} est votre médecin traitant."}[decision])
    return redirect(url_for("space.sharing_page"))


@space.post("/acces/etablissement")
def decide_establishment():
    """Authorise or block every professional acting for an establishment (the FINESS their token names)."""
    finess = request.form.get("etablissement", "").strip().upper()
    decision = request.form.get("decision")
    if not FINESS.fullmatch(finess) or decision not in ("autoriser", "bloquer"):
        flash("Choix inconnu.", "error")
        return redirect(url_for("space.sharing_page"))
    name = common.organization_name(finess)
    if decision == "bloquer":
        asked = common.confirmation(f"Bloquer {name} ?", f"Aucun professionnel qui agit pour {name} ne pourra voir "
                                    "ce dossier, même si vous l'avez autorisé par son nom, même en urgence. Vous "
                                    "pourrez le débloquer à tout moment.", url_for("space.sharing_page"))
        if asked:
            return asked
    consents.create(g.repository, consents.decision("professional", "permit" if decision == "autoriser" else "deny",
                                                    organization=finess))
    flash(f"Les professionnels qui agissent pour {name} peuvent désormais consulter votre dossier."
          if decision == "autoriser" else f"{name} est bloqué : aucun professionnel qui agit pour cet établissement "
          "ne voit plus rien de votre dossier.")
    return redirect(url_for("space.sharing_page"))


def _last_day(typed: str) -> date | None:
    """The last day of an authorisation, as the form's date field sends it (YYYY-MM-DD); None when
    the patient gave none."""
    if not typed.strip():
        return None
    try:
        day = date.fromisoformat(typed.strip())
    except ValueError:
        day = None
    if day is None or day < datetime.now(PARIS).date():
        raise Refused("the authorisation's last day is a date, today or later", location="jusqu_au", status=422,
                      patient_text="choisissez le dernier jour de l'autorisation : aujourd'hui ou une date à venir.")
    return day


@space.post("/acces/retirer/<consent_id>")
def withdraw(consent_id: str):
    """Withdraw a decision; for one that names several professionals (made in an app), for the one
    whose line the patient chose (`acteur`): it was withdrawn for all of them."""
    stored = g.repository.read("Consent", consent_id)
    consent = stored.json()
    actors, line = consent_actors(consent), request.form.get("acteur")
    chosen = actors if line is None else [actor for actor in actors if _actor_field(*actor) == line]
    if not chosen:   # withdrawn already for them (the form sent twice), the decision kept for the others
        flash("Votre décision est retirée.")
        return redirect(url_for("space.sharing_page"))
    if consent.get("provision", {}).get("type") == "permit":
        names = ", ".join(_described(system, value)["name"] for system, value in chosen) or "ce professionnel"
        attending = consent_kind(consent) == "attending-physician"
        asked = common.confirmation(
            f"Retirer {names} comme médecin traitant ?" if attending else f"Retirer l'autorisation de {names} ?",
            f"{names} ne pourra plus consulter ce dossier. Vous pourrez l'autoriser de nouveau à tout moment.",
            url_for("space.sharing_page"))
        if asked:
            return asked
    consents.revoke(g.repository, stored, set(chosen))
    flash("Votre décision est retirée.")
    return redirect(url_for("space.sharing_page"))


@space.post("/acces/opposition/<kind>")
def opposition(kind: str):
    if kind not in OPPOSITIONS:
        flash("Choix inconnu.", "error")
        return redirect(url_for("space.sharing_page"))
    oppose = request.form.get("decision") == "opposer"
    if oppose:
        asked = common.confirmation(f"Vous opposer à {OPPOSITIONS[kind]} ?",
                                    "En cas d'urgence, les professionnels qui vous prennent en charge ne pourront plus "
                                    "consulter ce dossier, même pour vous soigner.", url_for("space.sharing_page"))
        if asked:
            return asked
    current = [stored for stored, k, effect, _ in _decisions() if k == kind and effect == "deny"]
    if oppose and not current:
        consents.create(g.repository, consents.decision(kind, "deny"))
    if not oppose:
        for stored in current:
            consents.revoke(g.repository, stored)
    flash(f"Vous vous opposez à {OPPOSITIONS[kind]}." if oppose else f"Vous autorisez {OPPOSITIONS[kind]}.")
    return redirect(url_for("space.sharing_page"))
