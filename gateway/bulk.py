"""`gateway ingest FILE|DIR...`: many documents, a progress bar, and a summary of what happened."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from gateway.access import AccessContext
from gateway.refusal import Refused
from gateway.config import Settings
from gateway.interruption import Interruption
from gateway.shell_output import print_table
from gateway.services import ingest
from gateway.services.documents import ingesting_cda
from gateway.services.ingest import HEAD_KEPT
from gateway.storage.database import failure_reason, make_engine, refresh_statistics, unavailable
from gateway.storage.migrate import upgrade
from gateway.storage.repository import Repository


@dataclass
class BulkReport:
    ingested: int = 0
    duplicates: int = 0
    refused: list[tuple[str, str, str]] = field(default_factory=list)  # file, location, reason
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: int = 0   # files in the folders given that are not documents by their names
    interrupted: bool = False


def document_files(paths: list[Path]) -> tuple[list[Path], int]:
    """The documents to ingest: each file named, and a folder's .xml and .cda files; and how many
    other files the folders hold (an operator pointing it at HL7v2 messages read "ingested: 0")."""
    files: list[Path] = []
    skipped = 0
    for path in paths:
        if path.is_dir():
            found = [p for p in path.rglob("*") if p.is_file()]
            documents = sorted(p for p in found if p.suffix.lower() in (".xml", ".cda"))
            files += documents
            skipped += len(found) - len(documents)
        else:
            files.append(path)
    return files, skipped


def ingest_paths(settings: Settings, paths: list[Path], console: Console | None = None) -> BulkReport:
    console = console or Console(stderr=True)
    engine = make_engine(settings.database_url)
    upgrade(engine)
    repo = Repository(engine, AccessContext.system("gateway ingest"), settings.public_base_url)
    report = BulkReport()
    files, report.skipped = document_files(paths)
    progress = Progress(TextColumn("[bold]ingest"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=console, transient=True)
    with progress, Interruption().handled() as interruption:
        task = progress.add_task("documents", total=len(files))
        try:
            for window in ingest.windows(files, _size):
                if not _ingest_window(settings, repo, window, report, interruption):
                    break
                progress.advance(task, len(window))
        except KeyboardInterrupt:
            # Ctrl-C was a traceback, and no word of what was done. What was committed stays; the
            # documents of the window being read were not begun.
            report.failed.append((str(window[0]), "interrupted (Ctrl-C): run the same command again (the documents "
                                                  "already ingested are recognised)"))
            report.interrupted = True
    if not report.interrupted:
        refresh_statistics(engine)
    _summary(console, report)
    return report


def _size(file: Path) -> int:
    try:
        return file.stat().st_size
    except OSError:
        return 0   # told when it is read


def _ingest_window(settings: Settings, repo: Repository, files: list[Path], report: BulkReport,
                   interruption: Interruption) -> bool:
    """A window of documents into the report: read, then run side by side (ingest.run_together),
    sharing the group commit's transactions. False when the run must stop: at the document the
    database could not take, none after it being run. Raises KeyboardInterrupt when Ctrl-C was
    pressed since the window before, or while a file is read."""
    read: list[tuple[Path, ingest.Steps]] = []
    for file in files:
        try:
            with interruption.while_reading():
                size = file.stat().st_size
                oversized = size > settings.max_document_bytes
                with file.open("rb") as opened:
                    data = opened.read(HEAD_KEPT if oversized else -1)
        except OSError as exc:
            report.failed.append((str(file), str(exc)))
            continue
        read.append((file, ingesting_cda(repo, data, max_bytes=settings.max_document_bytes, channel="bulk",
                                         sender=str(file), size=size if oversized else None)))
    for (file, _), finished in zip(read, ingest.run_together(repo, [steps for _, steps in read])):
        if finished.error is None:
            if finished.value.created:
                report.ingested += 1
            else:
                report.duplicates += 1
        elif isinstance(finished.error, Refused):
            report.refused.append((str(file), finished.error.location or "/", finished.error.reason))
        elif unavailable(finished.error):
            # Every later document would fail the same way: stop, and say how to go on.
            report.failed.append((str(file), f"the database is unavailable ({failure_reason(finished.error)}): run "
                                              "the same command again (the documents already ingested are recognised)"))
            return False
        else:
            raise finished.error
    return True


def _summary(console: Console, report: BulkReport) -> None:
    console.print(f"ingested: {report.ingested}   duplicates: {report.duplicates}   "
                  f"refused: {len(report.refused)}   failed: {len(report.failed)}")
    if report.skipped:
        console.print(f"skipped: {report.skipped} files in the folders given are not .xml or .cda (HL7v2 messages "
                      "go to the MLLP listener: gateway send)")
    if report.refused or report.failed:
        table = Table("file", "reason", title="not ingested")
        for file, location, reason in report.refused:
            table.add_row(Text(file), Text(f"{location}: {reason}"))
        for file, reason in report.failed:
            table.add_row(Text(file), Text(reason))
        print_table(console, table)
        for where, count in Counter(location for _, location, _ in report.refused).most_common():
            console.print(f"  {count} refused at {where}", markup=False)
