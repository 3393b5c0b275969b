"""Access history: who read or changed the record, from which organisation, when, what and why,
from the audit trail. The professionals' and the feeding systems' accesses come first, refused
attempts and emergency accesses among them; the patient's own actions have a view of their own."""
from __future__ import annotations

import base64

from flask import g, render_template, request

from gateway.access.audit import ROLE_SYSTEM
from gateway.access.context import PATIENT, REPRESENTATIVE, SYSTEM
from gateway.mapping import codes
from gateway.space import space
from gateway.storage import search as search_sql
from gateway.storage.repository import StoredResource

from . import common

# view: (title, search parameters beside the patient)
VIEWS = {
    "professionnels": ("Accès des professionnels et des établissements",
                       [("agent-role:not", f"{ROLE_SYSTEM}|{PATIENT},{ROLE_SYSTEM}|{REPRESENTATIVE}")]),
    "urgence": ("Accès en urgence", [("purpose", "BTG,ETREAT")]),
    "refuses": ("Tentatives refusées", [("outcome", "4,8")]),
    "vous": ("Vos propres actions", [("agent-role", f"{ROLE_SYSTEM}|{PATIENT},{ROLE_SYSTEM}|{REPRESENTATIVE}")]),
}
PURPOSES = {"TREAT": "Soins", "BTG": "Urgence (bris de glace)", "ETREAT": "Régulation du SAMU (centre 15)"}
ACTIONS = {"read": "a consulté", "vread": "a consulté", "history-instance": "a consulté l'historique de",
           "create": "a ajouté", "update": "a modifié", "patch": "a changé la visibilité de", "delete": "a supprimé"}
# The entity an event is told by: the document rather than its content when it names both.
ENTITY_ORDER = ("DocumentReference", "Consent", "RelatedPerson", "List", "Binary", "AuditEvent")
RESOURCE_WORDS = {"DocumentReference": "le document", "Binary": "le contenu du document", "Patient": "l'identité du patient",
                  "Consent": "une décision d'accès", "RelatedPerson": "un contact d'urgence", "List": "un lot de documents",
                  "AuditEvent": "l'historique des accès"}
SEARCH_WORDS = {"DocumentReference": "des documents", "Consent": "les décisions d'accès", "Patient": "l'identité du patient",
                "AuditEvent": "l'historique des accès", "RelatedPerson": "les contacts d'urgence",
                "List": "des lots de documents", "Binary": "des contenus de documents"}
# The gateway's own processes, run by whoever operates the service (not a hospital's software).
OPERATOR_PROCESSES = ("gateway ingest", "demo setup", "operator")
PAGE_SIZE = 30


def _requester(event: dict) -> dict:
    return next((a for a in event.get("agent", []) if a.get("requestor")), {})


def _token_organization(event: dict) -> str | None:
    for agent in event.get("agent", []):
        identifier = agent.get("who", {}).get("identifier", {})
        if not agent.get("requestor") and identifier.get("system") == codes.FINESS_SYSTEM:
            return common.organization_name(identifier["value"])
    return None


def _references(event: dict) -> list[str]:
    return [e.get("what", {}).get("reference", "") for e in event.get("entity", [])]


def _what(event: dict, documents: dict[str, dict], role: str | None) -> str:
    subtype = (event.get("subtype") or [{}])[0].get("code", "")
    if event.get("type", {}).get("code") == "110113":   # a decision on an emergency access or a role
        if subtype == "AuthZ-Role" and role == REPRESENTATIVE:
            # access.context.ClosedToHolder: the patient came of age (or the record gives no birth date).
            return "a été refusé : le dossier n'est plus ouvert à vos représentants légaux"
        if subtype == "AuthZ-Role":
            return "a été refusé : sa fonction ne donne jamais accès au dossier"
        return "a obtenu l'accès en urgence, faute d'opposition enregistrée"
    refused = event.get("outcome") != "0"
    action = ACTIONS.get(subtype)
    for entity in event.get("entity", []):
        if "query" in entity:
            if refused:
                return "a tenté de consulter le dossier : accès refusé"
            searched = base64.b64decode(entity["query"]).decode("utf-8", "replace").partition("?")[0].rsplit("/", 1)[-1]
            return f"a recherché {SEARCH_WORDS.get(searched, 'dans le dossier')}"
    references = _references(event)
    for res_type in ENTITY_ORDER:
        reference = next((r for r in references if r.startswith(f"{res_type}/")), None)
        if reference:
            document = documents.get(reference)
            phrase = f"{action or 'a consulté'} {RESOURCE_WORDS[res_type]}".replace(" de le ", " du ")
            phrase += f" « {document['title']} »" if document else ""
            return phrase + (" : accès refusé" if refused else "")
    return f"{action or 'a consulté'} {RESOURCE_WORDS['Patient']}" + (" : accès refusé" if refused else "")


def _system_name(requester: dict, event: dict, documents: dict[str, dict]) -> tuple[str, str]:
    """(who, detail) of a feeding system: the organisation that sent the data, never an address."""
    organization = _token_organization(event) or next(
        (documents[r]["organization"] for r in _references(event) if r in documents and documents[r]["organization"]),
        None)
    if organization:
        return organization, "Logiciel de l'établissement"
    if requester.get("altId") in OPERATOR_PROCESSES:
        return "Service du dossier médical partagé", "Import de documents par l'exploitant"
    return "Un établissement de santé", "Logiciel de l'établissement"


def describe(event: dict, documents: dict[str, dict], own_agent: set[str]) -> dict:
    """`own_agent`: how the trail names the reader as the agent of an event (a patient by their
    Patient, earlier by their INS; a representative by their login)."""
    requester = _requester(event)
    role = next((c.get("code") for r in requester.get("role", []) for c in r.get("coding", [])
                 if c.get("system") == ROLE_SYSTEM), None)
    purpose = next((c.get("code") for p in event.get("purposeOfEvent", []) for c in p.get("coding", [])), "TREAT")
    own = bool(own_agent & {requester.get("altId"), requester.get("who", {}).get("reference")} - {None})
    if own:
        who, detail = "Vous", None
    elif role == PATIENT:
        who, detail = "Le patient", None
    elif role == REPRESENTATIVE:
        who, detail = requester.get("name") or "Un représentant légal", "Représentant·e légal·e"
    elif role == SYSTEM:
        who, detail = _system_name(requester, event, documents)
    else:
        # The IdNatPs: the requester's altId, or (a decision on an emergency access) its identifier.
        idnatps = requester.get("altId") or requester.get("who", {}).get("identifier", {}).get("value")
        professional = common.professional(idnatps) if idnatps else None
        named = requester.get("name") not in (None, "", idnatps)   # a token without a name: the number
        who = requester["name"] if named else (professional["name"] if professional else "Professionnel non identifié")
        organization = _token_organization(event) or (professional or {}).get("organization")
        detail = " · ".join(p for p in ((professional or {}).get("specialty") or common.ROLE_LABELS.get(role, ""),
                                        organization) if p)
    if role in (PATIENT, REPRESENTATIVE):
        why = "Gestion du dossier"
    elif role == SYSTEM:
        why = "Alimentation du dossier"
    else:
        why = PURPOSES.get(purpose, "Soins")
    return {"when": event.get("recorded", ""), "who": who, "detail": detail, "what": _what(event, documents, role),
            "why": why, "emergency": purpose in ("BTG", "ETREAT"), "refused": event.get("outcome") != "0",
            "own": own}


def _documents(included: list[StoredResource]) -> dict[str, dict]:
    """Title and sending organisation of each document (and each document's content) the page's
    events name, as their search included them: the reader's rules chose them. A content names
    its document by its securityContext. Reading every document of the record instead took 2.3 s
    for a page of 30 events in a record of 5,902."""
    docrefs = {s.res_id: s.json() for s in included if s.res_type == "DocumentReference"}
    holders = {s.res_id: s.json().get("securityContext", {}).get("reference", "").partition("/")
               for s in included if s.res_type == "Binary"}
    missing = {res_id for kind, _, res_id in holders.values() if kind == "DocumentReference"} - docrefs.keys()
    if missing:
        docrefs |= {s.res_id: s.json() for s in g.repository.search_all("DocumentReference", [("_id", ",".join(missing))])}
    described = {res_id: {"title": common.title_of(d), "organization": common.document_organization(d)}
                 for res_id, d in docrefs.items()}
    out = {f"DocumentReference/{res_id}": d for res_id, d in described.items()}
    out |= {f"Binary/{binary_id}": described[res_id] for binary_id, (_, _, res_id) in holders.items()
            if res_id in described}
    return out


@space.get("/historique")
def history_page():
    view = request.args.get("vue") if request.args.get("vue") in VIEWS else "professionnels"
    title, criteria = VIEWS[view]
    params = [("patient", f"Patient/{common.patient_id()}"), *criteria, ("_sort", "-date"), ("_count", str(PAGE_SIZE)),
              ("_include", "AuditEvent:entity:DocumentReference,AuditEvent:entity:Binary")]
    if request.args.get("page"):
        params.append(("_cursor", request.args["page"]))
    page = g.repository.search(search_sql.parse_search("AuditEvent", params))
    documents = _documents(page.included)
    access = g.repository.access
    own = {access.subject} | ({f"Patient/{common.patient_id()}"} if access.role == PATIENT else set())
    events = [describe(s.json(), documents, own) for s in page.entries]
    following = search_sql.encode_cursor(page.next_keys, "n") if page.next_keys is not None else None
    return render_template("history.html", events=events, total=page.total, following=following, view=view,
                           views=VIEWS, title=title)
