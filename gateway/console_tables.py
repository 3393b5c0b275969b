"""Tables the shell commands print. Into a pipe or a file, rich cut them to 80 characters, wrapping
a file's name over three lines and ending a timestamp in an ellipsis: there each row is one line,
whole, for grep."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

LINE_MAX = 100_000


def natural_width(console: Console, table: Table) -> int:
    return console.measure(table, options=console.options.update_width(LINE_MAX)).maximum


def print_table(console: Console, table: Table) -> None:
    if not console.is_terminal:
        console.width = natural_width(console, table)
    console.print(table)
