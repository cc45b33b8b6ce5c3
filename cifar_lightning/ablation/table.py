"""Table 1 as data: one row per configuration beside the report's figure, the runs that count and the missing
ones (planned: max(ablation.seeds, the distinct seeds of all the sweeps); a diverged run is not missing)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cifar_lightning.ablation.stats import Difference, mean_std, welch_difference
from cifar_lightning.ablation.sweep import Run, SweepRuns
from cifar_lightning.errors import is_number

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
    """The aggregated sweeps: one row per configuration, the sweep directories read, and the files written."""

    sweep_dirs: tuple[Path, ...]
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
    """Unfinished jobs, seeds that other configurations ran but this one has no job for, and how many runs
    are missing (with a plan: planned minus finished and diverged, at least the unfinished jobs)."""
    done = {run.seed for run in finished} | {run.seed for run in diverged}
    failed = tuple(run for run in unfinished if run.seed is None or run.seed not in done)
    tried = done | {run.seed for run in failed}
    absent = [seed for seed in study_seeds if seed not in tried]
    if planned is None:
        return failed, tuple(absent), len(failed) + len(absent)
    n_missing = max(planned - len(finished) - len(diverged), len(failed))
    return failed, tuple(absent[: max(n_missing - len(failed), 0)]), n_missing


def mean_of(runs: Iterable[Run], key: str) -> float | None:
    """Mean of a metrics.json number over the runs that have it; None when none has."""
    values = [run.metrics[key] for run in runs if run.metrics and is_number(run.metrics.get(key), finite=True)]
    return float(np.mean(values)) if values else None


def build_table(runs: SweepRuns) -> AblationTable:
    """One row per configuration present in the sweeps; no files are written."""
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
    return AblationTable(sweep_dirs=runs.sweep_dirs, rows=rows)
