"""Where the patient space's messages go (one-time codes, "a document was added"): a pluggable
sender chosen by GATEWAY_MESSAGE_SENDER.

- `outbox` (development): appended to GATEWAY_VAR_DIR/outbox.jsonl, which `gateway outbox` prints.
- `smtp`: an e-mail through GATEWAY_SMTP_HOST (port GATEWAY_SMTP_PORT, STARTTLS unless
  GATEWAY_SMTP_STARTTLS=0, the server's certificate checked against the system's authorities or
  GATEWAY_SMTP_CA, optional GATEWAY_SMTP_USER / GATEWAY_SMTP_PASSWORD, From GATEWAY_SMTP_FROM).
An SMS gateway is one more function with the same signature.
"""
from __future__ import annotations

import json
import os
import smtplib
import ssl
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Callable

from gateway.config import Settings


@dataclass(frozen=True)
class Mail:
    to: str
    subject: str
    text: str
    code: str | None = None     # a one-time code, kept apart so that `gateway outbox` can print it


Sender = Callable[[Settings, Mail], None]


class RecipientRefused(Exception):
    """The mail server refused the recipient's address for good (a 5xx reply to RCPT TO): sending
    again will not help. Anything else a sender raises may pass, and is tried again."""

    def __init__(self, code: int):
        super().__init__(f"the mail server refused the recipient ({code})")
        self.code = code


def code_mail(contact: str, code: str) -> Mail:
    return Mail(contact, "Votre code de connexion à votre dossier médical partagé",
                f"Votre code de connexion est {code}. Il est valable 10 minutes.\n"
                "Si vous n'êtes pas à l'origine de cette demande, ignorez ce message.", code)


def outbox_path(settings: Settings) -> Path:
    return settings.var_dir / "outbox.jsonl"


def send_to_outbox(settings: Settings, mail: Mail) -> None:
    path = outbox_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"sent_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **asdict(mail)},
                      ensure_ascii=False)
    # One write of one line in append mode: lines from several workers never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def send_by_smtp(settings: Settings, mail: Mail) -> None:
    sender = os.environ.get("GATEWAY_SMTP_FROM", "dmp-gateway@localhost")
    message = EmailMessage()
    message["From"] = sender
    message["To"] = mail.to
    message["Subject"] = mail.subject
    # RFC 5322 asks for both; smtplib adds neither, a submission server need not, and spam filters
    # score their absence: a one-time code filed as spam locks its patient out.
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    message.set_content(mail.text)
    with smtplib.SMTP(os.environ["GATEWAY_SMTP_HOST"], int(os.environ.get("GATEWAY_SMTP_PORT", "587")),
                      timeout=30) as smtp:
        if os.environ.get("GATEWAY_SMTP_STARTTLS", "1") != "0":
            # The server's certificate and name checked: smtplib's own context takes any
            # certificate, and a server in the middle read the one-time codes.
            smtp.starttls(context=ssl.create_default_context(cafile=os.environ.get("GATEWAY_SMTP_CA") or None))
        if os.environ.get("GATEWAY_SMTP_USER"):
            smtp.login(os.environ["GATEWAY_SMTP_USER"], os.environ.get("GATEWAY_SMTP_PASSWORD", ""))
        try:
            smtp.send_message(message)
        except smtplib.SMTPRecipientsRefused as refused:
            codes = [code for code, _ in refused.recipients.values()]
            if codes and min(codes) >= 500:
                raise RecipientRefused(max(codes)) from None   # its text held the address
            raise


SENDERS: dict[str, Sender] = {"outbox": send_to_outbox, "smtp": send_by_smtp}


def message_sender(name: str) -> Sender:
    if name not in SENDERS:
        raise ValueError(f"GATEWAY_MESSAGE_SENDER is one of {', '.join(SENDERS)}")
    return SENDERS[name]


def read_outbox(settings: Settings) -> list[dict]:
    path = outbox_path(settings)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
