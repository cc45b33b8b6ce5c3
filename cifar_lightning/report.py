"""One self-contained HTML page for an evaluation (images as data: URIs, inline CSS, no scripts or external URLs),
so it can be mailed or opened offline; all text from the summary is HTML-escaped."""

from __future__ import annotations

import base64
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from cifar_lightning.errors import is_number
from cifar_lightning.gradcam import EXPLAINED_TEXT

REPORT_FILE = "report.html"
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}
IMAGE_TYPES[".webp"] = "image/webp"
#: Per-class metrics: column heading -> the summary's key.
PER_CLASS_COLUMNS = {"accuracy": "per_class_acc", "precision": "precision", "recall": "recall", "F1": "f1"}
#: Where the numbers come from, shown under the headline: the summary's key -> its label.
PROVENANCE = {"checkpoint": "checkpoint", "checkpoint_epoch": "checkpoint epoch", "experiment": "experiment"}
PROVENANCE |= {"device": "device", "tta": "test-time augmentation", "seconds": "evaluation time"}
#: "Other settings": labels of the (dotted) keys known; any other key is shown under its own name.
LABELS = {"loss": "training loss", "gradcam.layer": "Grad-CAM layer", "gradcam.explain": "Grad-CAM explains"}
TTA_TEXT = {0: "none", 1: "with mirror images", 2: "with mirror images and one-pixel shifts"}
CHANNELS = ("R", "G", "B")
SETTING_HEADER = ("setting", "value")
#: Summary keys with a place of their own on the page; "Other settings" shows the rest.
SHOWN_ELSEWHERE = {"test_acc", "test_loss", "num_images", *PROVENANCE, "classes", "confusion", "model"}
SHOWN_ELSEWHERE |= {"calibration", "robustness"}  # sections of their own
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
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #666; font-size: 0.85em; }
.settings th, .settings td { text-align: left; }
.note { color: #a33; }
"""


@dataclass(frozen=True)
class Table:
    """A titled table of already formatted cells, shown in a report section beside its images."""

    title: str
    header: Sequence[str]
    rows: Sequence[Sequence[Any]]
    css_class: str = ""  # "settings": (setting, value) rows, the values left-aligned


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
    """Where the numbers come from: checkpoint, its epoch, experiment, device, TTA and time, those present."""
    rows = [row for key in PROVENANCE if summary.get(key) is not None for row in setting_rows(key, summary[key])]
    return html_table(Table("", SETTING_HEADER, rows, "settings")) if rows else ""


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


def value_text(value: Any) -> str:
    """A leaf value as a person reads it: floats to 6 significant digits, lists comma-separated, None as n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()  # as the YAML configs write it
    if isinstance(value, float):
        text = f"{value:.6g}"
        return text if any(c in text for c in ".eni") else f"{text}.0"  # 0.0 stays a float, not "0"
    if isinstance(value, dict | list | tuple):  # flat_items leaves only empty ones and lists of plain values here
        return ", ".join(value_text(item) for item in value) if value else "(empty)"
    return str(value)


def flat_items(value: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, leaf) pairs: dicts, and lists that hold dicts or lists, opened down to plain values, so that
    no cell shows a nested structure (["a", "b"] stays one leaf, shown as "a, b")."""
    if isinstance(value, dict) and value:
        for name, item in value.items():
            yield from flat_items(item, f"{key}.{name}" if key else str(name))
    elif isinstance(value, list | tuple) and any(isinstance(item, dict | list | tuple) for item in value):
        for i, item in enumerate(value):
            yield from flat_items(item, f"{key}.{i}")
    else:
        yield key, value


def duration_text(seconds: Any) -> str:
    """Seconds with their unit, and in minutes too once there are more than 60 ("82.6 s (1 min 23 s)")."""
    if not is_number(seconds, finite=True):
        return value_text(seconds)
    whole = round(seconds)
    return f"{seconds:.1f} s" + (f" ({whole // 60} min {whole % 60} s)" if whole >= 60 else "")


def class_text(target: Any) -> str:
    """Hydra's _target_ as the class name first, then its module ("ReportCNN (cifar_lightning.models)")."""
    module, _, name = str(target).rpartition(".")
    return f"{name} ({module})" if module else name


#: How the value of a (dotted) key reads, where plain value_text would say less.
VALUE_TEXT = {
    "tta": lambda level: f"{level} ({TTA_TEXT[level]})" if level in TTA_TEXT else value_text(level),
    "seconds": duration_text,
    "gradcam.explain": lambda explain: EXPLAINED_TEXT.get(explain, value_text(explain)),
}


def setting_rows(key: str, value: Any) -> list[list[str]]:
    """(label, value) rows of one summary field: a known key under its label, any other under its own name."""
    labels = PROVENANCE | LABELS
    return [[labels.get(name, name), VALUE_TEXT.get(name, value_text)(leaf)] for name, leaf in flat_items(value, key)]


def model_rows(model: Any) -> list[list[str]]:
    """The model config's settings by their config keys (nested ones dotted); `_target_` as the class built."""
    rows = []
    for key, leaf in flat_items(model):
        parts = key.split(".") if key else ["model"]
        name = ".".join("class" if part == "_target_" else part for part in parts)
        rows.append([name, class_text(leaf) if parts[-1] == "_target_" else value_text(leaf)])
    return rows


def normalization_table(normalization: Any) -> Table | None:
    """Mean and standard deviation per channel (R, G, B) to 4 decimals; None unless the field has that shape."""
    if not (isinstance(normalization, dict) and sorted(normalization) == ["mean", "std"]):
        return None
    mean, std = normalization["mean"], normalization["std"]
    stats = [mean, std] if isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) else [[]]
    if not stats[0] or not all(is_number(x, finite=True) for values in stats for x in values):
        return None
    channels = CHANNELS if len(mean) == len(CHANNELS) else [f"channel {i}" for i in range(len(mean))]
    rows = [[name, *(f"{x:.4f}" for x in values)] for name, values in zip(("mean", "std"), stats)]
    return Table("Input normalization (pixel values scaled to 0-1, per channel)", ["", *channels], rows)


def details(summary: dict) -> str:
    """The model config, its input normalization and every other field of the summary, as labelled tables: nothing
    the summary holds is hidden, and none of it is shown as JSON."""
    model = summary.get("model")
    parts = ["<h2>Model config</h2>"]
    parts.append(
        html_table(Table("", SETTING_HEADER, model_rows(model), "settings"))
        if model is not None
        else '<p class="note">No model config.</p>'
    )
    normalization = normalization_table(summary.get("normalization"))
    parts += [html_table(normalization)] if normalization else []
    shown = SHOWN_ELSEWHERE | ({"normalization"} if normalization else set())
    rows = [row for key, value in summary.items() if key not in shown for row in setting_rows(key, value)]
    if rows:
        parts += ["<h2>Other settings</h2>", html_table(Table("", SETTING_HEADER, rows, "settings"))]
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
    opening = f'<table class="{escape(table.css_class)}">' if table.css_class else "<table>"
    return f"{heading}{opening}<tr>{header}</tr>{body}</table>"


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
