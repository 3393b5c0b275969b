"""My record: a signed copy to download and to check, the notifications of new documents, closing
and reopening it, asking for its destruction."""
from __future__ import annotations

import contextlib
import tempfile
from datetime import datetime, timezone

from flask import Response, current_app, flash, g, redirect, render_template, request, url_for
from werkzeug.wsgi import wrap_file

from gateway.services import export, retention
from gateway.space import accounts, local_date, space

# What a patient is told of a copy they upload to check it.
VERIFIED = "intacte : elle est bien celle que le service a délivrée, et aucun fichier n'a été modifié."


@space.get("/dossier")
def record_page(verification: dict | None = None):
    closure, destruction_due = retention.record_state(g.repository)
    return render_template("record.html", closed_on=closure.json()["dateTime"] if closure else None,
                           destruction_due=destruction_due, retention_years=retention.RETENTION_YEARS,
                           verification=verification, notify=g.account.notify_new_documents)


@space.post("/dossier/verifier")
def verify_copy():
    """The check of `gateway verify-export`, for a patient: upload the ZIP, read the answer."""
    upload = request.files.get("copie")
    if upload is None or not upload.filename:
        flash("Choisissez le fichier ZIP de la copie à vérifier.", "error")
        return redirect(url_for("space.record_page"))
    report = export.verify_export(upload.stream, current_app.config["SETTINGS"].trust_anchors)
    if report.signature:
        result = {"intact": False, "summary": "Ce fichier n'est pas une copie délivrée par ce service, ou sa "
                                              "signature a été modifiée : son contenu ne peut pas être garanti.",
                  "files": []}
    elif not report.valid:
        result = {"intact": False, "summary": "Cette copie a été modifiée après sa délivrance. Fichiers en cause :",
                  "files": [(name, "modifié") for name in report.altered] + [(name, "manquant") for name in report.missing]
                  + [(name, "ajouté") for name in report.unexpected]}
    else:
        result = {"intact": True, "summary": f"Cette copie est {VERIFIED} ({report.files} fichiers vérifiés)",
                  "files": []}
    return record_page(verification=result)


@space.post("/dossier/notifications")
def notifications_choice():
    wanted = request.form.get("notifications") == "oui"
    accounts.set_notifications(current_app.config["ENGINE"], g.account.login, wanted)
    flash("Vous serez prévenu·e par message de chaque nouveau document." if wanted else
          "Vous ne recevrez plus de message à chaque nouveau document.")
    return redirect(url_for("space.record_page"))


@space.get("/dossier/copie.zip")
def record_copy():
    settings = current_app.config["SETTINGS"]
    # A file without a name, gone once closed (when the answer is sent, or on an error): the copy
    # is written there a document at a time, then sent from it.
    copy = tempfile.TemporaryFile()
    try:
        export.write_export(g.repository, settings.fhir_base, settings.export_key.read_bytes(),
                            settings.export_cert.read_bytes(), copy)
        size = copy.tell()
        copy.seek(0)   # which writes out what the file's buffer still holds
    except BaseException:
        # With no room left on its disk (the space answers 503), the file's buffer cannot be
        # written out when it is closed: it is closed all the same.
        with contextlib.suppress(OSError):
            copy.close()
        raise
    # Sent as it is read, the file closed once sent; with its length, which a browser shows the
    # download's progress by, and the space's `no-store` (send_file's `no-cache` would have
    # replaced it).
    response = Response(wrap_file(request.environ, copy), mimetype="application/zip", direct_passthrough=True)
    response.content_length = size
    response.headers["Content-Disposition"] = \
        f'attachment; filename="copie-dossier-{datetime.now(timezone.utc):%Y%m%d}.zip"'
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
        flash("Le dossier est fermé. Il est conservé et vous pouvez le rouvrir à tout moment.")
    return redirect(url_for("space.record_page"))


@space.post("/dossier/rouvrir")
def reopen_record():
    retention.reopen_record(g.repository)
    flash("Le dossier est rouvert.")
    return redirect(url_for("space.record_page"))


@space.post("/dossier/destruction")
def request_destruction():
    if _confirmed():
        due = retention.request_destruction(g.repository)
        flash(f"La demande de destruction est enregistrée : le dossier, fermé, sera détruit le {local_date(due)}.")
    return redirect(url_for("space.record_page"))
