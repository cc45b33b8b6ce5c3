"""Aggregate ablation sweeps (the report's seven configurations x several seeds) into Table 1.

A single run per configuration cannot tell a real effect from seed-to-seed noise, so each
configuration gets its mean and spread over seeds, the difference to the improved recipe with a
Welch t-test and a confidence interval, its learning curves and its confusion matrix:

    python -m cifar_lightning.ablation logs/train/multiruns/<date>_<time>
    python -m cifar_lightning.ablation SWEEP_SEED0 SWEEP_SEED1 SWEEP_SEED2 --out DIR   # one table of several

writes ablation.csv, ablation.md, curves.png and confusion.png (into the sweep directory, or DIR) and
prints the Markdown table. AggregateAblation, a Hydra callback, does the same when a multirun ends.

sweep.py reads the sweeps into runs, stats.py holds the statistics, table.py builds the rows,
render.py writes the Markdown and CSV, plots.py the figures, summary.py ties them together (aggregate,
the callback), __main__.py is the command line.
"""

from cifar_lightning.ablation.plots import epoch_curve, summed_confusion
from cifar_lightning.ablation.render import CSV_COLUMNS, render_markdown
from cifar_lightning.ablation.summary import AggregateAblation, aggregate
from cifar_lightning.ablation.sweep import Run, SweepError, SweepRuns, collect_runs
from cifar_lightning.ablation.table import LABELS, REFERENCE, REPORT_TEST_ACC, AblationRow, AblationTable, build_table

__all__ = [
    "CSV_COLUMNS",
    "LABELS",
    "REFERENCE",
    "REPORT_TEST_ACC",
    "AblationRow",
    "AblationTable",
    "AggregateAblation",
    "Run",
    "SweepError",
    "SweepRuns",
    "aggregate",
    "build_table",
    "collect_runs",
    "epoch_curve",
    "render_markdown",
    "summed_confusion",
]
