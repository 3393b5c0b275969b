"""`gateway send`: an MLLP client for integrators. Sends each message of the files given (one or
several per file, framed or not, or an HL7 batch file) on one connection and prints the ACK it gets
back; with `--whole-batch`, a batch file goes whole, in one frame, as an interface engine that sends
batches sends it, and each ACK of the batch answered is printed."""
from __future__ import annotations

import ssl
from pathlib import Path

from rich.text import Text

from gateway.interruption import Interruption
from gateway.shell_output import shell_console

from . import batch as batches, mllp
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


def _whole_batch(data: bytes) -> bytes | None:
    """An HL7 batch file's batch, to send in one frame; None for a file that is not one. A framed
    file goes frame by frame, as it is: a frame holding a batch goes whole already."""
    text = mllp.unframed_text(data)
    return text if text is not None and batches.is_batch(text) else None


def _count(sent: bytes) -> int:
    """How many messages a frame holds: a batch's, else one."""
    return len(batches.read(sent).messages) if batches.is_batch(sent) else 1


def _acks(answer: bytes | None, count: int) -> list[bytes | None]:
    """The ACKs an answer holds: a batch of ACKs, each; else the answer itself; and when none came
    in time, a None for each of the `count` messages sent."""
    if answer is None:
        return [None] * count
    return batches.read(answer).messages if batches.is_batch(answer) else [answer]


def _tally(tally: dict[str, int]) -> str:
    return "  ".join(f"{code}: {count}" for code, count in sorted(tally.items()))


def send_paths(paths: list[Path], host: str, port: int, *, timeout: float = 30.0, use_tls: bool = False,
               tls_ca: str | None = None, tls_cert: str | None = None, tls_key: str | None = None,
               whole_batches: bool = False) -> int:
    """Exit status 0 when every message got AA (or CA), 1 otherwise, 2 when a file could not be read or
    the gateway reached (said in a line: each was a traceback). TLS when asked, or given a CA to trust
    (the system's without one) or, for a listener that asks for it (mutual TLS), the sender's
    certificate: a listener whose certificate a public authority signed was out of reach.
    `whole_batches`: an HL7 batch file is sent whole, in one frame; the gateway checks it (a batch
    cut short is refused whole) and answers with a batch of ACKs."""
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
    # What is sent, a frame each (a message, or a batch), with the file it comes from and how many
    # messages it holds.
    frames: list[tuple[Path, bytes, int]] = []
    problems = []
    try:
        for path in _files(paths):
            data = path.read_bytes()
            whole = _whole_batch(data) if whole_batches else None
            if whole is not None:
                frames.append((path, whole, _count(whole)))
                continue
            messages, told = mllp.split_file(data)
            frames += [(path, message, _count(message)) for message in messages]
            problems += [f"{path}: {problem}" for problem in told]
    except OSError as failure:
        console.print(f"cannot read {failure.filename}: {failure.strerror}", markup=False)
        return 2
    total = sum(count for _, _, count in frames)
    if not frames:
        console.print("no message found")
        return 1
    tally: dict[str, int] = {}
    answers = mllp.send_messages(host, port, (sent for _, sent, _ in frames), timeout=timeout, tls=tls)
    waited = None   # the frame whose answer is awaited: its file and how many messages it holds
    with Interruption().handled() as interruption:
        try:
            for path, _, count in frames:
                # A Ctrl-C stops the run before the next frame; one while an answer is awaited, that wait.
                with interruption.while_reading():
                    waited = path, count
                    answer = next(answers)
                waited = None
                for ack in _acks(answer, count):
                    code = _ack_code(ack) if ack is not None else "none"
                    tally[code] = tally.get(code, 0) + 1
                    console.print(Text(str(path), style="bold"), Text(code, style=ACK_STYLES.get(code, "magenta")))
                    if ack is not None:
                        console.print(ack.decode("utf-8", "replace").replace("\r", "\n").rstrip(), markup=False)
        except KeyboardInterrupt:
            # It was a line and no word of what had been sent: which messages went, which did not.
            answered = sum(tally.values())
            console.print(_tally(tally))
            unsent = total - answered - (waited[1] if waited else 0)
            unread = ""
            if waited:
                unread = (f", {waited[0]}: its ACK was not read (sent again, it is recognised)" if waited[1] == 1 else
                          f", {waited[0]}: its answer, the ACKs of its {waited[1]} messages, was not read (sent again, "
                          "each is recognised)")
            console.print(f"interrupted (Ctrl-C): {answered} of {total} messages answered{unread}, {unsent} not sent",
                          markup=False)
            return 130
        except OSError as failure:   # refused, reset, closed, or a TLS handshake that failed
            sent = sum(tally.values())
            console.print(f"MLLP {host}:{port}: {failure.strerror or failure} ({sent} of {total} messages "
                          "answered)", markup=False)
            return 2
        finally:
            answers.close()
    console.print(_tally(tally))
    for problem in problems:
        console.print(problem, style="red", markup=False)
    return 0 if set(tally) <= {"AA", "CA"} and not problems else 1
