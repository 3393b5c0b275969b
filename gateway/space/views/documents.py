"""My documents: the record grouped as the DMP groups it, each document readable, its masking."""
from __future__ import annotations

from flask import Response, current_app, flash, g, redirect, render_template, request, url_for

from gateway.access import AccessContext
from gateway.access.context import EMERGENCY, REGULATION, REPRESENTATIVE
from gateway.access.writes import changeable_labels
from gateway.access.rules import (
    IDNATPS_SYSTEM,
    INVISIBLE_REPRESENTATIVES,
    MASQUE_PS,
    consent_actors,
    consent_kind,
    for_a_period,
    visibility_codes,
)
from gateway.refusal import Refused
from gateway.cda.narrative import readable_body
from gateway.cda.parser import parse_cda
from gateway.mapping import codes
from gateway.mapping.document import author_idnatps
from gateway.mapping.groups import grouped
from gateway.mapping.submission import LIST_TYPES
from gateway.services import labels
from gateway.services.export import file_extension
from gateway.space import accounts, record_closed_on, space

from . import common


@space.get("/documents")
def documents_page():
    groups = grouped(common.documents())
    docs = [d for _, _, members in groups for d in members]
    return render_template("documents.html", groups=groups, count=len(docs), folders=_folders(docs),
                           masked={d["id"] for d in docs if MASQUE_PS in visibility_codes(d)})


def _folders(docs: list[dict]) -> list[tuple[dict, list[dict]]]:
    """The record's Folders the signed-in person may see (one audited search), newest first, each
    with its current documents: those a hospital filed together (a stay, a follow-up)."""
    by_reference = {f"DocumentReference/{doc['id']}": doc for doc in docs}
    folders = [s.json() for s in g.repository.search_all("List", [
        ("patient", f"Patient/{common.patient_id()}"), ("code", f"{LIST_TYPES}|folder"), ("_sort", "-date")])]
    return [(folder, [by_reference[e["item"]["reference"]] for e in folder.get("entry", [])
                      if e.get("item", {}).get("reference") in by_reference]) for folder in folders]


def _content(docref: dict):
    """(media type, bytes, sections): the readable body of a CDA, or the file itself."""
    media_type, data = g.repository.document_content(docref)
    if media_type in ("text/xml", "application/xslt+xml"):
        settings = current_app.config["SETTINGS"]
        try:
            root, _ = parse_cda(data, max_bytes=settings.max_document_bytes)
        except Refused:
            return None, None, []
        body = readable_body(root)
        return body.media_type, body.data, body.sections
    return media_type, data, []


@space.get("/documents/<docref_id>")
def document_page(docref_id: str):
    docref = g.repository.read("DocumentReference", docref_id).json()
    media_type, data, sections = _content(docref)
    text = data.decode("utf-8", "replace") if media_type == "text/plain" and data is not None else None
    # Who manages the record as a representative, which the patient's masking form and list of
    # readers both tell (a representative is told neither): asked once.
    access = g.repository.access
    representatives = set() if access.role == REPRESENTATIVE else accounts.representatives(g.repository.engine,
                                                                                         access.patient_ins)
    labels = visibility_codes(docref)
    return render_template("document.html", doc=docref, title=common.title_of(docref), sections=sections,
                           media_type=media_type, text=text, labels=labels,
                           masked_by_patient=MASQUE_PS in labels and g.repository.masked_by_its_patient(docref_id),
                           changeable=_changeable(docref, representatives),
                           readers=_readers(docref, representatives), authors=_authors(docref))


def _changeable(docref: dict, representatives: set[bool]) -> set[str]:
    """The labels the signed-in person may set here; hiding from representatives only when someone
    manages the record as one (or the label is already there, so it can be removed)."""
    changeable = changeable_labels(g.repository.access)
    if (INVISIBLE_REPRESENTATIVES in changeable and INVISIBLE_REPRESENTATIVES not in visibility_codes(docref)
            and not representatives):
        changeable = changeable - {INVISIBLE_REPRESENTATIVES}
    return changeable


@space.get("/documents/<docref_id>/fichier")
def document_file(docref_id: str):
    """The document's file: the PDF (or text) of an N1 document or of a personal document."""
    docref = g.repository.read("DocumentReference", docref_id).json()
    media_type, data, _ = _content(docref)
    if data is None:
        return redirect(url_for("space.document_page", docref_id=docref_id))
    extension = file_extension(media_type)
    disposition = "attachment" if request.args.get("telechargement") else "inline"
    response = Response(data, mimetype=media_type)
    if media_type == "text/plain":
        response.charset = "utf-8"
    response.headers["Content-Disposition"] = f'{disposition}; filename="document-{docref_id[:8]}.{extension}"'
    return response


@space.get("/documents/<docref_id>/original")
def document_original(docref_id: str):
    """The document exactly as it was received (the CDA, signed or not)."""
    docref = g.repository.read("DocumentReference", docref_id).json()
    media_type, data = g.repository.document_content(docref)
    extension = file_extension(media_type)
    response = Response(data, mimetype=media_type)
    response.headers["Content-Disposition"] = f'attachment; filename="document-{docref_id[:8]}.{extension}"'
    return response


@space.post("/documents/<docref_id>/masquage")
def change_masking(docref_id: str):
    label = request.form.get("label")
    hide = request.form.get("action") == "masquer"
    if label not in (MASQUE_PS, INVISIBLE_REPRESENTATIVES):
        flash("Choix de masquage inconnu.", "error")
        return redirect(url_for("space.document_page", docref_id=docref_id))
    read = g.repository.read("DocumentReference", docref_id)
    current = read.json()
    if hide:
        whom = "aux professionnels de santé" if label == MASQUE_PS else "à vos représentants légaux"
        asked = common.confirmation(
            f"Masquer « {common.title_of(current)} » {whom} ?",
            "Les professionnels autorisés ne le verront plus ; votre médecin traitant et l'auteur du document le "
            "verront toujours. Vous seul·e, ou votre représentant légal, pourrez le démasquer."
            if label == MASQUE_PS else "Vos représentants légaux ne le verront plus.",
            url_for("space.document_page", docref_id=docref_id))
        if asked:
            return asked
    present = [i for i, lb in enumerate(current.get("securityLabel", []))
               if any(c.get("system") == codes.VISIBILITY_SYSTEM and c.get("code") == label for c in lb.get("coding", []))]
    if hide and not present:
        patch = [{"op": "add", "path": "/securityLabel/-",
                  "value": {"coding": [{"system": codes.VISIBILITY_SYSTEM, "code": label}]}}]
    elif not hide and present:
        patch = [{"op": "remove", "path": f"/securityLabel/{i}"} for i in reversed(present)]
    else:
        return redirect(url_for("space.document_page", docref_id=docref_id))
    # Made to the version the positions were read from (If-Match): made again from a newer one, a
    # removal by position could take off another label than the one the patient chose.
    labels.patch_document(g.repository, docref_id, labels.json_patch(patch), if_match=read.version)
    flash({(MASQUE_PS, True): "Le document est masqué aux professionnels de santé.",
           (MASQUE_PS, False): "Le document est de nouveau visible des professionnels autorisés.",
           (INVISIBLE_REPRESENTATIVES, True): "Le document est masqué à vos représentants légaux.",
           (INVISIBLE_REPRESENTATIVES, False): "Le document est de nouveau visible de vos représentants légaux."}
          [(label, hide)])
    return redirect(url_for("space.document_page", docref_id=docref_id))


def _authors(docref: dict) -> list[str]:
    """The name of each author of the document (a contained PractitionerRole names its person)."""
    contained = {c.get("id"): c for c in docref.get("contained", [])}
    out = []
    for author in docref.get("author", []):
        reference = author.get("reference", "")
        if reference.startswith("Practitioner/"):
            out.append(common.person_name(g.repository.read("Practitioner", reference.split("/", 1)[1]).json()))
        elif reference.startswith("#"):
            found = contained.get(reference[1:]) or {}
            if found.get("resourceType") == "Device":   # the health insurance's feed, a lab's analyser
                owner = contained.get(found.get("owner", {}).get("reference", "")[1:], {})
                out.append(next((n.get("name") for n in found.get("deviceName", [])), None) or owner.get("name")
                           or "Logiciel")
                continue
            person = contained.get(found.get("practitioner", {}).get("reference", "")[1:], found)
            out.append(common.person_name(person))
        elif reference.startswith("Patient/"):
            out.append("Vous" if g.repository.access.role == "patient" else "Le patient")
        else:
            out.append(author.get("display"))
    return [name or "Professionnel" for name in out]


def _readers(docref: dict, representatives: set[bool]) -> list[dict]:
    """Who may see this document now, each asked of the access rules themselves, and why: a
    "can see it" names its ground (attending physician, author, authorised, emergency), a "cannot"
    its obstacle (masked, blocked, opposed, closed). `representatives`: accounts.representatives."""
    access = g.repository.access
    ins = access.patient_ins
    masked = MASQUE_PS in visibility_codes(docref)
    closed = record_closed_on() is not None
    professionals: dict[str, set[str]] = {}
    denied, opposed = set(), set()
    periods: dict[str, dict] = {}   # of the authorisations given for a period: common.period_state
    for stored in common.decisions():
        consent = stored.json()
        kind, effect = consent_kind(consent), consent["provision"]["type"]
        actors = [value for system, value in consent_actors(consent) if system == IDNATPS_SYSTEM]
        if kind in ("attending-physician", "professional") and effect == "permit":
            for idnatps in actors:
                professionals.setdefault(idnatps, set()).add(kind)
                if for_a_period(consent):
                    periods[idnatps] = common.period_state(consent["provision"]["period"])
        elif kind == "professional":
            denied.update(actors)
        elif effect == "deny":
            opposed.add(kind)
    for idnatps in author_idnatps(docref):
        professionals.setdefault(idnatps, set()).add("author")
    out = []
    order = {"attending-physician": 0, "professional": 1, "author": 2}
    for idnatps, relations in sorted(professionals.items(), key=lambda item: min(order[r] for r in item[1])):
        visible = g.repository.visible_to(AccessContext(role="doctor", subject=idnatps), "DocumentReference",
                                          docref["id"])
        if visible:
            reason = ("médecin traitant : voit tous les documents, même masqués" if "attending-physician" in relations
                      else "auteur du document : le voit même masqué" if masked and "author" in relations
                      else "autorisé·e par vous" if "professional" in relations else "auteur du document")
        elif periods.get(idnatps, {}).get("state") in ("ended", "future"):
            period = periods[idnatps]
            reason = (f"son autorisation a pris fin le {period['until']}" if period["state"] == "ended"
                      else f"son autorisation commence le {period['from']}")
        else:
            reason = ("bloqué·e par vous" if idnatps in denied else "le dossier est fermé" if closed
                      else "vous vous êtes opposé·e à la consultation de votre dossier" if "consultation" in opposed
                      else "le document est masqué aux professionnels" if masked and relations != {"author"}
                      else "n'est pas autorisé·e à consulter ce dossier")
        labels = {"attending-physician": "médecin traitant", "professional": "autorisé·e", "author": "auteur"}
        out.append({"who": common.professional_name(idnatps), "roles": ", ".join(labels[r] for r in sorted(relations)),
                    "visible": visible, "reason": reason})
    for who, reader, opposition in (
            ("Un professionnel en urgence (bris de glace)",
             AccessContext(role="doctor", subject="urgence", purpose=EMERGENCY, patient_ins=ins), "emergency-access"),
            ("Le médecin régulateur du SAMU (centre 15)",
             AccessContext(role="regulator", subject="samu", purpose=REGULATION, patient_ins=ins), "regulation-access")):
        visible = g.repository.visible_to(reader, "DocumentReference", docref["id"])
        reason = ("accès en urgence, toujours inscrit dans l'historique" if visible
                  else "vous vous y êtes opposé·e" if opposition in opposed else "le dossier est fermé" if closed
                  else "vous vous êtes opposé·e à la consultation de votre dossier" if "consultation" in opposed
                  else "le document est masqué aux professionnels" if masked else "accès impossible")
        out.append({"who": who, "roles": None, "visible": visible, "reason": reason})
    if representatives:
        # A guardian's access outlives the patient's majority: the line tells of theirs when there is one.
        representative = AccessContext(role=REPRESENTATIVE, subject="representant", patient_ins=ins,
                                       guardianship=True in representatives)
        visible = g.repository.visible_to(representative, "DocumentReference", docref["id"])
        closed = None if visible else g.repository.closed_to_holder(representative)
        reason = ("représentants légaux" if visible else "le document leur est masqué" if closed is None
                  else "vous êtes majeur·e : ils n'accèdent plus à votre dossier" if closed.came_of_age
                  else "votre dossier n'indique pas votre date de naissance : ils n'y accèdent pas")
        out.append({"who": "Votre tuteur ou tutrice" if representative.guardianship else "Vos représentants légaux",
                    "roles": None, "visible": visible, "reason": reason})
    return out
