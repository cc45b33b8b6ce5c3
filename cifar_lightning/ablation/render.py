"""The table as text: ablation.md (Markdown, percentages, the missing and diverged runs) and ablation.csv
(fractions, one row per configuration)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cifar_lightning.ablation.sweep import Run
from cifar_lightning.ablation.table import AblationRow, AblationTable
from cifar_lightning.tables import markdown_table, write_csv

CSV_FILE, MARKDOWN_FILE, CURVES_FILE, CONFUSION_FILE = "ablation.csv", "ablation.md", "curves.png", "confusion.png"


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


def job_name(run: Run, table: AblationTable) -> str:
    """`4/` for a job of the only sweep; `<sweep>/4/` when several sweeps were read, so it names one job."""
    job = f"{run.directory.name}/"
    return job if len(table.sweep_dirs) < 2 else f"{run.directory.parent.name}/{job}"


def signed_interval(ci: tuple[float, float] | None) -> str:
    return f"[{percent(ci[0], signed=True)}, {percent(ci[1], signed=True)}]" if ci else "n/a"


#: ablation.md's columns and each row's cell (percentages).
MARKDOWN_FIELDS: dict[str, Callable[[AblationRow], str]] = {
    "configuration": lambda row: row.label,
    "test acc. (%)": lambda row: "n/a" if row.acc_mean is None else f"{percent(row.acc_mean)} ± {percent(row.acc_std)}",
    "report (%)": lambda row: percent(row.report),
    "Δ vs Improved (pp)": lambda row: percent(row.difference and row.difference.delta, signed=True),
    "p (Welch)": lambda row: format_p(row.difference and row.difference.p_value),
    "95% CI of Δ (pp)": lambda row: signed_interval(row.difference and row.difference.ci95),
    "best epoch": lambda row: "n/a" if row.best_epoch_mean is None else f"{row.best_epoch_mean:.1f}",
    "train time": lambda row: format_seconds(row.train_seconds_mean),
    "n": lambda row: f"{row.n}/{row.planned}" if row.planned else str(row.n),
}


def describe_missing(row: AblationRow, table: AblationTable) -> str:
    """`seed 1 (job 4/ unfinished), seed 2 (no job), 1 more (seed unknown)` for one configuration."""
    parts = [f"seed {format_seed(run.seed)} (job {job_name(run, table)} unfinished)" for run in row.unfinished]
    parts += [f"seed {seed} (no job)" for seed in row.absent_seeds]
    unknown = row.n_missing - len(row.unfinished) - len(row.absent_seeds)
    if unknown > 0:
        parts.append(f"{unknown} more (seed{'s' if unknown > 1 else ''} unknown)")
    return ", ".join(parts)


def describe_diverged(row: AblationRow, table: AblationTable) -> str:
    """`seed 1 (job 4/, loss nan at step 17)` for each diverged run of one configuration."""
    parts = []
    for run in row.diverged:
        where = (run.metrics or {}).get("divergence") or {}
        detail = f", loss {where.get('loss')} at step {where.get('step')}" if where else ""
        parts.append(f"seed {format_seed(run.seed)} (job {job_name(run, table)}{detail})")
    return ", ".join(parts)


def sources(table: AblationTable) -> str:
    """The sweep directories read, so the table says where its numbers come from: relative to the folder the
    command ran in, so that a table copied into docs names no machine's absolute path."""
    shown = [os.path.relpath(path) for path in table.sweep_dirs]
    return f"sweep {shown[0]}" if len(shown) == 1 else f"{len(shown)} sweeps: {', '.join(shown)}"


def render_markdown(table: AblationTable) -> str:
    """The table in %, a legend, the missing runs, and how the confusion matrices are combined."""
    cells = [[cell(row) for cell in MARKDOWN_FIELDS.values()] for row in table.rows]
    lines = [
        f"Test accuracy per configuration over seeds, {sources(table)}",
        "",
        markdown_table(list(MARKDOWN_FIELDS), cells).rstrip(),
        "",
        "Test accuracy is the mean ± sample standard deviation over seeds; Δ is its difference to the "
        "Improved mean, with the p-value of Welch's t-test and a 95% confidence interval with "
        "Welch-Satterthwaite degrees of freedom (n/a where either side has fewer than 2 finished seeds). "
        "Best epoch and train time are means over seeds; n is finished/planned runs.",
        "",
    ]
    missing = [f"{row.label}: {describe_missing(row, table)}" for row in table.rows if row.n_missing]
    lines.append(f"Missing runs: {'; '.join(missing)}." if missing else "Missing runs: none.")
    diverged = [f"{row.label}: {describe_diverged(row, table)}" for row in table.rows if row.diverged]
    lines.append(
        f"Diverged runs (non-finite training loss; not in the means, not missing): {'; '.join(diverged)}."
        if diverged
        else "Diverged runs: none."
    )
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


#: ablation.csv's columns and how each row's value is read (fractions; None, n/a, is an empty field).
CSV_FIELDS: dict[str, Callable[[AblationRow], Any]] = {
    "configuration": lambda row: row.name,
    "label": lambda row: row.label,
    "n_finished": lambda row: row.n,
    "seeds_planned": lambda row: row.planned,
    "n_missing": lambda row: row.n_missing,
    "finished_seeds": lambda row: ";".join(format_seed(seed) for seed in row.seeds),
    "missing_seeds": lambda row: ";".join(
        [format_seed(run.seed) for run in row.unfinished] + [str(seed) for seed in row.absent_seeds]
    ),
    "n_diverged": lambda row: len(row.diverged),
    "diverged_seeds": lambda row: ";".join(format_seed(run.seed) for run in row.diverged),
    "test_acc_mean": lambda row: row.acc_mean,
    "test_acc_std": lambda row: row.acc_std,
    "report_test_acc": lambda row: row.report,
    "delta_vs_improved": lambda row: row.difference and row.difference.delta,
    "delta_p_value": lambda row: row.difference and row.difference.p_value,
    "delta_ci95_low": lambda row: row.difference and row.difference.ci95 and row.difference.ci95[0],
    "delta_ci95_high": lambda row: row.difference and row.difference.ci95 and row.difference.ci95[1],
    "best_epoch_mean": lambda row: row.best_epoch_mean,
    "train_seconds_mean": lambda row: row.train_seconds_mean,
}
CSV_COLUMNS = tuple(CSV_FIELDS)


def write_tables(table: AblationTable, out_dir: Path) -> None:
    """ablation.csv and ablation.md into out_dir, recorded in table.files."""
    rows = [[csv_value(value(row)) for value in CSV_FIELDS.values()] for row in table.rows]
    table.files["csv"] = write_csv(out_dir / CSV_FILE, CSV_COLUMNS, rows)
    (out_dir / MARKDOWN_FILE).write_text(render_markdown(table))
    table.files["markdown"] = out_dir / MARKDOWN_FILE
