"""What several pages need: the record being managed, names from the directory, labels in French."""
from __future__ import annotations

from flask import g

from gateway.access.rules import IDNATPS_SYSTEM
from gateway.mapping import codes
from gateway.services import consents
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


def documents() -> list[dict]:
    """The documents of the record the signed-in person may see (one audited search)."""
    return [s.json() for s in g.repository.search_all("DocumentReference", [("patient", f"Patient/{patient_id()}"),
                                                                          ("status", "current")])]


def decisions() -> list[StoredResource]:
    return g.repository.search(consents.search_request(patient_id())).entries


def practitioner(idnatps: str) -> dict | None:
    """The directory entry of a professional (the directory is not patient data: no trail)."""
    cache = g.setdefault("practitioners", {})
    if idnatps not in cache:
        found = g.repository.search(search_sql.parse_search("Practitioner", [
            ("identifier", f"{IDNATPS_SYSTEM}|{idnatps}")])).entries
        cache[idnatps] = found[0].json() if found else None
    return cache[idnatps]


def person_name(resource: dict | None) -> str | None:
    if not resource:
        return None
    for name in resource.get("name", []):
        parts = [*name.get("prefix", []), *name.get("given", []), name.get("family", "")]
        text = name.get("text") or " ".join(p for p in parts if p)
        if text:
            return text
    return None


def idnatps_of(practitioner: dict) -> str | None:
    return next((i["value"] for i in practitioner.get("identifier", []) if i.get("system") == IDNATPS_SYSTEM), None)


def professional_name(idnatps: str) -> str:
    fallback = f"Professionnel RPPS {idnatps[1:]}" if idnatps.startswith("8") else f"Professionnel {idnatps}"
    return person_name(practitioner(idnatps)) or fallback


def organization_name(finess: str) -> str:
    cache = g.setdefault("organizations", {})
    if finess not in cache:
        found = g.repository.search(search_sql.parse_search("Organization", [
            ("identifier", f"{codes.FINESS_SYSTEM}|{finess}")])).entries
        cache[finess] = (found[0].json().get("name") if found else None) or f"Établissement FINESS {finess}"
    return cache[finess]


def title_of(docref: dict) -> str:
    attachment = docref.get("content", [{}])[0].get("attachment", {})
    return attachment.get("title") or docref.get("type", {}).get("coding", [{}])[0].get("display") or "Document"
