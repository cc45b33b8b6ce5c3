"""The table's figures, curves.png and confusion.png: this module reduces the runs to what is drawn (means and
min-max bands over seeds, confusion counts summed over seeds); cifar_lightning.figures draws it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cifar_lightning.ablation.sweep import Run
from cifar_lightning.ablation.table import AblationRow
from cifar_lightning.data import CIFAR10_CLASSES
from cifar_lightning.errors import is_number
from cifar_lightning.figures import CURVE_METRICS, ConfusionPanel, Curve, plot_confusion_grid, plot_curve_grid

log = logging.getLogger(__name__)


def epoch_curve(runs: Sequence[Run], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Epochs, mean, min and max of a history key; each epoch averages the seeds that reached it."""
    by_epoch: dict[int, list[float]] = {}
    for run in runs:
        for entry in (run.metrics or {}).get("history") or []:
            if isinstance(entry, dict) and is_number(entry.get("epoch")) and is_number(entry.get(key), finite=True):
                by_epoch.setdefault(int(entry["epoch"]), []).append(float(entry[key]))
    epochs = sorted(by_epoch)
    mean, low, high = (np.array([reduce(by_epoch[epoch]) for epoch in epochs]) for reduce in (np.mean, np.min, np.max))
    return np.array(epochs, dtype=int), mean, low, high


def seed_curves(runs: Sequence[Run], metric: str) -> list[Curve]:
    """Train and validation curves of one metric over the seeds: the mean, banded by min and max."""
    curves = []
    for split in ("train", "val"):
        epochs, mean, low, high = epoch_curve(runs, f"{split}_{metric}")
        curves.append(Curve(f"{split} (mean)", epochs, mean, (low, high)))
    return curves


def plot_curves(rows: Sequence[AblationRow], path: Path) -> Path:
    """Loss (top) and accuracy (bottom) per configuration: mean over seeds with a min-max band."""
    columns = {
        f"{row.label} (n={row.n})": {metric: seed_curves(row.runs, metric) for metric, _, _ in CURVE_METRICS}
        for row in rows
    }
    title = (
        "Train and validation curves: mean over seeds, band = min-max\n(each epoch averages the seeds that reached it)"
    )
    return plot_curve_grid(columns, title, path)


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


def class_names(runs: Sequence[Run], size: int) -> list[str]:
    """The class names metrics.json recorded; CIFAR-10's for older runs with 10 classes; else numbers."""
    names = next((run.metrics.get("classes") for run in runs if run.metrics and run.metrics.get("classes")), None)
    if isinstance(names, list) and len(names) == size:
        return [str(name) for name in names]
    return list(CIFAR10_CLASSES) if size == len(CIFAR10_CLASSES) else [str(i) for i in range(size)]


def confusion_panel(row: AblationRow) -> ConfusionPanel:
    counts = summed_confusion(row.runs)
    if counts is None:
        return ConfusionPanel(row.label, None, [])
    title = f"{row.label}\n{row.n} seed(s), {int(counts.sum()):,} test predictions"
    return ConfusionPanel(title, counts, class_names(row.runs, len(counts)))


def plot_confusion(rows: Sequence[AblationRow], path: Path) -> Path:
    """One row-normalized confusion matrix per configuration, summed over its seeds, % in each cell."""
    title = "Test confusion matrices, summed over seeds, row-normalized (% of each true class)"
    return plot_confusion_grid([confusion_panel(row) for row in rows], title, path)
