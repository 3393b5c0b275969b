"""`gateway send`: an MLLP client for integrators. Sends each message of the files given (one or
several per file, framed or not, or an HL7 batch file) on one connection and prints the ACK it gets
back."""
from __future__ import annotations

import ssl
from pathlib import Path

from rich.text import Text

from gateway.interruption import Interruption
from gateway.shell_output import shell_console

from . import mllp
from .er7 import Message, MessageRejected

ACK_STYLES = {"AA": "green", "CA": "green", "AE": "yellow", "CE": "yellow", "AR": "red", "CR": "red"}


def _files(paths: list[Path]) -> list[Path]:
    out = []
    for path in paths:
        out += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return out


def _ack_code(ack: bytes) -> str:
    try:
        msa = Message.from_bytes(ack).first("MSA")
    except MessageRejected:
        return "?"
    return msa.get(1) if msa is not None else "?"


def _tally(tally: dict[str, int]) -> str:
    return "  ".join(f"{code}: {count}" for code, count in sorted(tally.items()))


def send_paths(paths: list[Path], host: str, port: int, *, timeout: float = 30.0, use_tls: bool = False,
               tls_ca: str | None = None, tls_cert: str | None = None, tls_key: str | None = None) -> int:
    """Exit status 0 when every message got AA (or CA), 1 otherwise, 2 when a file could not be read or
    the gateway reached (said in a line: each was a traceback). TLS when asked, or given a CA to trust
    (the system's without one) or, for a listener that asks for it (mutual TLS), the sender's
    certificate: a listener whose certificate a public authority signed was out of reach."""
    console = shell_console()
    tls = None
    if tls_key and not tls_cert:
        console.print("TLS: --tls-key is the key of --tls-cert, which is missing", markup=False)
        return 2
    if use_tls or tls_ca or tls_cert:
        try:
            tls = ssl.create_default_context(cafile=tls_ca)
            if tls_cert:
                tls.load_cert_chain(tls_cert, tls_key)
        except (OSError, ssl.SSLError) as failure:
            console.print(f"TLS: {failure.strerror or failure}", markup=False)
            return 2
    batch, problems = [], []
    try:
        for path in _files(paths):
            messages, told = mllp.split_file(path.read_bytes())
            batch += [(path, message) for message in messages]
            problems += [f"{path}: {problem}" for problem in told]
    except OSError as failure:
        console.print(f"cannot read {failure.filename}: {failure.strerror}", markup=False)
        return 2
    if not batch:
        console.print("no message found")
        return 1
    tally: dict[str, int] = {}
    acks = mllp.send_messages(host, port, (message for _, message in batch), timeout=timeout, tls=tls)
    waited = None   # the file of the message whose ACK is awaited
    with Interruption().handled() as interruption:
        try:
            for path, _ in batch:
                # A Ctrl-C stops the run before the next message; one while an ACK is awaited, that wait.
                with interruption.while_reading():
                    waited = path
                    ack = next(acks)
                waited = None
                code = _ack_code(ack) if ack is not None else "none"
                tally[code] = tally.get(code, 0) + 1
                console.print(Text(str(path), style="bold"), Text(code, style=ACK_STYLES.get(code, "magenta")))
                if ack is not None:
                    console.print(ack.decode("utf-8", "replace").replace("\r", "\n").rstrip(), markup=False)
        except KeyboardInterrupt:
            # It was a line and no word of what had been sent: which messages went, which did not.
            answered = sum(tally.values())
            console.print(_tally(tally))
            unsent = len(batch) - answered - (waited is not None)
            console.print(f"interrupted (Ctrl-C): {answered} of {len(batch)} messages answered"
                          + (f", {waited}: its ACK was not read (sent again, it is recognised)" if waited else "")
                          + f", {unsent} not sent", markup=False)
            return 130
        except OSError as failure:   # refused, reset, closed, or a TLS handshake that failed
            sent = sum(tally.values())
            console.print(f"MLLP {host}:{port}: {failure.strerror or failure} ({sent} of {len(batch)} messages "
                          "answered)", markup=False)
            return 2
        finally:
            acks.close()
    console.print(_tally(tally))
    for problem in problems:
        console.print(problem, style="red", markup=False)
    return 0 if set(tally) <= {"AA", "CA"} and not problems else 1
