"""Aggregation end to end (read the sweeps, build the table, write its files): `aggregate`, behind the CLI
and AggregateAblation, the Hydra callback that runs it when a multirun ends."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cifar_lightning.ablation.plots import plot_confusion, plot_curves
from cifar_lightning.ablation.render import CONFUSION_FILE, CURVES_FILE, write_tables
from cifar_lightning.ablation.sweep import SweepError, as_sweep_dirs, collect_runs
from cifar_lightning.ablation.table import AblationTable, build_table
from cifar_lightning.errors import CifarLightningError

log = logging.getLogger(__name__)


def aggregate(sweep_dirs: str | Path | Sequence[str | Path], out_dir: str | Path | None = None) -> AblationTable:
    """Read one or several sweeps as one table and write its files into out_dir (default: the only sweep)."""
    paths = as_sweep_dirs(sweep_dirs)
    if out_dir is None and len(paths) > 1:  # writing into one sweep would overwrite its own summary
        raise SweepError(
            f"{len(paths)} sweep directories given ({', '.join(map(str, paths))}) but no output directory: "
            f"the combined table belongs to none of them. Fix: add --out DIR, e.g. --out logs/train/ablation_table."
        )
    out = paths[0] if out_dir is None else Path(out_dir)
    table = build_table(collect_runs(paths))
    finished_rows = [row for row in table.rows if row.n]  # the figures only when some run finished
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_tables(table, out)
        if finished_rows:
            table.files["curves"] = plot_curves(finished_rows, out / CURVES_FILE)
            table.files["confusion"] = plot_confusion(finished_rows, out / CONFUSION_FILE)
    except OSError as exc:
        raise SweepError(
            f"cannot write the ablation summary into {out} ({exc.strerror or exc}). "
            f"Fix: make the directory writable, or write the summary elsewhere with --out DIR."
        ) from exc
    return table


class AggregateAblation(Callback):
    """Hydra callback: aggregate the sweep when a multirun ends; it only logs failures, never fails the jobs."""

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
        log.info(
            "ablation summary of %d configurations (%d runs missing, %d diverged) written to %s",
            len(table.rows),
            table.n_missing,
            table.n_diverged,
            ", ".join(str(path) for path in table.files.values()),
        )
