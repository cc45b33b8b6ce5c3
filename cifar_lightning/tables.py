"""Tables as Markdown and CSV: the one renderer for the tables new outputs write (the runs leaderboard,
the HPO report), so their files read alike and a cell holding `|` cannot break a Markdown row."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def markdown_cell(value: Any) -> str:
    """A cell's text: None as empty, `|` escaped and line breaks as spaces (either would end the row)."""
    text = "" if value is None else str(value)
    return " ".join(text.replace("|", r"\|").splitlines())


def is_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def markdown_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table, ending in a newline; a column whose filled cells are all numbers
    is right-aligned, so its digits line up."""
    cells = [[markdown_cell(value) for value in row] for row in rows]
    for row in cells:
        if len(row) != len(header):
            raise ValueError(f"a row has {len(row)} cells, the header {len(header)}: {row}")
    numeric = [
        any(row[i] for row in cells) and all(is_numeric(row[i]) for row in cells if row[i]) for i in range(len(header))
    ]
    lines = [
        "| " + " | ".join(markdown_cell(name) for name in header) + " |",
        "|" + "|".join("---:" if right else "---" for right in numeric) + "|",
        *("| " + " | ".join(row) + " |" for row in cells),
    ]
    return "\n".join(lines) + "\n"


def write_csv(path: str | Path, header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> Path:
    """Write the table as CSV (None as an empty field), creating the folder; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(["" if value is None else value for value in row] for row in rows)
    return path
