"""Aggregate an ablation sweep (the report's seven configurations x several seeds) into Table 1.

A single run per configuration cannot tell a real effect from seed-to-seed noise, so each
configuration gets its mean and spread over seeds, the difference to the improved recipe with a
Welch t-test and a confidence interval, its learning curves and its confusion matrix:

    python -m cifar_lightning.ablation logs/train/multiruns/<date>_<time>

writes ablation.csv, ablation.md, curves.png and confusion.png into the sweep directory and prints
the Markdown table. AggregateAblation, a Hydra callback, does the same when a multirun ends.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import yaml
from hydra.experimental.callback import Callback
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from scipy import stats

from cifar_lightning.errors import CifarLightningError, one_line
from cifar_lightning.runs import COMPLETED, DIVERGED, HYDRA_DIR, RunDir, RunDirError, read_metrics

log = logging.getLogger(__name__)

# The course report's Table 1: test accuracy of one run per configuration, in its row order.
REPORT_TEST_ACC: dict[str, float] = {
    "base": 0.6092,
    "improved": 0.6660,
    "literal_improved": 0.6660,  # the same row of the report, its text read literally
    "no_scheduler": 0.6210,
    "no_l2": 0.6155,
    "no_batchnorm": 0.6065,
    "no_dropout": 0.6248,
}
LABELS: dict[str, str] = {
    "base": "Base",
    "improved": "Improved",
    "literal_improved": "Improved, literal (BN after conv1 only)",
    "no_scheduler": "No Scheduler",
    "no_l2": "No L2 Regularization",
    "no_batchnorm": "No BatchNorm",
    "no_dropout": "No DropOut",
}
REFERENCE = "improved"  # every other configuration is compared with this one
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

CSV_FILE, MARKDOWN_FILE, CURVES_FILE, CONFUSION_FILE = "ablation.csv", "ablation.md", "curves.png", "confusion.png"
CSV_COLUMNS = (
    "configuration",
    "label",
    "n_finished",
    "seeds_planned",
    "n_missing",
    "finished_seeds",
    "missing_seeds",
    "n_diverged",
    "diverged_seeds",
    "test_acc_mean",
    "test_acc_std",
    "report_test_acc",
    "delta_vs_improved",
    "delta_p_value",
    "delta_ci95_low",
    "delta_ci95_high",
    "best_epoch_mean",
    "train_seconds_mean",
)


class SweepError(CifarLightningError):
    """The sweep directory is missing, holds no jobs, or cannot be written to."""


#: Run.status of a job without a usable metrics.json (failed, killed, or still running).
UNFINISHED = "unfinished"


@dataclass(frozen=True)
class Run:
    """One job of the sweep; `metrics` is None when the job did not finish (is unfinished).

    status: completed, diverged (its metrics.json says so: it stopped on a non-finite loss, a
    result of its settings rather than a missing run) or unfinished.
    """

    name: str
    seed: int | None
    directory: Path
    planned_seeds: int | None = None
    metrics: dict[str, Any] | None = field(default=None, repr=False)
    status: str = COMPLETED


class SweepRuns(NamedTuple):
    finished: list[Run]
    unfinished: list[Run]
    diverged: list[Run] = []  # never mutated


@dataclass(frozen=True)
class Difference:
    """Mean of a configuration minus mean of the reference, as fractions; p and CI need n >= 2 on both sides."""

    delta: float
    p_value: float | None = None
    ci95: tuple[float, float] | None = None


@dataclass(frozen=True)
class AblationRow:
    """One configuration's line of the table; accuracies are fractions."""

    name: str
    label: str
    seeds: tuple[int | None, ...]  # of the finished runs
    planned: int | None
    n_missing: int
    unfinished: tuple[Run, ...]  # job directories without usable metrics.json (diverged ones excluded)
    absent_seeds: tuple[int, ...]  # seeds other configurations ran but this one has no job for
    acc_mean: float | None
    acc_std: float | None
    report: float | None
    difference: Difference | None
    best_epoch_mean: float | None
    train_seconds_mean: float | None
    runs: tuple[Run, ...] = field(default=(), repr=False)  # the finished runs
    diverged: tuple[Run, ...] = ()  # runs whose metrics.json says status: diverged (not missing)

    @property
    def n(self) -> int:
        return len(self.runs)


@dataclass
class AblationTable:
    """The aggregated sweep: one row per configuration, and the files written from it."""

    sweep_dir: Path
    rows: list[AblationRow]
    files: dict[str, Path] = field(default_factory=dict)

    def row(self, name: str) -> AblationRow:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no configuration {name!r} in the sweep (have: {', '.join(r.name for r in self.rows)})")

    @property
    def n_missing(self) -> int:
        return sum(row.n_missing for row in self.rows)

    @property
    def n_diverged(self) -> int:
        return sum(len(row.diverged) for row in self.rows)


# --- reading the sweep ------------------------------------------------------------------------


def find_job_dirs(sweep_dir: Path) -> list[Path]:
    """Hydra's job directories: the sweep's subdirectories holding .hydra/config.yaml or metrics.json."""
    jobs = [
        path
        for path in sweep_dir.iterdir()
        if path.is_dir() and ((path / HYDRA_DIR / "config.yaml").is_file() or RunDir(path).metrics.is_file())
    ]
    return sorted(jobs, key=lambda path: (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name))


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML file as plain containers, interpolations left as their `${...}` text; {} if unreadable."""
    if not path.is_file():
        return {}
    try:
        loaded = OmegaConf.load(path)
    except (OSError, yaml.YAMLError, OmegaConfBaseException) as exc:
        log.warning("cannot read %s (%s): ignored", path, exc)
        return {}
    if not isinstance(loaded, DictConfig):
        return {}
    return OmegaConf.to_container(loaded, resolve=False)  # type: ignore[return-value]


def job_metrics(job_dir: Path) -> tuple[str, dict[str, Any] | None]:
    """The job's status and metrics.json: (completed, metrics) with a test accuracy, (diverged, metrics),
    or (unfinished, None)."""
    run = RunDir(job_dir)
    if not run.metrics.is_file():
        return UNFINISHED, None
    try:
        metrics = read_metrics(run)
    except RunDirError as exc:
        log.warning("%s: the job counts as unfinished", exc)
        return UNFINISHED, None
    if metrics.get("status") == DIVERGED:
        return DIVERGED, metrics
    if not is_number(metrics.get("test_acc")):
        log.warning("%s has no test_acc: the job counts as unfinished", run.metrics)
        return UNFINISHED, None
    return COMPLETED, metrics


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_name(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def plain(mapping: dict[str, Any], dotted_key: str) -> Any:
    """The value at `a.b` in nested dicts, or None if absent or an unresolved `${...}` interpolation."""
    value: Any = mapping
    for key in dotted_key.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    if isinstance(value, str) and "${" in value:
        return None
    return value


def first(values: Iterable[Any], valid: Callable[[Any], bool]) -> Any:
    return next((value for value in values if valid(value)), None)


def read_run(job_dir: Path) -> Run:
    """Name, seed and planned seed count of one job, from metrics.json, else config.yaml, else .hydra/."""
    status, metrics = job_metrics(job_dir)
    configs = [read_yaml(RunDir(job_dir).config), read_yaml(job_dir / HYDRA_DIR / "config.yaml")]
    from_metrics = metrics or {}
    name = first([from_metrics.get("ablation"), *(plain(c, "ablation.name") for c in configs)], is_name)
    # A sweep without the ablation group (e.g. `-m seed=0,1,2`) is grouped by its experiment name.
    name = name or first([from_metrics.get("experiment"), *(plain(c, "experiment_name") for c in configs)], is_name)
    seed = first([from_metrics.get("seed"), *(plain(c, "seed") for c in configs)], is_int)
    # ablation.seeds has a default in every run's config; it is a plan only for jobs of an ablation.
    ablation_configs = [c for c in configs if is_name(plain(c, "ablation.name"))]
    planned = first([plain(c, "ablation.seeds") for c in ablation_configs], lambda v: is_int(v) and v > 0)
    return Run(
        name=name or "unknown", seed=seed, directory=job_dir, planned_seeds=planned,
        metrics=metrics, status=status,
    )  # fmt: skip


def collect_runs(sweep_dir: str | Path) -> SweepRuns:
    """Every job of the sweep, split into finished, unfinished (failed or interrupted) and diverged ones."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        what = "is not a directory" if sweep_dir.exists() else "does not exist"
        raise SweepError(
            f"sweep directory {sweep_dir} {what}. Fix: pass the directory of a Hydra multirun, "
            f"e.g. python -m cifar_lightning.ablation logs/train/multiruns/<date>_<time>."
        )
    job_dirs = find_job_dirs(sweep_dir)
    if not job_dirs:
        raise SweepError(
            f"{sweep_dir} holds no job directories (no subdirectory with .hydra/config.yaml or metrics.json). "
            f"Fix: pass the multirun directory that holds the jobs 0/, 1/, ... "
            f"(logs/train/multiruns/<date>_<time>), not a job or the multiruns folder itself."
        )
    runs = [read_run(job_dir) for job_dir in job_dirs]
    return SweepRuns(
        [r for r in runs if r.status == COMPLETED],
        [r for r in runs if r.status == UNFINISHED],
        [r for r in runs if r.status == DIVERGED],
    )


# --- statistics ---------------------------------------------------------------------------------


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1); the std is None for fewer than two values."""
    if not values:
        return None, None
    mean = float(np.mean(values))
    return mean, float(np.std(values, ddof=1)) if len(values) > 1 else None


def welch_difference(values: Sequence[float], reference: Sequence[float]) -> Difference | None:
    """Difference of means with Welch's t-test and its 95% CI (Welch-Satterthwaite df): seeds differ in spread."""
    if not values or not reference:
        return None
    delta = float(np.mean(values) - np.mean(reference))
    if len(values) < 2 or len(reference) < 2:
        return Difference(delta)
    var_a = float(np.var(values, ddof=1)) / len(values)
    var_b = float(np.var(reference, ddof=1)) / len(reference)
    if var_a + var_b == 0:  # identical values within both groups: the test is undefined
        return Difference(delta)
    df = (var_a + var_b) ** 2 / (var_a**2 / (len(values) - 1) + var_b**2 / (len(reference) - 1))
    half_width = float(stats.t.ppf(0.975, df)) * math.sqrt(var_a + var_b)
    p_value = float(stats.ttest_ind(values, reference, equal_var=False).pvalue)
    return Difference(delta, p_value, (delta - half_width, delta + half_width))


def mean_of(runs: Iterable[Run], key: str) -> float | None:
    values = [run.metrics[key] for run in runs if run.metrics and is_number(run.metrics.get(key))]
    return float(np.mean(values)) if values else None


# --- the table ----------------------------------------------------------------------------------


def configuration_order(names: Iterable[str]) -> list[str]:
    """The report's row order, then configurations it does not have, alphabetically."""
    names = set(names)
    return [n for n in REPORT_TEST_ACC if n in names] + sorted(names - set(REPORT_TEST_ACC))


def missing_runs(
    finished: Sequence[Run],
    unfinished: Sequence[Run],
    planned: int | None,
    study_seeds: Sequence[int],
    diverged: Sequence[Run] = (),
) -> tuple[tuple[Run, ...], tuple[int, ...], int]:
    """Unfinished jobs, seeds with no job at all, and how many runs are missing in total.

    A seed counts as absent when another configuration of the sweep has a job for it; with a
    planned count, the total is planned minus finished and diverged (at least the unfinished
    jobs). A diverged run is not missing: it ran, and its settings made it diverge.
    """
    done = {run.seed for run in finished} | {run.seed for run in diverged}
    failed = tuple(run for run in unfinished if run.seed is None or run.seed not in done)
    tried = done | {run.seed for run in failed}
    absent = [seed for seed in study_seeds if seed not in tried]
    if planned is None:
        return failed, tuple(absent), len(failed) + len(absent)
    n_missing = max(planned - len(finished) - len(diverged), len(failed))
    return failed, tuple(absent[: max(n_missing - len(failed), 0)]), n_missing


def build_table(runs: SweepRuns, sweep_dir: str | Path) -> AblationTable:
    """One row per configuration present in the sweep; no files are written."""
    all_runs = runs.finished + runs.unfinished + list(runs.diverged)
    study_seeds = sorted({run.seed for run in all_runs if run.seed is not None})
    sweep_planned = max((run.planned_seeds for run in all_runs if run.planned_seeds), default=None)
    reference = [run.metrics["test_acc"] for run in runs.finished if run.name == REFERENCE]
    rows = []
    for name in configuration_order(run.name for run in all_runs):
        finished = [run for run in runs.finished if run.name == name]
        unfinished = [run for run in runs.unfinished if run.name == name]
        diverged = [run for run in runs.diverged if run.name == name]
        jobs = finished + unfinished + diverged
        planned = max((r.planned_seeds for r in jobs if r.planned_seeds), default=sweep_planned)
        if planned is not None:  # an explicit seed list (seed=0,1,2,3,4) beats ablation.seeds
            planned = max(planned, len(study_seeds))
        failed, absent, n_missing = missing_runs(finished, unfinished, planned, study_seeds, diverged)
        accuracies = [run.metrics["test_acc"] for run in finished]
        acc_mean, acc_std = mean_std(accuracies)
        rows.append(
            AblationRow(
                name=name,
                label=LABELS.get(name, name),
                seeds=tuple(run.seed for run in finished),
                planned=planned,
                n_missing=n_missing,
                unfinished=failed,
                absent_seeds=absent,
                acc_mean=acc_mean,
                acc_std=acc_std,
                report=REPORT_TEST_ACC.get(name),
                difference=None if name == REFERENCE else welch_difference(accuracies, reference),
                best_epoch_mean=mean_of(finished, "best_epoch"),
                train_seconds_mean=mean_of(finished, "train_seconds"),
                runs=tuple(finished),
                diverged=tuple(diverged),
            )
        )
    return AblationTable(sweep_dir=Path(sweep_dir), rows=rows)


# --- rendering ------------------------------------------------------------------------------------


def percent(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:+.2f}" if signed else f"{100 * value:.2f}"


def format_p(p_value: float | None) -> str:
    if p_value is None or not math.isfinite(p_value):
        return "n/a"
    return "<0.001" if p_value < 0.001 else f"{p_value:.3f}"


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return f"{seconds:.0f} s" if seconds < 100 else f"{seconds / 60:.1f} min"


def format_seed(seed: int | None) -> str:
    return "?" if seed is None else str(seed)


def markdown_row(row: AblationRow) -> str:
    accuracy = "n/a" if row.acc_mean is None else f"{percent(row.acc_mean)} ± {percent(row.acc_std)}"
    diff = row.difference
    ci = diff.ci95 if diff else None
    cells = [
        row.label,
        accuracy,
        percent(row.report),
        percent(diff.delta, signed=True) if diff else "n/a",
        format_p(diff.p_value) if diff else "n/a",
        f"[{percent(ci[0], signed=True)}, {percent(ci[1], signed=True)}]" if ci else "n/a",
        "n/a" if row.best_epoch_mean is None else f"{row.best_epoch_mean:.1f}",
        format_seconds(row.train_seconds_mean),
        f"{row.n}/{row.planned}" if row.planned else str(row.n),
    ]
    return "| " + " | ".join(cells) + " |"


def describe_missing(row: AblationRow) -> str:
    """`seed 1 (job 4/ unfinished), seed 2 (no job), 1 more (seed unknown)` for one configuration."""
    parts = [f"seed {format_seed(run.seed)} (job {run.directory.name}/ unfinished)" for run in row.unfinished]
    parts += [f"seed {seed} (no job)" for seed in row.absent_seeds]
    unknown = row.n_missing - len(row.unfinished) - len(row.absent_seeds)
    if unknown > 0:
        parts.append(f"{unknown} more (seed{'s' if unknown > 1 else ''} unknown)")
    return ", ".join(parts)


def describe_diverged(row: AblationRow) -> str:
    """`seed 1 (job 4/, loss nan at step 17)` for each diverged run of one configuration."""
    parts = []
    for run in row.diverged:
        where = (run.metrics or {}).get("divergence") or {}
        detail = f", loss {where.get('loss')} at step {where.get('step')}" if where else ""
        parts.append(f"seed {format_seed(run.seed)} (job {run.directory.name}/{detail})")
    return ", ".join(parts)


def render_markdown(table: AblationTable) -> str:
    """The table in %, a legend, the missing runs, and how the confusion matrices are combined."""
    lines = [
        f"Test accuracy per configuration over seeds, sweep {table.sweep_dir}",
        "",
        "| configuration | test acc. (%) | report (%) | Δ vs Improved (pp) | p (Welch) | 95% CI of Δ (pp) "
        "| best epoch | train time | n |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *(markdown_row(row) for row in table.rows),
        "",
        "Test accuracy is the mean ± sample standard deviation over seeds; Δ is its difference to the "
        "Improved mean, with the p-value of Welch's t-test and a 95% confidence interval with "
        "Welch-Satterthwaite degrees of freedom (n/a where either side has fewer than 2 finished seeds). "
        "Best epoch and train time are means over seeds; n is finished/planned runs.",
        "",
    ]
    missing = [f"{row.label}: {describe_missing(row)}" for row in table.rows if row.n_missing]
    lines.append(f"Missing runs: {'; '.join(missing)}." if missing else "Missing runs: none.")
    diverged = [f"{row.label}: {describe_diverged(row)}" for row in table.rows if row.diverged]
    lines.append(
        f"Diverged runs (non-finite training loss; not in the means, not missing): {'; '.join(diverged)}."
        if diverged else "Diverged runs: none."
    )  # fmt: skip
    lines.append("")
    if any(row.n for row in table.rows):
        lines.append(
            f"Confusion matrices ({CONFUSION_FILE}) are summed over each configuration's finished seeds and "
            f"shown row-normalized: each cell is the % of that true class's test images."
        )
    else:
        lines.append(f"No run finished, so {CURVES_FILE} and {CONFUSION_FILE} were not drawn.")
    return "\n".join(lines) + "\n"


def csv_value(value: Any) -> str:
    """Empty for n/a; floats to 10 significant digits, which drops float noise like 0.010000000000000009."""
    if value is None:
        return ""
    return f"{value:.10g}" if isinstance(value, float) else str(value)


def csv_row(row: AblationRow) -> dict[str, str]:
    diff = row.difference
    ci = diff.ci95 if diff else None
    missing_seeds = [format_seed(run.seed) for run in row.unfinished] + [str(seed) for seed in row.absent_seeds]
    values = {
        "configuration": row.name,
        "label": row.label,
        "n_finished": row.n,
        "seeds_planned": row.planned,
        "n_missing": row.n_missing,
        "finished_seeds": ";".join(format_seed(seed) for seed in row.seeds),
        "missing_seeds": ";".join(missing_seeds),
        "n_diverged": len(row.diverged),
        "diverged_seeds": ";".join(format_seed(run.seed) for run in row.diverged),
        "test_acc_mean": row.acc_mean,
        "test_acc_std": row.acc_std,
        "report_test_acc": row.report,
        "delta_vs_improved": diff.delta if diff else None,
        "delta_p_value": diff.p_value if diff else None,
        "delta_ci95_low": ci[0] if ci else None,
        "delta_ci95_high": ci[1] if ci else None,
        "best_epoch_mean": row.best_epoch_mean,
        "train_seconds_mean": row.train_seconds_mean,
    }
    return {column: csv_value(values[column]) for column in CSV_COLUMNS}


def write_csv(table: AblationTable, path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(csv_row(row) for row in table.rows)


# --- figures ------------------------------------------------------------------------------------


def epoch_curve(runs: Sequence[Run], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Epochs, mean, min and max of a history key; each epoch averages the seeds that reached it."""
    by_epoch: dict[int, list[float]] = {}
    for run in runs:
        for entry in (run.metrics or {}).get("history") or []:
            if isinstance(entry, dict) and is_number(entry.get("epoch")) and is_number(entry.get(key)):
                by_epoch.setdefault(int(entry["epoch"]), []).append(float(entry[key]))
    epochs = sorted(by_epoch)
    values = [by_epoch[epoch] for epoch in epochs]
    return (
        np.array(epochs, dtype=int),
        np.array([np.mean(v) for v in values]),
        np.array([np.min(v) for v in values]),
        np.array([np.max(v) for v in values]),
    )


def plot_curves(rows: Sequence[AblationRow], path: Path) -> None:
    """Loss (top) and accuracy (bottom) per configuration: mean over seeds with a min-max band."""
    figure = Figure(figsize=(3.2 * len(rows) + 0.8, 6.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, len(rows), sharey="row", squeeze=False)
    for column, row in enumerate(rows):
        for line, (metric, scale, ylabel) in enumerate([("loss", 1.0, "loss"), ("acc", 100.0, "accuracy (%)")]):
            ax = axes[line, column]
            for split, color in (("train", "C0"), ("val", "C1")):
                epochs, mean, low, high = epoch_curve(row.runs, f"{split}_{metric}")
                if len(epochs):
                    ax.plot(epochs, mean * scale, color=color, label=f"{split} (mean)")
                    ax.fill_between(epochs, low * scale, high * scale, color=color, alpha=0.2, linewidth=0)
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if line == 0:
                ax.set_title(f"{row.label} (n={row.n})")
            else:
                ax.set_xlabel("epoch")
            if column == 0:
                ax.set_ylabel(ylabel)
                ax.legend(fontsize=8)
    figure.suptitle("Train and validation curves: mean over seeds, band = min-max\n"
                    "(each epoch averages the seeds that reached it)")  # fmt: skip
    figure.savefig(path, dpi=100)


def summed_confusion(runs: Sequence[Run]) -> np.ndarray | None:
    """The test confusion counts (rows = true class) summed over seeds; None if no run has one."""
    matrices = []
    for run in runs:
        matrix = np.asarray((run.metrics or {}).get("test_confusion") or [], dtype=np.int64)
        if matrix.ndim == 2 and matrix.shape[0] == matrix.shape[1] and matrix.size:
            matrices.append(matrix)
        else:
            log.warning("%s has no square test_confusion: left out of the confusion matrix", run.directory)
    shapes = {matrix.shape for matrix in matrices}
    if len(shapes) != 1:
        if len(shapes) > 1:
            log.warning("confusion matrices of different shapes %s: not summed", sorted(shapes))
        return None
    return np.sum(matrices, axis=0)


def row_percent(counts: np.ndarray) -> np.ndarray:
    """Each row as % of its total, so classes compare whatever the number of seeds."""
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(100.0 * counts, totals, out=np.zeros(counts.shape), where=totals > 0)


def class_names(runs: Sequence[Run], size: int) -> list[str]:
    names = next((run.metrics.get("classes") for run in runs if run.metrics and run.metrics.get("classes")), None)
    if isinstance(names, list) and len(names) == size:
        return [str(name) for name in names]
    return list(CIFAR10_CLASSES) if size == len(CIFAR10_CLASSES) else [str(i) for i in range(size)]


def plot_confusion(rows: Sequence[AblationRow], path: Path) -> None:
    """One row-normalized confusion matrix per configuration, summed over its seeds, % in each cell."""
    columns = min(3, len(rows))
    lines = math.ceil(len(rows) / columns)
    figure = Figure(figsize=(4.3 * columns, 4.3 * lines + 0.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(lines, columns, squeeze=False)
    for ax in axes.flat[len(rows):]:
        ax.set_visible(False)
    for ax, row in zip(axes.flat, rows):
        counts = summed_confusion(row.runs)
        if counts is None:
            ax.set_title(f"{row.label}\nno confusion matrix recorded", fontsize=9)
            ax.axis("off")
            continue
        shares = row_percent(counts)
        ax.imshow(shares, cmap="Blues", vmin=0, vmax=100)
        for (true, predicted), share in np.ndenumerate(shares):
            ax.text(predicted, true, f"{share:.0f}", ha="center", va="center", fontsize=6,
                    color="white" if share > 50 else "black")  # fmt: skip
        names = class_names(row.runs, len(counts))
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
        ax.set_title(f"{row.label}\n{row.n} seed(s), {int(counts.sum()):,} test predictions", fontsize=9)
    figure.suptitle("Test confusion matrices, summed over seeds, row-normalized (% of each true class)")
    figure.savefig(path, dpi=100)


# --- entry points ---------------------------------------------------------------------------------


def write_outputs(table: AblationTable) -> None:
    """ablation.csv and ablation.md always; the figures only when some run finished."""
    out = table.sweep_dir
    finished_rows = [row for row in table.rows if row.n]
    try:
        write_csv(table, out / CSV_FILE)
        table.files["csv"] = out / CSV_FILE
        (out / MARKDOWN_FILE).write_text(render_markdown(table))
        table.files["markdown"] = out / MARKDOWN_FILE
        if finished_rows:
            plot_curves(finished_rows, out / CURVES_FILE)
            table.files["curves"] = out / CURVES_FILE
            plot_confusion(finished_rows, out / CONFUSION_FILE)
            table.files["confusion"] = out / CONFUSION_FILE
    except OSError as exc:
        raise SweepError(
            f"cannot write the ablation summary into {out} ({exc.strerror or exc}). "
            f"Fix: make the directory writable, or aggregate a writable copy of it."
        ) from exc


def aggregate(sweep_dir: str | Path) -> AblationTable:
    """Read the sweep, build the table, and write ablation.csv/.md, curves.png and confusion.png into it."""
    runs = collect_runs(sweep_dir)
    table = build_table(runs, sweep_dir)
    write_outputs(table)
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m cifar_lightning.ablation SWEEP_DIR`: aggregate the sweep and print its table."""
    parser = argparse.ArgumentParser(
        prog="python -m cifar_lightning.ablation",
        description="Aggregate a Hydra ablation multirun into ablation.csv, ablation.md, curves.png and "
        "confusion.png (written into the sweep directory), and print the Markdown table.",
    )
    parser.add_argument("sweep_dir", type=Path, help="the multirun directory, e.g. logs/train/multiruns/<date>_<time>")
    args = parser.parse_args(argv)
    try:
        table = aggregate(args.sweep_dir)
    except CifarLightningError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    print(render_markdown(table), end="")
    print(f"\nWrote {', '.join(path.name for path in table.files.values())} into {table.sweep_dir}")
    return 0


class AggregateAblation(Callback):
    """Hydra callback: aggregate the sweep when a multirun ends.

    It never raises: a failed summary must not hide or fail the jobs that finished; the error is
    logged with the command that retries it.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = None
        try:
            sweep_dir = Path(config.hydra.sweep.dir)
            table = aggregate(sweep_dir)
        except Exception as exc:  # noqa: BLE001 - any failure here must only be reported
            retry = f"python -m cifar_lightning.ablation {sweep_dir or '<sweep_dir>'}"
            if isinstance(exc, CifarLightningError):
                log.error("ablation summary not written: %s (retry: %s)", exc, retry)
            else:
                log.exception("ablation summary failed; the jobs' results are untouched (retry: %s)", retry)
            return
        log.info("ablation summary of %d configurations (%d runs missing, %d diverged) written to %s",
                 len(table.rows), table.n_missing, table.n_diverged,
                 ", ".join(str(path) for path in table.files.values()))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
