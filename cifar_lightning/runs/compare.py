"""The runs leaderboard (python -m cifar_lightning.runs compare): one row per run, its differing config keys,
status and headline figures. A run without a readable metrics.json is a row too: a running sweep must not crash it.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from yaml import YAMLError

from cifar_lightning.errors import CifarLightningError, one_line
from cifar_lightning.runs import CONFIG_FILE, HYDRA_DIR, METRICS_FILE, RunDir, RunDirError, read_metrics
from cifar_lightning.tables import markdown_table, write_csv

#: metrics.json's headline figures, in column order; any of them can be the sort key.
METRIC_COLUMNS = ("best_val_loss", "best_val_acc", "test_acc", "best_epoch", "epochs_run", "train_seconds")
#: Metrics where higher is better (sorted descending by default); the others sort ascending.
HIGHER_IS_BETTER = ("best_val_acc", "test_acc")
ACCURACIES = ("best_val_acc", "test_acc")
DEFAULT_SORT = "best_val_acc"
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

    @property
    def name(self) -> str:
        """The run's path relative to the current directory when it lies below it, else absolute."""
        root, cwd = self.run.root.resolve(), Path.cwd().resolve()
        return str(root.relative_to(cwd) if root.is_relative_to(cwd) else root)


@dataclass
class Comparison:
    arguments: list[str]
    rows: list[RunRow]
    keys: list[str]
    sort: str
    descending: bool


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


def read_run(run: RunDir) -> RunRow:
    config, config_problem = read_config(run)
    notes = [config_problem] if config_problem else []
    if not run.metrics.exists():
        return RunRow(run, config, UNFINISHED, {}, notes)
    try:
        metrics = read_metrics(run)
    except RunDirError as exc:
        return RunRow(run, config, UNREADABLE, {}, [*notes, one_line(exc)])
    figures = {name: metric_value(metrics.get(name)) for name in METRIC_COLUMNS}
    return RunRow(run, config, metrics.get("status"), figures, notes)


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
        if key in IGNORED_KEYS:
            continue
        values = [row.config.get(key, missing) for row in configs]
        if any(lies_in_run(value, row) for value, row in zip(values, configs)):
            continue
        if len({"<missing>" if value is missing else json.dumps(value, default=str) for value in values}) > 1:
            differing.append(key)
    return differing


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
    descending = sort in HIGHER_IS_BETTER if descending is None else descending
    return Comparison(list(arguments), sort_rows(rows, sort, descending), differing_keys(rows), sort, descending)


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


def header(comparison: Comparison, markdown: bool) -> list[str]:
    metrics = [f"{name} (%)" if markdown and name in ACCURACIES else name for name in METRIC_COLUMNS]
    notes = ["note"] if any(row.notes for row in comparison.rows) else []
    return ["run", *comparison.keys, "status", *metrics, *notes]


def table_rows(comparison: Comparison, markdown: bool) -> list[list[Any]]:
    """Markdown: accuracies in % with 2 decimals; CSV: the raw figures (fractions, full precision)."""
    with_notes = any(row.notes for row in comparison.rows)
    rows = []
    for row in comparison.rows:
        values = [row.metrics.get(name) for name in METRIC_COLUMNS]
        figures = [metric_cell(name, value) for name, value in zip(METRIC_COLUMNS, values)] if markdown else values
        notes = ["; ".join(row.notes)] if with_notes else []
        rows.append([row.name, *(config_cell(row, key) for key in comparison.keys), row.status, *figures, *notes])
    return rows


def render_table(comparison: Comparison) -> str:
    """The leaderboard as a Markdown table (what the CLI prints)."""
    return markdown_table(header(comparison, True), table_rows(comparison, True))


def render_markdown(comparison: Comparison) -> str:
    """compare.md: what was compared and how it is sorted, the table, and the note on test accuracy."""
    count = len(comparison.rows)
    sources = ", ".join(f"`{argument}`" for argument in comparison.arguments)
    order = "descending" if comparison.descending else "ascending"
    ignored = "paths inside each run's own directory, `resume` and `hpo.trial`"
    keys = (
        "The columns before `status` are the config keys that differ between the runs (empty: the run's "
        f"config.yaml lacks the key); {ignored} are left out."
        if comparison.keys
        else f"The runs' configs do not differ (apart from {ignored})."
    )
    return (
        f"# Run comparison\n\n"
        f"{count} run{'s' if count != 1 else ''} from {sources}, sorted by {comparison.sort} ({order}; "
        f"missing values last). {keys}\n\n"
        f"{render_table(comparison)}\n"
        f"{TEST_NOTE}\n"
    )


def write_comparison(comparison: Comparison, out_dir: str | Path = DEFAULT_OUT) -> tuple[Path, Path]:
    """Write out_dir/compare.md and out_dir/compare.csv; returns their paths."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        markdown = out_dir / MARKDOWN_FILE
        markdown.write_text(render_markdown(comparison))
        csv_path = write_csv(out_dir / CSV_FILE, header(comparison, False), table_rows(comparison, False))
    except OSError as exc:
        raise CompareError(
            f"cannot write the comparison into {out_dir} ({exc.strerror or exc}). Fix: pass a writable folder "
            f"with --out."
        ) from exc
    return markdown, csv_path


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cifar_lightning.runs", description="Tools for run directories.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    leaderboard = commands.add_parser(
        "compare",
        help="a table of runs: the config keys that differ, status and headline metrics",
        description="One row per run: the config keys that differ between the runs, its status and headline "
        "figures, sorted by a metric. Prints the Markdown table and writes compare.md and compare.csv.",
    )
    leaderboard.add_argument(
        "paths", nargs="+", metavar="PATH", help="run directories, folders holding runs at any depth, or quoted globs"
    )
    sense = f"{' and '.join(HIGHER_IS_BETTER)} descending, the others ascending; missing values last"
    leaderboard.add_argument("--sort", choices=METRIC_COLUMNS, default=DEFAULT_SORT, help=f"the metric ({sense})")
    order = leaderboard.add_mutually_exclusive_group()
    order.add_argument("--ascending", dest="descending", action="store_false", default=None, help="smallest first")
    order.add_argument("--descending", dest="descending", action="store_true", default=None, help="largest first")
    leaderboard.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        comparison = compare(args.paths, args.sort, args.descending)
        markdown, csv_path = write_comparison(comparison, args.out)
    except CifarLightningError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    print(render_table(comparison), end="")
    print(f"\nWrote {markdown} and {csv_path}")
    return 0
