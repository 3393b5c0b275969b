"""The account's password, changed by its holder: the current one, then the new one twice."""
from __future__ import annotations

import logging

from flask import current_app, flash, g, redirect, render_template, request, session, url_for

from gateway.space import accounts, space

log = logging.getLogger(__name__)


@space.route("/compte/mot-de-passe", methods=["GET", "POST"])
def password_page():
    if request.method == "GET":
        return render_template("password.html", minimum=accounts.MIN_PASSWORD)
    new = request.form.get("nouveau", "")
    if new != request.form.get("confirmation", ""):
        return _refused("Les deux saisies du nouveau mot de passe diffèrent.")
    try:
        accounts.change_password(current_app.config["ENGINE"], g.account.login, request.form.get("actuel", ""), new,
                                 session.get("sid", ""), request.remote_addr)
    except (accounts.SignInRefused, ValueError) as refusal:
        return _refused(str(refusal))
    log.info("patient space password changed", extra={"role": g.account.role})
    flash("Votre mot de passe est changé. Vos autres sessions ouvertes sont fermées.")
    return redirect(url_for("space.home"))


def _refused(message: str):
    return render_template("password.html", minimum=accounts.MIN_PASSWORD, error=message), 400
