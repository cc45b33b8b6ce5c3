"""metrics.json, declared once: every field of a run's record, in the file's order, and how a finished fit fills it."""

from __future__ import annotations

import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

COMPLETED, DIVERGED, PRUNED = "completed", "diverged", "pruned"
VERSIONED_PACKAGES = (
    "torch",
    "torchvision",
    "lightning",
    "hydra-core",
    "omegaconf",
    "torchmetrics",
    "numpy",
    "cifar-lightning",
)


@dataclass
class RunRecord:
    """One run's metrics.json (after `schema_version`). Epochs are counted from 1; accuracies are fractions."""

    #: completed, diverged (a non-finite training loss) or pruned (a search trial its pruner stopped).
    status: str
    #: On the 10,000 test images, with the run's test-time augmentation (test_tta); test_acc_plain without.
    test_acc: float | None = None
    test_acc_plain: float | None = None
    test_tta: int = 0
    test_loss: float | None = None
    #: The best validated epoch (the first of equal losses, as ModelCheckpoint picks it).
    best_val_loss: float | None = None
    best_val_acc: float | None = None
    best_epoch: int | None = None
    epochs_run: int = 0
    stopped_early: bool = False
    #: Over all of a resumed run's processes, up to their last checkpoints.
    train_seconds: float = 0.0
    #: Rows are true classes, columns predicted ones (completed runs).
    test_confusion: list[list[int]] | None = None
    classes: list[str] = field(default_factory=list)
    seed: int = 0
    experiment: str | None = None
    ablation: str | None = None
    #: null without a validation split: last_checkpoint then holds the run's final weights.
    best_checkpoint: str | None = None
    last_checkpoint: str | None = None
    normalization: dict[str, list[float]] | None = None
    device: str = ""
    world_size: int = 1
    versions: dict[str, str] = field(default_factory=dict)
    git_commit: str | None = None
    command: str = ""
    #: One entry per resume: the epoch and global step of the checkpoint it continued from, and its overrides.
    resumes: list[dict[str, Any]] = field(default_factory=list)
    #: A search trial's study, trial number and storage URL (without password); null for a run alone.
    hpo: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    #: Only in a diverged run's file: the step, epoch and loss it diverged at.
    divergence: dict[str, Any] | None = None
    #: Only in a pruned trial's file: the epoch it stopped after and the value its pruner saw.
    pruned: dict[str, Any] | None = None

    def fields(self) -> dict[str, Any]:
        """The record as metrics.json holds it (before `schema_version`): divergence and pruned only where set."""
        optional = ("divergence", "pruned")
        return {key: value for key, value in asdict(self).items() if value is not None or key not in optional}


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def git_commit() -> str | None:
    """The project's git commit, if it runs from a checkout (None otherwise)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def device_name(trainer: Any) -> str:
    import torch  # here: reading run directories needs no torch

    if trainer.strategy.root_device.type == "cuda":
        return torch.cuda.get_device_name(trainer.strategy.root_device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


@dataclass
class Fit:
    """What one fit is made of (training.py builds it): its config, run directory, and the objects it trained with."""

    cfg: Any
    run: Any
    datamodule: Any
    module: Any
    trainer: Any
    history: Any


def fit_record(fit: Fit, test: dict[str, float], train_seconds: float, stopped_early: bool, **more: Any) -> RunRecord:
    """The record of a fit: `test` its test figures (if completed), `more` the status and the caller's fields."""
    cfg, trainer, datamodule = fit.cfg, fit.trainer, fit.datamodule
    # Only epochs that validated can be best (check_val_every_n_epoch > 1 leaves others without val_loss).
    validated = [row for row in fit.history.history if "val_loss" in row]
    best = min(validated, key=lambda row: row["val_loss"]) if validated else {}
    checkpoint = trainer.checkpoint_callback
    best_path = getattr(checkpoint, "best_model_path", "") if datamodule.has_validation else ""
    last = fit.run.last_checkpoint
    return RunRecord(
        test_acc=test.get("test_acc"),
        test_acc_plain=test.get("test_acc_plain"),
        test_tta=fit.module.test_tta,
        test_loss=test.get("test_loss"),
        best_val_loss=best.get("val_loss"),
        best_val_acc=best.get("val_acc"),
        best_epoch=best.get("epoch"),
        epochs_run=len(fit.history.history),
        stopped_early=stopped_early,
        train_seconds=round(train_seconds, 3),
        test_confusion=fit.module.test_confusion_matrix if more["status"] == COMPLETED else None,
        classes=list(datamodule.classes),
        seed=cfg.seed,
        experiment=cfg.get("experiment_name"),
        ablation=cfg.ablation.name,
        best_checkpoint=best_path or None,
        last_checkpoint=getattr(checkpoint, "last_model_path", None) or (str(last) if last.is_file() else None),
        normalization={"mean": datamodule.mean, "std": datamodule.std},
        device=device_name(trainer),
        world_size=trainer.world_size,
        versions=library_versions(),
        git_commit=git_commit(),
        command=" ".join(sys.argv),
        history=fit.history.history,
        **more,
    )
