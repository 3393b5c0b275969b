"""`gateway messages list|show|reprocess`: the operators' view of the HL7v2 messages received, and
of the documents (listed and reprocessed; their content is not shown)."""
from __future__ import annotations

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from gateway.access import AccessContext
from gateway.config import Settings
from gateway.shell_output import natural_width, print_table, shell_console
from gateway.hl7v2.fields import described_segments
from gateway.services import feeds, messages, received_documents
from gateway.storage.database import make_engine
from gateway.storage.repository import Repository

FOLDED = 16
STATUS_STYLES = {"processed": "green", "duplicate": "cyan", "skipped": "cyan", "refused": "yellow",
                 "failed": "red", "received": "magenta"}


def run(settings: Settings, args) -> int:
    repo = Repository(make_engine(settings.database_url), AccessContext.system("operator"), settings.public_base_url)
    console = shell_console()
    if args.messages_command == "list":
        return _list(console, repo, args)
    if args.messages_command == "show":
        return _show(console, repo, args)
    return _reprocess(console, repo, settings, args)


def _list(console: Console, repo: Repository, args) -> int:
    """Every value whole and as it came: a sender's `[/x]` is text, not markup. In a terminal, the
    one-word columns are never cut: the sender, control id and reason fold (down to FOLDED characters,
    the terminal wrapping what is wider)."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    folding = []
    for name, one_word in (("id", True), ("received (UTC)", True), ("channel", True), ("sender", False),
                           ("type", True), ("control id", False), ("status", True), ("ACK", True), ("reason", False)):
        table.add_column(name, no_wrap=one_word, overflow="fold")
        if not one_word:
            folding.append(table.columns[-1])
    channels = received_documents.DOCUMENT_CHANNELS if args.documents else messages.HL7V2_CHANNELS
    for m in messages.list_messages(repo, args.status, args.limit, channels=channels):
        table.add_row(str(m.id), m.received_at[:19].replace("T", " "), m.channel, Text(m.sender or ""),
                      Text(m.message_type or ""), Text(m.control_id or ""),
                      Text(m.status, style=STATUS_STYLES.get(m.status, "white")), m.ack_code or "",
                      Text(m.reason or ""))
    if console.is_terminal:
        for column in folding:
            column.max_width = FOLDED
        console.width = max(console.width, natural_width(console, table))
        for column in folding:
            column.max_width = None
    print_table(console, table)
    return 0


def _show(console: Console, repo: Repository, args) -> int:
    document = received_documents.describe(repo, args.id)
    if document is not None:
        return _show_document(console, document)
    found = messages.get_message(repo, args.id, content=True)
    if found is None:
        console.print(f"no HL7v2 message or document {args.id}")
        return 1
    console.print(f"[bold]message {found['id']}[/bold] " + escape(
        f"{found['received_at']} via {found['channel']} from {found['sender']}: {found['message_type']} "
        f"{found['control_id']}, {found['size']} bytes, charset {found['charset'] or '?'}"))
    console.print(f"status [{STATUS_STYLES.get(found['status'], 'white')}]{found['status']}[/]", end="")
    console.print(f": {found['reason']}" if found["reason"] else "", markup=False)
    described = None
    if args.fields:
        try:
            described = described_segments(found["message"])
        except feeds.MessageRejected as unread:
            # A message refused because it could not be read (no MSH…) was a traceback here.
            console.print(f"its fields cannot be named: {unread}", markup=False)
    if described is not None:
        for name, fields in described:
            console.print(name, style="bold", markup=False)
            for label, value in fields:
                console.print(f"  {label}: {value}", markup=False)
    else:
        for segment in found["message"].split("\r"):
            console.print(segment if len(segment) < 300 else segment[:300] + f"… ({len(segment)} characters)",
                          markup=False)
    if found["ack"]:
        console.print("[bold]ACK sent[/bold]")
        console.print(found["ack"].replace("\r", "\n").rstrip(), markup=False)
    for resource in found["resources"]:
        console.print(f"produced {resource}")
    return 0


def _show_document(console: Console, document: dict) -> int:
    console.print(f"[bold]document {document['id']}[/bold] " + escape(
        f"{document['received_at']} via {document['channel']} from {document['sender']}, sent by "
        f"{document['requester'] or 'an unrecorded requester'}: {document['content_type']}, {document['size']} bytes, "
        f"sha256 {document['sha256']}"))
    console.print(f"status [{STATUS_STYLES.get(document['status'], 'white')}]{document['status']}[/]", end="")
    console.print(f": {document['reason']}" if document["reason"] else "", markup=False)
    for resource in document["resources"]:
        console.print(f"produced {resource}")
    return 0


def _reprocess(console: Console, repo: Repository, settings: Settings, args) -> int:
    if args.failed:
        done = messages.reprocess_failed(repo, settings.max_document_bytes)
        for raw_id, code in done:
            console.print(f"message {raw_id}: {code}")
        documents, left = received_documents.reprocess_failed(repo, settings)
        for reprocessed in documents:
            _print_document(console, reprocessed)
        for raw_id, why in left:
            console.print(f"document {raw_id} not reprocessed: {why}", markup=False)
        console.print(f"{len(done)} message(s) and {len(documents)} document(s) reprocessed"
                      + (f", {len(left)} document(s) left as they were" if left else ""))
        return 0 if all(code == "AA" for _, code in done) and all(map(_succeeded, documents)) else 1
    try:
        if received_documents.describe(repo, args.id) is not None:
            reprocessed = received_documents.reprocess(repo, args.id, settings)
            _print_document(console, reprocessed)
            return 0 if _succeeded(reprocessed) else 1
        reply = messages.reprocess(repo, args.id, settings.max_document_bytes)
    except (LookupError, ValueError, feeds.MessageRejected) as exc:
        console.print(str(exc), markup=False)
        return 1
    console.print(f"message {args.id}: {reply.code}")
    if reply.ack:
        console.print(reply.ack.decode("utf-8", "replace").replace("\r", "\n").rstrip(), markup=False)
    return 0 if reply.code == "AA" else 1


def _succeeded(reprocessed: received_documents.Reprocessed) -> bool:
    return reprocessed.status in ("processed", "duplicate")


def _print_document(console: Console, reprocessed: received_documents.Reprocessed) -> None:
    console.print(f"document {reprocessed.raw_id}: {reprocessed.status}"
                  + (f": {reprocessed.reason}" if reprocessed.reason else ""), markup=False)
    for resource in reprocessed.resources:
        console.print(f"produced {resource}")
