"""My record: a signed copy to download, closing and reopening it, asking for its destruction."""
from __future__ import annotations

from datetime import datetime, timezone

from flask import Response, current_app, flash, g, redirect, render_template, request, url_for

from gateway.services import export, retention
from gateway.space import local_date, space


@space.get("/dossier")
def record_page():
    closure, destruction_due = retention.record_state(g.repository)
    return render_template("record.html", closed_on=closure.json()["dateTime"] if closure else None,
                           destruction_due=destruction_due, retention_years=retention.RETENTION_YEARS)


@space.get("/dossier/copie.zip")
def record_copy():
    settings = current_app.config["SETTINGS"]
    data = export.build_export(g.repository, settings.fhir_base, settings.export_key.read_bytes(),
                               settings.export_cert.read_bytes())
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d")
    response = Response(data, mimetype="application/zip")
    response.headers["Content-Disposition"] = f'attachment; filename="copie-dossier-{stamp}.zip"'
    return response


def _confirmed() -> bool:
    if request.form.get("confirmation") == "oui":
        return True
    flash("Cochez la case de confirmation pour continuer.", "error")
    return False


@space.post("/dossier/fermer")
def close_record():
    if _confirmed():
        retention.close_record(g.repository)
        flash("Votre dossier est fermé. Il est conservé et vous pouvez le rouvrir à tout moment.")
    return redirect(url_for("space.record_page"))


@space.post("/dossier/rouvrir")
def reopen_record():
    retention.reopen_record(g.repository)
    flash("Votre dossier est rouvert.")
    return redirect(url_for("space.record_page"))


@space.post("/dossier/destruction")
def request_destruction():
    if _confirmed():
        due = retention.request_destruction(g.repository)
        flash(f"Votre demande de destruction est enregistrée : le dossier, fermé, sera détruit le {local_date(due)}.")
    return redirect(url_for("space.record_page"))
