"""Personal space: documents the patient adds (advance directives among them) and emergency contacts."""
from __future__ import annotations

from flask import current_app, flash, g, redirect, render_template, request, url_for

from gateway.mapping.codes import CLASS_SYSTEM
from gateway.mapping.groups import PERSONAL, classes_of, group_of
from gateway.services import personal
from gateway.space import space

from . import common


@space.get("/espace-personnel")
def personal_page():
    # The group's classes chosen in the SQL: a record of 5,902 documents took 2.3 s to show its 3.
    mine = [d for d in common.documents([("category", ",".join(f"{CLASS_SYSTEM}|{c}" for c in classes_of(PERSONAL)))])
            if group_of(d) == PERSONAL]
    contacts = [s.json() for s in g.repository.search_all("RelatedPerson", [
        ("patient", f"Patient/{common.patient_id()}"), ("active", "true")])]
    return render_template("personal.html", documents=mine, contacts=contacts, types=personal.PATIENT_DOCUMENT_TYPES,
                           relations=personal.RELATIONS)


@space.post("/espace-personnel/documents")
def add_document():
    upload = request.files.get("fichier")
    if upload is None or not upload.filename:
        flash("Choisissez un fichier PDF ou texte à ajouter.", "error")
        return redirect(url_for("space.personal_page"))
    data = upload.read()
    media_type = "application/pdf" if data.startswith(b"%PDF-") else "text/plain"
    stored, added = personal.add_document(g.repository, title=request.form.get("titre", "") or upload.filename,
                                          type_code=request.form.get("type", ""), media_type=media_type, data=data,
                                          max_bytes=current_app.config["SETTINGS"].max_document_bytes,
                                          file_name=upload.filename)
    flash("Le document est ajouté à votre espace personnel." if added else
          "Ce document est déjà dans votre espace personnel : il n'a pas été ajouté une seconde fois.")
    return redirect(url_for("space.document_page", docref_id=stored.res_id))


@space.post("/espace-personnel/contacts")
def add_contact():
    _, added = personal.add_contact(g.repository, family=request.form.get("nom", ""),
                                    given=request.form.get("prenom", ""), relation=request.form.get("lien", ""),
                                    phone=request.form.get("telephone", ""))
    flash("Le contact d'urgence est enregistré." if added else "Ce contact d'urgence est déjà enregistré.")
    return redirect(url_for("space.personal_page"))


@space.post("/espace-personnel/contacts/<contact_id>/retirer")
def remove_contact(contact_id: str):
    personal.remove_contact(g.repository, contact_id)
    flash("Le contact d'urgence est retiré.")
    return redirect(url_for("space.personal_page"))
