"""The listing commands' tables: rich's table on a terminal, plain rows into a pipe.

On a terminal a table fits the screen (long cells fold inside their column). Into a pipe or a
file (`bty disks | cat`, `| grep`, `> list.txt`) there is no screen to fit: each row is one line,
its cells padded to the column's widest and separated by two spaces, nothing folded or cut, no
colours, so that grep, awk and a wide pager see every cell whole.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

Cell = str | Text


def _plain(cell: Cell) -> str:
    return cell.plain if isinstance(cell, Text) else cell


def plain_lines(columns: Sequence[str], rows: Sequence[Sequence[Cell]], right: Sequence[str] = ()) -> list[str]:
    """The header and one line per row; columns named in `right` are right-aligned."""
    table = [list(columns), *([_plain(cell).replace("\n", " ") for cell in row] for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    lines = []
    for line in table:
        cells = [cell.rjust(width) if name in right else cell.ljust(width)
                 for cell, width, name in zip(line, widths, columns, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return lines


def print_table(columns: Sequence[str], rows: Sequence[Sequence[Cell]], *, right: Sequence[str] = (),
                title: str | None = None, boxed: bool = True, out: TextIO | None = None) -> None:
    """`rows` under `columns`: a rich table when `out` (stdout) is a terminal, plain lines otherwise."""
    stream = out or sys.stdout
    if not stream.isatty():
        if title:
            stream.write(title + "\n")
        stream.write("".join(line + "\n" for line in plain_lines(columns, rows, right)))
        return
    if boxed:
        table = Table(title=title, title_justify="left")
    else:
        table = Table(title=title, title_justify="left", header_style="bold", box=None, pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold", justify="right" if column in right else "left")
    for row in rows:
        table.add_row(*row)
    Console(file=stream, highlight=False).print(table)
