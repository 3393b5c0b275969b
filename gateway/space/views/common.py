"""What several pages need: the record being managed, names from the directory, labels in French."""
from __future__ import annotations

from datetime import date

from flask import g, render_template, request

from gateway.access.rules import FINESS, IDNATPS_SYSTEM, IDNATST_SYSTEM, period_bounds
from gateway.mapping import codes
from gateway.mapping.dates import index_now
from gateway.services import consents
from gateway.services.directory import person_name, rpps_number
from gateway.storage import search as search_sql
from gateway.storage.repository import StoredResource

ROLE_LABELS = {"patient": "Patient", "representative": "Représentant légal", "doctor": "Médecin",
               "nurse": "Infirmier·ère", "pharmacist": "Pharmacien·ne", "midwife": "Sage-femme",
               "physiotherapist": "Masseur-kinésithérapeute", "dentist": "Chirurgien-dentiste",
               "care-team": "Équipe de soins", "occupational-doctor": "Médecin du travail",
               "regulator": "Médecin régulateur (SAMU)", "system": "Logiciel de l'établissement",
               "insurer": "Assureur, banque ou employeur", "admin": "Exploitation"}


def patient_id() -> str:
    if "patient_id" not in g:
        g.patient_id = consents.own_patient(g.repository)
    return g.patient_id


def documents(criteria: list[tuple[str, str]] = ()) -> list[dict]:
    """The documents of the record the signed-in person may see, of those `criteria` (search
    parameters) choose (one audited search)."""
    return [s.json() for s in g.repository.search_all("DocumentReference", [("patient", f"Patient/{patient_id()}"),
                                                                          ("status", "current"), *criteria])]


def decisions() -> list[StoredResource]:
    return g.repository.search(consents.search_request(patient_id())).entries


def practitioner(idnatps: str) -> dict | None:
    """The directory entry of a professional (the directory is not patient data: no trail)."""
    cache = g.setdefault("practitioners", {})
    if idnatps not in cache:
        # One value: a comma would make it a list of them, which any one of its items would match.
        value = idnatps.replace(",", "\\,")
        found = g.repository.search(search_sql.parse_search("Practitioner", [
            ("identifier", f"{IDNATPS_SYSTEM}|{value}")])).entries
        cache[idnatps] = found[0].json() if found else None
    return cache[idnatps]


def professional(idnatps: str) -> dict | None:
    """Name, specialty and organisation of a professional, from the directory (Practitioner and
    PractitionerRole); None when the directory does not know them."""
    cache = g.setdefault("professionals", {})
    if idnatps not in cache:
        found = practitioner(idnatps)
        if found is None:
            cache[idnatps] = None
            return None
        roles = g.repository.search(search_sql.parse_search("PractitionerRole", [
            ("practitioner", f"Practitioner/{found['id']}"), ("_count", "1")])).entries
        role = roles[0].json() if roles else {}
        specialty = next((c.get("display") for s in role.get("specialty", []) for c in s.get("coding", [])), None) \
            or next((c.get("display") for q in found.get("qualification", []) for c in q.get("code", {}).get("coding", [])),
                    None)
        organization = None
        if role.get("organization", {}).get("reference", "").startswith("Organization/"):
            organization = g.repository.read("Organization", role["organization"]["reference"].split("/", 1)[1]).json()
        cache[idnatps] = {"name": person_name(found) or f"Professionnel {idnatps}",
                          "specialty": _plain_specialty(specialty),
                          "organization": organization.get("name") if organization else None}
    return cache[idnatps]


def _plain_specialty(display: str | None) -> str | None:
    """"Médecin - Médecine générale (SM)" as a patient reads it: "Médecine générale"."""
    if not display:
        return None
    return display.split(" - ", 1)[-1].removesuffix(" (SM)")


def document_organization(docref: dict) -> str | None:
    """The organisation a document comes from: its author's, else its custodian's."""
    for resource in docref.get("contained", []):
        if resource.get("resourceType") == "Organization" and resource.get("name"):
            return resource["name"]
    reference = docref.get("custodian", {}).get("reference", "")
    if reference.startswith("Organization/"):
        return g.repository.read("Organization", reference.split("/", 1)[1]).json().get("name")
    return None


def idnatps_of(practitioner: dict) -> str | None:
    return next((i["value"] for i in practitioner.get("identifier", []) if i.get("system") == IDNATPS_SYSTEM), None)


def professional_name(idnatps: str) -> str:
    """The name the directory gives; the number only when the directory does not know it."""
    rpps = rpps_number(idnatps)
    fallback = f"Professionnel RPPS {rpps}" if rpps else f"Professionnel {idnatps}"
    return person_name(practitioner(idnatps)) or fallback


def organization_name(structure: str) -> str:
    """The directory's name of a structure as the rules name it (access.rules.structure): its FINESS,
    or its IdNatSt of another kind (a cabinet's), which was said to be a FINESS."""
    cache = g.setdefault("organizations", {})
    if structure not in cache:
        finess = FINESS.fullmatch(structure)
        system = codes.FINESS_SYSTEM if finess else IDNATST_SYSTEM
        value = structure.replace(",", "\\,")   # one value, as practitioner's
        found = g.repository.search(search_sql.parse_search("Organization", [
            ("identifier", f"{system}|{value}")])).entries
        cache[structure] = (found[0].json().get("name") if found else None) or (
            f"Établissement FINESS {structure}" if finess else f"Structure d'identifiant national {structure}")
    return cache[structure]


def period_state(period: dict) -> dict:
    """An authorisation's period as the patient reads it: its first and last days, and whether it
    holds now ("current"), ended ("ended") or is still to come ("future")."""
    valid_from, valid_until = period_bounds(period)
    now = index_now()
    return {"from": _day(period.get("start")), "until": _day(period.get("end")),
            "state": "ended" if valid_until and valid_until < now else "future" if valid_from and valid_from > now
            else "current"}


def _day(value: str | None) -> str | None:
    return date.fromisoformat(value[:10]).strftime("%d/%m/%Y") if value else None


def title_of(docref: dict) -> str:
    attachment = docref.get("content", [{}])[0].get("attachment", {})
    return attachment.get("title") or docref.get("type", {}).get("coding", [{}])[0].get("display") or "Document"


def confirmation(question: str, consequence: str, back: str):
    """None when the form was confirmed; else the page that asks, with the same form to send again.

    Every action that takes someone's access away goes through here: a click on a list of people
    must not silently lock a doctor out."""
    if request.form.get("confirmation") == "oui":
        return None
    fields = [(k, v) for k, v in request.form.items(multi=True) if k not in ("csrf_token", "confirmation")]
    return render_template("confirm.html", question=question, consequence=consequence, fields=fields,
                           action=request.path, back=back)
