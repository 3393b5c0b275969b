"""What the shell commands print. Into a pipe or a file, rich cut it to 80 characters, wrapping a
file's name over three lines and ending a timestamp in an ellipsis: there each line, and each row
of a table, is one line, whole, for grep."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

LINE_MAX = 100_000


def shell_console() -> Console:
    """A console that prints text as it is (no highlighting), a line whole into a pipe."""
    console = Console(highlight=False)
    console.soft_wrap = not console.is_terminal
    return console


def natural_width(console: Console, table: Table) -> int:
    return console.measure(table, options=console.options.update_width(LINE_MAX)).maximum


def print_table(console: Console, table: Table) -> None:
    if not console.is_terminal:
        console.width = natural_width(console, table)
    console.print(table)
