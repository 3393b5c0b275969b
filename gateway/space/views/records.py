"""Whose record: a legal representative of several children chooses which record to open, and
can change at any time; every page then names it."""
from __future__ import annotations

from flask import current_app, flash, g, redirect, render_template, request, session, url_for

from gateway.space import accounts, record_holder, record_repository, space


@space.get("/dossiers")
def choose_record():
    records = [(record, record_holder(record_repository(record))) for record in g.account.records]
    return render_template("records.html", records=records, current=g.record)


@space.post("/dossiers")
def open_record():
    record = request.form.get("dossier", "")
    if record not in g.account.records:
        flash("Choisissez l'un des dossiers de la liste.", "error")
        return redirect(url_for("space.choose_record"))
    name = record_holder(record_repository(record))
    accounts.open_record(current_app.config["ENGINE"], session["sid"], record, name)
    flash(f"Vous consultez le dossier de {name}.")
    return redirect(url_for("space.documents_page"))
