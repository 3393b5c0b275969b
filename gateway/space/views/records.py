"""Whose record: a legal representative of several children chooses which record to open, and
can change at any time; every page then names it."""
from __future__ import annotations

from flask import current_app, flash, g, redirect, render_template, request, session, url_for

from gateway.space import accounts, closed_to_holder_text, record_holder, record_repository, space


@space.get("/dossiers")
def choose_record():
    """Each child's record, and those closed to their representative (the child came of age or
    died), which can no longer be opened."""
    records = []
    for record in g.account.records:
        repository = record_repository(record)
        closed = repository.closed_to_holder()
        records.append((record, None if closed else record_holder(repository),
                        closed_to_holder_text(closed) if closed else None))
    open_ones = [ins for ins, _, closed in records if not closed]
    return render_template("records.html", records=records,
                           current=g.record if g.record in open_ones else next(iter(open_ones), None))


@space.post("/dossiers")
def open_record():
    record = request.form.get("dossier", "")
    if record not in g.account.records:
        flash("Choisissez l'un des dossiers de la liste.", "error")
        return redirect(url_for("space.choose_record"))
    repository = record_repository(record)
    if closed := repository.closed_to_holder():
        flash(closed_to_holder_text(closed), "error")
        return redirect(url_for("space.choose_record"))
    name = record_holder(repository)
    accounts.open_record(current_app.config["ENGINE"], session["sid"], record, name)
    flash(f"Vous consultez le dossier de {name}.")
    return redirect(url_for("space.documents_page"))
