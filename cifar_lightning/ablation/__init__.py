"""Aggregate ablation sweeps into Table 1: per configuration the mean and spread over seeds and the difference
to the improved recipe (Welch), since one run per configuration cannot tell an effect from seed noise."""

from cifar_lightning.ablation.plots import epoch_curve, summed_confusion
from cifar_lightning.ablation.render import CSV_COLUMNS, render_markdown
from cifar_lightning.ablation.summary import AggregateAblation, aggregate
from cifar_lightning.ablation.sweep import SweepError, collect_runs
from cifar_lightning.ablation.table import REPORT_TEST_ACC, build_table

__all__ = [
    "CSV_COLUMNS",
    "REPORT_TEST_ACC",
    "AggregateAblation",
    "SweepError",
    "aggregate",
    "build_table",
    "collect_runs",
    "epoch_curve",
    "render_markdown",
    "summed_confusion",
]
