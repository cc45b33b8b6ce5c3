"""One self-contained HTML page for an evaluation (images as data: URIs, inline CSS, no scripts or external URLs),
so it can be mailed or opened offline; all text from the summary is HTML-escaped."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from cifar_lightning.errors import is_number

REPORT_FILE = "report.html"
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}
IMAGE_TYPES[".webp"] = "image/webp"
#: Per-class metrics: column heading -> the summary's key.
PER_CLASS_COLUMNS = {"accuracy": "per_class_acc", "precision": "precision", "recall": "recall", "F1": "f1"}
PROVENANCE = {"checkpoint": "checkpoint", "checkpoint_epoch": "checkpoint epoch", "experiment": "experiment"}
PROVENANCE |= {"device": "device", "tta": "test-time augmentation level"}
#: Summary keys with a place of their own on the page; "Other fields" shows the rest.
SHOWN_ELSEWHERE = {"test_acc", "test_loss", "num_images", *PROVENANCE, "classes", "confusion", "model"}
SHOWN_ELSEWHERE |= set(PER_CLASS_COLUMNS.values())

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; }
.headline { display: flex; flex-wrap: wrap; gap: 1em; margin: 1em 0; }
.number { border: 1px solid #ccc; border-radius: 6px; padding: 0.6em 1em; }
.number .value { font-size: 1.8em; font-weight: bold; }
.number .label { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #666; font-size: 0.85em; }
.provenance th, .provenance td { text-align: left; }
.note { color: #a33; }
"""


@dataclass(frozen=True)
class Table:
    """A titled table of already formatted cells, shown in a report section beside its images."""

    title: str
    header: Sequence[str]
    rows: Sequence[Sequence[Any]]


#: What a section holds, in order: images (paths), tables, and paragraphs (plain text).
SectionItem = Path | Table | str


def percent(value: Any, digits: int = 2) -> str:
    """A fraction as a percentage ("0.692" -> "69.20%"); anything else as text, n/a when absent."""
    if value is None:
        return "n/a"
    return f"{100 * value:.{digits}f}%" if is_number(value, finite=True) else str(value)


def headline(summary: dict) -> str:
    """The numbers first, large: test accuracy, loss and the number of test images."""
    accuracy, loss, count = summary.get("test_acc"), summary.get("test_loss"), summary.get("num_images")
    numbers = [
        (None if accuracy is None else percent(accuracy), "test accuracy"),
        (f"{loss:.4f}" if is_number(loss, finite=True) else loss, "test loss (cross-entropy)"),
        (f"{count:,}" if is_number(count, finite=True) else count, "test images"),
    ]
    boxes = [
        f'<div class="number"><div class="value">{escape(str(value))}</div><div class="label">{label}</div></div>'
        for value, label in numbers
        if value is not None
    ]
    if not boxes:
        return '<p class="note">The summary holds no test accuracy or loss.</p>'
    return f'<div class="headline">{"".join(boxes)}</div>'


def provenance(summary: dict) -> str:
    """Where the numbers come from: checkpoint, its epoch, experiment and device, those present."""
    rows = "".join(
        f"<tr><th>{label}</th><td>{escape(str(summary[key]))}</td></tr>"
        for key, label in PROVENANCE.items()
        if summary.get(key) is not None
    )
    return f'<table class="provenance">{rows}</table>' if rows else ""


def per_class_columns(summary: dict) -> dict[str, list]:
    """Each per-class metric the summary holds as a list in class order, and the test images per class."""
    columns = {
        heading: summary[key] for heading, key in PER_CLASS_COLUMNS.items() if isinstance(summary.get(key), list)
    }
    confusion = summary.get("confusion")
    if isinstance(confusion, list) and all(isinstance(row, list) for row in confusion):
        counted = [all(is_number(n, finite=True) for n in row) for row in confusion]
        columns["test images"] = [sum(row) if ok else None for row, ok in zip(confusion, counted)]
    return columns


def per_class_table(summary: dict) -> str:
    columns = per_class_columns(summary)
    if not columns:
        return '<p class="note">The summary holds no per-class metrics.</p>'
    classes = summary.get("classes") if isinstance(summary.get("classes"), list) else []
    rows = max(len(classes), *(len(values) for values in columns.values()))
    names = [str(classes[i]) if i < len(classes) else str(i) for i in range(rows)]

    def cell(heading: str, values: list, i: int) -> str:
        value = values[i] if i < len(values) else None
        return f"{value:,}" if heading == "test images" and is_number(value, finite=True) else percent(value, 1)

    body = [[name, *(cell(h, values, i) for h, values in columns.items())] for i, name in enumerate(names)]
    return html_table(Table("", ["class", *columns], body))


def pre_block(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, indent=2, sort_keys=True, default=str)
    return f"<pre>{escape(text)}</pre>"


def details(summary: dict) -> str:
    """The model config, and every other field of the summary, so nothing it holds is hidden."""
    parts = ["<h2>Model config</h2>"]
    parts.append(pre_block(summary["model"]) if "model" in summary else '<p class="note">No model config.</p>')
    rest = {key: value for key, value in summary.items() if key not in SHOWN_ELSEWHERE}
    if rest:
        parts += ["<h2>Other fields</h2>", pre_block(rest)]
    return "".join(parts)


def embedded_image(path: Path) -> str:
    """The image as an <img> with a data: URI; a note instead if it is missing, unreadable or not an image."""
    path = Path(path)
    mime = IMAGE_TYPES.get(path.suffix.lower())
    if mime is None:
        return f'<p class="note">Not shown: {escape(str(path))} is not a PNG, JPEG, GIF or WebP image.</p>'
    try:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError as exc:
        reason = "it does not exist" if isinstance(exc, FileNotFoundError) else exc.strerror or str(exc)
        return f'<p class="note">Missing image: {escape(str(path))} ({escape(reason)}).</p>'
    return (
        f'<figure><img src="data:{mime};base64,{data}" alt="{escape(path.name)}">'
        f"<figcaption>{escape(path.name)}</figcaption></figure>"
    )


def html_table(table: Table) -> str:
    """The page's one table renderer: every cell HTML-escaped; the title, when there is one, as a heading."""
    header = "".join(f"<th>{escape(str(cell))}</th>" for cell in table.header)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(cell))}</td>" for cell in row) + "</tr>" for row in table.rows)
    heading = f"<h3>{escape(table.title)}</h3>" if table.title else ""
    return f"{heading}<table><tr>{header}</tr>{body}</table>"


def section_item(item: SectionItem) -> str:
    if isinstance(item, Table):
        return html_table(item)
    if isinstance(item, str):
        return f"<p>{escape(item)}</p>"
    return embedded_image(item)


def section(title: str, items: Sequence[SectionItem]) -> str:
    """A heading, then each item: an image (a Path), a Table, or a paragraph (a str)."""
    body = "".join(section_item(item) for item in items) or '<p class="note">Nothing to show in this section.</p>'
    return f"<section><h2>{escape(str(title))}</h2>{body}</section>"


def render(summary: dict, sections: Sequence[tuple[str, Sequence[SectionItem]]]) -> str:
    experiment = summary.get("experiment")
    title = escape(str(f"Evaluation report: {experiment}" if experiment else "Evaluation report"))
    page = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{title}</title>"]
    page += [f"<style>{CSS}</style></head><body>", f"<h1>{title}</h1>", headline(summary), provenance(summary)]
    page += ["<h2>Per class</h2>", per_class_table(summary), details(summary)]
    page += [section(heading, items) for heading, items in sections]
    return "\n".join([*page, "</body></html>"])


def write_report(out_dir: Path, summary: dict, sections: Sequence[tuple[str, Sequence[SectionItem]]]) -> Path:
    """Write out_dir/report.html: headline numbers, per-class table and model config from `summary` (missing keys
    left out), then each (heading, items) section."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / REPORT_FILE
    path.write_text(render(summary, sections), encoding="utf-8")
    return path
