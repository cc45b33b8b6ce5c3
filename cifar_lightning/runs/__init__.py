"""The run directory: what train.py writes where, and the one place that reads and writes it.

    <run>/config.yaml              the run's resolved config (rewritten by a resume, see cifar_lightning/resume.py)
    <run>/checkpoints/best.ckpt    lowest validation loss
    <run>/checkpoints/last.ckpt    the latest state: every epoch end, and every n steps if asked; without a
                                   validation split (data.val_fraction=0) the final weights, the run's model
    <run>/tensorboard/             TensorBoard events (a resume appends to the same folder)
    <run>/metrics.json             the record (METRICS_SCHEMA_VERSION, `status`), written once training ends
    <run>/train.log                the log (Hydra's file handler; a resume appends)
    <run>/.hydra/                  Hydra's copy of the config and overrides; a resume's own under .hydra/resume-<time>/

Everything else asks this module for these paths (tests/test_runs.py checks that the configs agree).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from yaml import YAMLError

from cifar_lightning.errors import CifarLightningError
from cifar_lightning.runs.record import COMPLETED, DIVERGED, PRUNED, RunRecord

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
LOG_FILE = "train.log"  # Hydra names it after the job: train.py -> train.log
HYDRA_DIR = ".hydra"
OVERRIDES_FILE = "overrides.yaml"  # in HYDRA_DIR: the command line's overrides as written

#: Version of metrics.json's layout (its fields: runs/record.py's RunRecord); files of any other version are refused.
METRICS_SCHEMA_VERSION = 4
#: metrics.json `status` (see RunRecord.status).
STATUSES = (COMPLETED, DIVERGED, PRUNED)


class RunDirError(CifarLightningError):
    """A run directory or one of its files is missing or unreadable."""


@dataclass(frozen=True)
class RunDir:
    """The paths of one run directory (nothing is created or checked here)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).expanduser())

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> RunDir:
        """The run directory a checkpoint file lies in (<run>/checkpoints/<file>)."""
        return cls(Path(checkpoint).expanduser().resolve().parent.parent)

    # The paths inside it (see the layout above).
    config = property(lambda self: self.root / CONFIG_FILE)
    checkpoints = property(lambda self: self.root / "checkpoints")
    best_checkpoint = property(lambda self: self.checkpoints / "best.ckpt")
    last_checkpoint = property(lambda self: self.checkpoints / "last.ckpt")
    tensorboard = property(lambda self: self.root / "tensorboard")
    metrics = property(lambda self: self.root / METRICS_FILE)
    log = property(lambda self: self.root / LOG_FILE)
    hydra = property(lambda self: self.root / HYDRA_DIR)

    def kept_checkpoint(self) -> Path:
        """The run's model: best.ckpt, or last.ckpt (the final weights) for a run trained without a validation split."""
        if self.best_checkpoint.is_file() or not self.last_checkpoint.is_file():
            return self.best_checkpoint
        metrics = readable_metrics(self)
        no_validation = metrics.get("status") == COMPLETED and metrics.get("best_checkpoint") is None
        return self.last_checkpoint if no_validation else self.best_checkpoint


def _resumable(resume: Any) -> RunDir | None:
    """The run `resume` names when it holds config.yaml and checkpoints/last.ckpt (the resume checks them)."""
    run = RunDir(str(resume)) if resume is not None else None
    return run if run is not None and run.config.is_file() and run.last_checkpoint.is_file() else None


def _json_safe(value: Any) -> Any:
    """NaN and infinities as strings ("nan", "inf"): JSON has no such numbers, and a diverged run has them."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def metrics_record(metrics: RunRecord | dict[str, Any]) -> dict[str, Any]:
    """metrics.json's content: `schema_version` first, then the record's fields, values made JSON-safe."""
    fields = metrics.fields() if isinstance(metrics, RunRecord) else dict(metrics)
    if fields.get("status") not in STATUSES:
        raise ValueError(f"metrics need a status in {STATUSES}, got {fields.get('status')!r}")
    return _json_safe({"schema_version": METRICS_SCHEMA_VERSION, **fields})


def write_metrics(run: RunDir, metrics: RunRecord | dict[str, Any]) -> dict[str, Any]:
    """Write metrics.json atomically (beside, then renamed: a killed run leaves the old file or the new one)."""
    record = metrics_record(metrics)
    run.root.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".metrics-", suffix=".json", dir=run.root)
    try:
        with os.fdopen(handle, "w") as file:
            file.write(json.dumps(record, indent=2) + "\n")
        os.replace(temporary, run.metrics)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return record


def read_metrics(run: RunDir) -> dict[str, Any]:
    """metrics.json as a dict; RunDirError if it is missing, unreadable or of another schema_version."""
    path = run.metrics
    try:
        metrics = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise RunDirError(f"{path} does not exist: the run has not finished (or never started)") from exc
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{path} cannot be read ({type(exc).__name__}: {exc})") from exc
    if not isinstance(metrics, dict):
        raise RunDirError(f"{path} holds a JSON {type(metrics).__name__}, not an object")
    version = metrics.get("schema_version")
    if version != METRICS_SCHEMA_VERSION:
        raise RunDirError(
            f"{path} has schema_version {version!r}, but this code reads version {METRICS_SCHEMA_VERSION} only: "
            f"read it with the cifar-lightning release that wrote it, or train the run again"
        )
    return metrics


def readable_metrics(run: RunDir) -> dict[str, Any]:
    """metrics.json as a dict, or {} when it is missing or unreadable."""
    try:
        return read_metrics(run)
    except RunDirError:
        return {}


def history(run: RunDir) -> list[dict[str, Any]]:
    """The per-epoch history of the run's metrics.json; [] when there is none or it is unreadable."""
    rows = readable_metrics(run).get("history")
    return rows if isinstance(rows, list) and all(isinstance(row, dict) for row in rows) else []


def hydra_run_dir(resume: Any, new_run_dir: str) -> str:
    """Hydra's run directory: the run `resume` names if resumable, else a new one (where the resume then fails)."""
    run = _resumable(resume)
    return str(run.root.resolve()) if run else new_run_dir


def hydra_output_subdir(resume: Any, stamp: str) -> str:
    """Hydra's subfolder for its own files: .hydra, or .hydra/resume-<stamp> inside a resumed run."""
    return f"{HYDRA_DIR}/resume-{stamp}" if _resumable(resume) else HYDRA_DIR


def run_overrides(run: RunDir) -> list[str] | None:
    """The run's command-line overrides as written (`optim.lr=0.1`), from Hydra's .hydra/overrides.yaml; None
    when it is missing or unreadable."""
    try:
        overrides = OmegaConf.to_container(OmegaConf.load(run.hydra / OVERRIDES_FILE))
    except (OSError, YAMLError, OmegaConfBaseException):
        return None
    return [str(item) for item in overrides] if isinstance(overrides, list) else None
