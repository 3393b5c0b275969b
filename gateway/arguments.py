"""The types of the shell's arguments (argparse's `type`): a number that names nothing, or a
duration of 0, is refused with its range before any command runs."""
from __future__ import annotations

import argparse
from datetime import datetime, timezone

from gateway.config import duration


def counted(largest: int):
    """An argument that counts or numbers something: from 1 to `largest` (argparse's type)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not 1 <= value <= largest:
            raise argparse.ArgumentTypeError(f"{text} is not from 1 to {largest}")
        return value
    return parse


def seconds(text: str) -> float:
    """A duration in seconds, above 0 (argparse's type): 0 or less was "Operation now in progress" or
    a traceback."""
    read = duration(text)
    if read is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return read


def instant(text: str) -> datetime:
    """A moment in ISO 8601, in UTC when it names no offset (argparse's type): `x` was a traceback,
    and `…T00:00:00+02:00` was read as midnight UTC, its offset dropped."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date in ISO 8601 (2026-12-31, "
                                         "2026-12-31T08:00:00+01:00)") from None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


PORT = counted(65535)
# storage.schema.MAX_ID, written here: the shell parses its arguments without loading SQLAlchemy.
RAW_ID = counted(2**63 - 1)
