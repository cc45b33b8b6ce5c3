"""The runs leaderboard (python -m cifar_lightning.runs compare): one row per run, its recipe, status and headline
figures first, then the config keys that differ. A run without a readable metrics.json is a row too: a running sweep
must not crash it. The printed table (and compare.md) fits a terminal: it shows only the differing keys that a run's
own overrides set, shortened; compare.csv keeps every differing key and full values.
"""

from __future__ import annotations

import glob
import json
import math
import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from yaml import YAMLError

from cifar_lightning.errors import CifarLightningError, one_line
from cifar_lightning.runs import CONFIG_FILE, HYDRA_DIR, METRICS_FILE, RunDir, RunDirError, read_metrics, run_overrides
from cifar_lightning.tables import markdown_table, write_csv

#: metrics.json's headline figures, in column order; any of them can be the sort key.
METRIC_COLUMNS = ("best_val_loss", "best_val_acc", "test_acc", "best_epoch", "epochs_run", "train_seconds")
#: Accuracies: shown in %, and higher is better (sorted descending by default); the others sort ascending.
ACCURACIES = ("best_val_acc", "test_acc")
DEFAULT_SORT = "best_val_acc"
#: The printed table's short headings (compare.csv keeps metrics.json's names).
HEADINGS = dict(zip(METRIC_COLUMNS, ("val_loss", "val_acc%", "test_acc%", "best_ep", "epochs", "train_s")))
#: The recipe: metrics.json's `experiment`, else this config key; shown as its own column, not as a differing key.
RECIPE_KEY = "experiment_name"
#: Hydra's record of the command line's overrides, in the run's .hydra/.
#: The printed table's width (a terminal) and its longest cells; longer ones are shortened with an ellipsis.
WIDTH = 120
CELL_LIMITS = {"run": 28, "recipe": 16, "note": 40}
VALUE_LIMIT = 18
#: Config keys that differ between runs by construction, not by choice.
IGNORED_KEYS = ("resume", "hpo.trial")
#: Statuses of runs whose metrics.json is missing, or present but unreadable.
UNFINISHED, UNREADABLE = "unfinished", "unreadable"
DEFAULT_OUT = Path("logs/compare")
MARKDOWN_FILE, CSV_FILE = "compare.md", "compare.csv"
TEST_NOTE = (
    "Test accuracy is shown for reference only: choose a configuration on validation (best_val_acc, "
    "best_val_loss), never on test_acc, or the test set no longer gives an unbiased estimate of the chosen model."
)
WHAT_IS_A_RUN = (
    "A run directory is a folder holding metrics.json or config.yaml, as train.py writes them (e.g. "
    "logs/train/runs/<date>_<time>). Pass run directories, folders that hold them at any depth (a sweep "
    "logs/train/multiruns/<date>_<time>, logs/train/runs, a study's logs/train/hpo/<study>), or quoted globs "
    "(e.g. 'logs/train/runs/2026-*', '**' matches any depth)."
)


class CompareError(CifarLightningError):
    """The runs to compare cannot be found, or the comparison cannot be written."""


@dataclass
class RunRow:
    """One run's row: its flattened config (None when config.yaml is missing or unreadable), status and figures."""

    run: RunDir
    config: dict[str, Any] | None
    status: str
    metrics: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    recipe: str = ""
    #: The config keys the run's own overrides set (.hydra/overrides.yaml); None when the run has no such record.
    overrides: list[str] | None = None

    @property
    def name(self) -> str:
        """The run's path relative to the current directory when it lies below it, else absolute."""
        return shown_name(self.run.root)


@dataclass
class Comparison:
    arguments: list[str]
    rows: list[RunRow]
    keys: list[str]
    sort: str
    descending: bool
    #: The differing keys that some run's overrides set: the ones the printed table shows (when they fit).
    shown: list[str] = field(default_factory=list)

    @cached_property
    def printed(self) -> list[str]:
        """The shown keys, in order, while the table fits WIDTH columns (the metrics are always there)."""
        keys: list[str] = []
        for key in self.shown:
            if max(map(len, markdown_table(*printed_table(self, [*keys, key])).splitlines())) <= WIDTH:
                keys.append(key)
        return keys


def runs_below(folder: Path) -> list[Path]:
    """The run directories at or below `folder`, in path order (not inside a run, nor in hidden folders: .hydra/)."""
    found = []
    for current, subfolders, _ in os.walk(folder):
        if RunDir(current).metrics.is_file() or RunDir(current).config.is_file():
            found.append(Path(current))
            subfolders.clear()
        else:
            subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
    return found


def find_run_dirs(arguments: Sequence[str]) -> list[RunDir]:
    """Each argument's run directories (a run, a folder holding runs, or a glob), without repeats; an argument
    that yields no run is an error, so that a mistyped path does not silently drop out of the table."""
    runs: dict[Path, RunDir] = {}
    for argument in arguments:
        pattern = os.path.expanduser(argument)
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        found = []
        for match in map(Path, matches):
            if HYDRA_DIR in match.resolve().parts:
                continue  # Hydra's own copy of a config, not a run
            if match.is_file() and match.name in (METRICS_FILE, CONFIG_FILE):
                found.append(match.parent)
            elif match.is_dir():
                found += runs_below(match)
        if not found:
            problem = "matches nothing" if not any(Path(m).exists() for m in matches) else "holds no run directory"
            raise CompareError(f"{argument} {problem}, so there is nothing to compare from it. {WHAT_IS_A_RUN}")
        for path in found:
            runs.setdefault(path.resolve(), RunDir(path))
    return list(runs.values())


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as {dotted.key: value}; lists and empty mappings stay whole values."""
    if isinstance(node, dict) and node:
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: node} if prefix else {}


def read_config(run: RunDir) -> tuple[dict[str, Any] | None, str | None]:
    """The run's config.yaml, flattened, or None and why not."""
    if not run.config.is_file():
        return None, "no config.yaml"
    try:
        config = OmegaConf.to_container(OmegaConf.load(run.config), resolve=False)
    except (OSError, YAMLError, OmegaConfBaseException) as exc:
        return None, f"config.yaml unreadable ({type(exc).__name__}: {one_line(exc)})"
    if not isinstance(config, dict):
        return None, f"config.yaml holds a {type(config).__name__}, not a mapping"
    return flatten(config), None


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def metric_value(value: Any) -> float | int | None:
    """A figure from metrics.json: a number, the "nan"/"inf" strings it stores non-finite numbers as, or None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("nan", "inf", "-inf", "infinity", "-infinity"):
        return float(value)
    return None


def read_overrides(run: RunDir) -> list[str] | None:
    """The config keys set on the run's command line (`optim.lr=0.1` sets optim.lr, `model=resnet18` the model
    group, `+x=1` and `~x` x); None when its overrides.yaml is missing or unreadable."""
    overrides = run_overrides(run)
    return None if overrides is None else [item.split("=", 1)[0].lstrip("+~").split("@", 1)[0] for item in overrides]


def read_run(run: RunDir) -> RunRow:
    config, config_problem = read_config(run)
    notes = [config_problem] if config_problem else []
    recipe = (config or {}).get(RECIPE_KEY)
    row = RunRow(run, config, UNFINISHED, {}, notes, "" if recipe is None else str(recipe), read_overrides(run))
    if not run.metrics.exists():
        return row
    try:
        metrics = read_metrics(run)
    except RunDirError as exc:
        row.status, row.notes = UNREADABLE, [*notes, one_line(exc)]
        return row
    row.status = metrics.get("status")
    row.metrics = {name: metric_value(metrics.get(name)) for name in METRIC_COLUMNS}
    row.recipe = str(metrics["experiment"]) if metrics.get("experiment") is not None else row.recipe
    return row


def lies_in_run(value: Any, row: RunRow) -> bool:
    """True for a path at or below the run's own directory (as its config wrote it, or where it lies now): such
    values differ between any two runs."""
    if not isinstance(value, str) or not value:
        return False
    path = os.path.normpath(os.path.expanduser(value))
    output_dir = (row.config or {}).get("paths.output_dir")
    if isinstance(output_dir, str) and output_dir:
        output_dir = os.path.normpath(os.path.expanduser(output_dir))
        if path == output_dir or path.startswith(output_dir.rstrip(os.sep) + os.sep):
            return True
    if os.sep not in value:
        return False
    return Path(path).resolve().is_relative_to(row.run.root.resolve())


def differing_keys(rows: Sequence[RunRow]) -> list[str]:
    """The config keys whose values differ (or are missing from some) between the runs with a readable config."""
    configs = [row for row in rows if row.config is not None]
    keys = list(dict.fromkeys(key for row in configs for key in row.config))
    missing = object()
    differing = []
    for key in keys:
        if key in IGNORED_KEYS or key == RECIPE_KEY:
            continue
        values = [row.config.get(key, missing) for row in configs]
        if any(lies_in_run(value, row) for value, row in zip(values, configs)):
            continue
        if len({"<missing>" if value is missing else json.dumps(value, default=str) for value in values}) > 1:
            differing.append(key)
    return differing


def set_by_overrides(keys: Sequence[str], rows: Sequence[RunRow]) -> list[str]:
    """The keys some run's own overrides set (a group override such as model=resnet18 sets the keys below it), not
    those that differ only because the runs chose different recipes; every key when no run records its overrides."""
    recorded = [key for row in rows if row.overrides is not None for key in row.overrides]
    if not any(row.overrides is not None for row in rows):
        return list(keys)
    return [key for key in keys if any(key == set_key or key.startswith(set_key + ".") for set_key in recorded)]


def sort_rows(rows: Sequence[RunRow], metric: str, descending: bool) -> list[RunRow]:
    """By the metric, missing and non-finite values last; ties keep path order."""
    by_name = sorted(rows, key=lambda row: row.name)
    present = [row for row in by_name if finite(row.metrics.get(metric))]
    absent = [row for row in by_name if not finite(row.metrics.get(metric))]
    return sorted(present, key=lambda row: row.metrics[metric], reverse=descending) + absent


def compare(arguments: Sequence[str], sort: str = DEFAULT_SORT, descending: bool | None = None) -> Comparison:
    """Find and read the runs, pick the differing keys and sort; descending defaults to the metric's own sense."""
    if sort not in METRIC_COLUMNS:
        raise CompareError(f"cannot sort by {sort!r}: choose one of {', '.join(METRIC_COLUMNS)}.")
    rows = [read_run(run) for run in find_run_dirs(arguments)]
    descending = sort in ACCURACIES if descending is None else descending
    keys = differing_keys(rows)
    sorted_rows = sort_rows(rows, sort, descending)
    return Comparison(list(arguments), sorted_rows, keys, sort, descending, set_by_overrides(keys, rows))


def config_cell(row: RunRow, key: str) -> str:
    """A config value as YAML would read it (null, true, [1, 2]); empty when the run lacks the key."""
    if row.config is None or key not in row.config:
        return ""
    value = row.config[key]
    return value if isinstance(value, str) else json.dumps(value, default=str)


def metric_cell(name: str, value: float | int | None) -> str:
    if value is None or not math.isfinite(value):
        return "" if value is None else str(value)
    if name in ACCURACIES:
        return f"{100 * value:.2f}"
    return format(value, {"best_val_loss": ".4f", "train_seconds": ".1f"}.get(name, ""))


def shorten(text: str, limit: int, keep_end: bool = False) -> str:
    """The text in at most `limit` characters: its middle (or, for a path, its start) replaced by an ellipsis."""
    if len(text) <= limit:
        return text
    if keep_end:
        return "…" + text[len(text) - limit + 1 :]
    head = (limit - 1) // 2
    return text[:head] + "…" + text[len(text) - (limit - 1 - head) :]


def shown_name(path: Path) -> str:
    """A path relative to the current directory when it lies below it, else absolute."""
    path, cwd = path.resolve(), Path.cwd().resolve()
    return str(path.relative_to(cwd) if path.is_relative_to(cwd) else path)


def runs_folder(comparison: Comparison) -> Path:
    """The deepest folder that holds every run (there is one at least): the printed table names runs from it."""
    return Path(os.path.commonpath([row.run.root.resolve().parent for row in comparison.rows]))


def csv_table(comparison: Comparison) -> tuple[list[str], list[list[Any]]]:
    """compare.csv: every differing key, raw figures (fractions, full precision), full values and run paths."""
    notes = ["note"] if any(row.notes for row in comparison.rows) else []
    header = ["run", "recipe", "status", *METRIC_COLUMNS, *comparison.keys, *notes]
    rows = []
    for row in comparison.rows:
        figures = [row.metrics.get(name) for name in METRIC_COLUMNS]
        values = [config_cell(row, key) for key in comparison.keys]
        rows.append([row.name, row.recipe, row.status, *figures, *values, *(["; ".join(row.notes)] if notes else [])])
    return header, rows


def printed_table(comparison: Comparison, keys: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """The printed table with these config keys: short headings, accuracies in %, run paths relative to the
    runs' folder, and long cells shortened."""
    folder = runs_folder(comparison)
    notes = ["note"] if any(row.notes for row in comparison.rows) else []
    header = ["run", "recipe", "status", *(HEADINGS[name] for name in METRIC_COLUMNS), *keys, *notes]
    rows = []
    for row in comparison.rows:
        run = shorten(str(row.run.root.resolve().relative_to(folder)), CELL_LIMITS["run"], keep_end=True)
        figures = [metric_cell(name, row.metrics.get(name)) for name in METRIC_COLUMNS]
        values = [shorten(config_cell(row, key), VALUE_LIMIT) for key in keys]
        note = [shorten("; ".join(row.notes), CELL_LIMITS["note"])] if notes else []
        rows.append([run, shorten(row.recipe, CELL_LIMITS["recipe"]), row.status, *figures, *values, *note])
    return header, rows


def render_table(comparison: Comparison) -> str:
    """The leaderboard as a Markdown table of at most WIDTH columns (what the CLI prints, and compare.md holds)."""
    return markdown_table(*printed_table(comparison, comparison.printed))


def caption(comparison: Comparison) -> str:
    """Which runs, in which order: the line above the printed table."""
    count = len(comparison.rows)
    folder = shown_name(runs_folder(comparison))
    order = "highest" if comparison.descending else "lowest"
    place = f" in {folder}" if folder != "." else ""
    return f"{count} run{'s' if count != 1 else ''}{place}, by {comparison.sort} ({order} first, missing last):"


def left_out(comparison: Comparison) -> str:
    """What the table leaves out of the differing keys, wrapped to WIDTH; empty when it shows them all."""
    too_wide = [key for key in comparison.shown if key not in comparison.printed]
    unset = len(comparison.keys) - len(comparison.shown)
    lines = []
    if unset:
        lines.append(
            f"{unset} more config key{'s differ' if unset != 1 else ' differs'} only through the recipe or defaults "
            f"(no run's overrides set {'them' if unset != 1 else 'it'}): see {CSV_FILE}."
        )
    if too_wide:
        lines.append(f"Left out to fit {WIDTH} columns (in {CSV_FILE}): {', '.join(too_wide)}.")
    return "".join(textwrap.fill(line, WIDTH) + "\n" for line in lines)


def render_markdown(comparison: Comparison) -> str:
    """compare.md: what was compared and how it is sorted, the printed table, and the note on test accuracy."""
    count = len(comparison.rows)
    sources = ", ".join(f"`{argument}`" for argument in comparison.arguments)
    order = "descending" if comparison.descending else "ascending"
    folder, unshown = shown_name(runs_folder(comparison)), left_out(comparison)
    folder = f"`{folder}`" if folder != "." else "the current folder"
    ignored = "paths inside each run's own directory, `resume` and `hpo.trial`"
    keys = (
        "The columns after the metrics are the config keys that differ between the runs and that a run's own "
        "overrides set (.hydra/overrides.yaml; every differing key when no run has one; empty: the run's config.yaml "
        "lacks the key); "
        if comparison.keys
        else f"The runs' configs do not differ (apart from {ignored}). "
    )
    headings = ", ".join(f"{short} is {name}" for name, short in HEADINGS.items())
    return (
        f"# Run comparison\n\n"
        f"{count} run{'s' if count != 1 else ''} from {sources}, sorted by {comparison.sort} ({order}; "
        f"missing values last); run paths are relative to {folder}. recipe is the run's experiment, and {headings} "
        f"(accuracies in %). {keys}{CSV_FILE} has every differing key (apart from {ignored}) and full values.\n\n"
        f"{render_table(comparison)}\n"
        f"{unshown + chr(10) if unshown else ''}"
        f"{TEST_NOTE}\n"
    )


def write_comparison(comparison: Comparison, out_dir: str | Path = DEFAULT_OUT) -> tuple[Path, Path]:
    """Write out_dir/compare.md and out_dir/compare.csv; returns their paths."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        markdown = out_dir / MARKDOWN_FILE
        markdown.write_text(render_markdown(comparison))
        csv_path = write_csv(out_dir / CSV_FILE, *csv_table(comparison))
    except OSError as exc:
        raise CompareError(
            f"cannot write the comparison into {out_dir} ({exc.strerror or exc}). Fix: pass a writable folder "
            f"with --out."
        ) from exc
    return markdown, csv_path
