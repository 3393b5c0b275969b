"""What every HTTP input is checked for before any query sees it."""
from __future__ import annotations

from itertools import chain
from typing import Iterable


def holds_nul(*texts: str, fields: Iterable[tuple[str, str]] = ()) -> bool:
    """Whether a text (a path), or a name or value of fields (a query's, a form's), holds U+0000.
    No input of the gateway's means it, and PostgreSQL can neither compare nor store it in text (a
    query with one failed there, where SQLite went on)."""
    return any("\x00" in value for value in chain(texts, chain.from_iterable(fields)))
