"""Aggregate ablation sweeps (the report's configurations x several seeds) into Table 1: each
configuration's mean and spread over seeds, its difference to the improved recipe (Welch's t-test and
a confidence interval), learning curves and confusion matrix, since one run per configuration cannot
tell an effect from seed noise. `python -m cifar_lightning.ablation SWEEP_DIR [...] [--out DIR]`, or
the AggregateAblation Hydra callback when a multirun ends.
"""

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
