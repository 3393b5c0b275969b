"""Access history: who read or changed the record, when, what and why, from the audit trail."""
from __future__ import annotations

import base64
from urllib.parse import parse_qsl

from flask import g, render_template, request

from gateway.access.audit import ROLE_SYSTEM
from gateway.access.rules import binary_ids
from gateway.mapping import codes
from gateway.space import space
from gateway.storage import search as search_sql

from . import common

PURPOSES = {"TREAT": "Soins", "BTG": "Accès en urgence (bris de glace)", "ETREAT": "Régulation SAMU (centre 15)"}
ACTIONS = {"read": "a consulté", "vread": "a consulté", "history-instance": "a consulté l'historique de",
           "search-type": "a recherché", "create": "a ajouté", "update": "a modifié", "patch": "a changé le masquage de"}
# The entity an event is told by: the document rather than its content when it names both.
ENTITY_ORDER = ("DocumentReference", "Consent", "RelatedPerson", "List", "Binary", "AuditEvent")
RESOURCE_WORDS = {"DocumentReference": "le document", "Binary": "le contenu du document", "Patient": "votre identité",
                  "Consent": "une décision d'accès", "RelatedPerson": "un contact d'urgence", "List": "un lot de documents",
                  "AuditEvent": "l'historique des accès"}
SEARCH_WORDS = {"DocumentReference": "des documents", "Consent": "vos décisions d'accès", "Patient": "votre identité",
                "AuditEvent": "l'historique des accès", "RelatedPerson": "vos contacts d'urgence",
                "List": "des lots de documents", "Binary": "des contenus"}
PAGE_SIZE = 30


def _requester(event: dict) -> dict:
    return next((a for a in event.get("agent", []) if a.get("requestor")), {})


def _organization(event: dict) -> str | None:
    for agent in event.get("agent", []):
        identifier = agent.get("who", {}).get("identifier", {})
        if not agent.get("requestor") and identifier.get("system") == codes.FINESS_SYSTEM:
            return common.organization_name(identifier["value"])
    return None


def _what(event: dict, titles: dict[str, str]) -> str:
    subtype = (event.get("subtype") or [{}])[0].get("code", "")
    if event.get("meta", {}).get("profile", [""])[0].endswith("AuthZconsent"):
        if subtype == "AuthZ-Role":
            return "a été refusé : ce rôle n'a jamais accès au dossier"
        return "a obtenu un accès en l'absence d'opposition de votre part"
    action = ACTIONS.get(subtype, subtype)
    for entity in event.get("entity", []):
        if entity.get("query"):
            query = base64.b64decode(entity["query"]).decode("utf-8", "replace")
            path, _, params = query.partition("?")
            res_type = path.rsplit("/", 1)[-1]
            found = SEARCH_WORDS.get(res_type, res_type)
            return f"{action} {found}" + (f" ({len(parse_qsl(params))} critères)" if params else "")
    references = [e.get("what", {}).get("reference", "") for e in event.get("entity", [])]
    for res_type in ENTITY_ORDER:
        reference = next((r for r in references if r.startswith(f"{res_type}/")), None)
        if reference:
            title = titles.get(reference)
            words = RESOURCE_WORDS[res_type]
            phrase = f"{action} {words}".replace(" de le ", " du ")
            return phrase + (f" « {title} »" if title else "")
    return f"{action} {RESOURCE_WORDS['Patient']}"


def describe(event: dict, titles: dict[str, str], own_subject: str) -> dict:
    requester = _requester(event)
    role = next((c.get("code") for r in requester.get("role", []) for c in r.get("coding", [])
                 if c.get("system") == ROLE_SYSTEM), None)
    purpose = next((c.get("code") for p in event.get("purposeOfEvent", []) for c in p.get("coding", [])), "TREAT")
    own = requester.get("altId") == own_subject
    who = "Vous" if own else ("Le patient" if role == "patient" else requester.get("name") or "Inconnu")
    return {
        "when": event.get("recorded", ""),
        "who": who,
        "profession": common.ROLE_LABELS.get(role, role or ""),
        "organization": _organization(event),
        "what": _what(event, titles),
        "why": PURPOSES.get(purpose, purpose),
        "emergency": purpose in ("BTG", "ETREAT"),
        "refused": event.get("outcome") != "0",
        "own": own,
    }


@space.get("/historique")
def history_page():
    params = [("patient", f"Patient/{common.patient_id()}"), ("_sort", "-date"), ("_count", str(PAGE_SIZE))]
    if request.args.get("page"):
        params.append(("_cursor", request.args["page"]))
    if request.args.get("urgence"):
        params.append(("purpose", "BTG,ETREAT"))
    page = g.repository.search(search_sql.parse_search("AuditEvent", params))
    titles = {}
    for docref in common.documents():
        titles[f"DocumentReference/{docref['id']}"] = common.title_of(docref)
        for binary_id in binary_ids(docref):
            titles[f"Binary/{binary_id}"] = common.title_of(docref)
    own = g.repository.access.subject
    events = [describe(s.json(), titles, own) for s in page.entries]
    following = search_sql.encode_cursor(page.next_keys, "n") if page.next_keys is not None else None
    return render_template("history.html", events=events, total=page.total, following=following,
                           emergency_only=bool(request.args.get("urgence")))
