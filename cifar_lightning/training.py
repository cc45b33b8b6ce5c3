"""The training job behind train.py: build everything from the config, check it, fit, test the
best checkpoint, and write the run's record (config.yaml, metrics.json) beside its checkpoints.
"""

from __future__ import annotations

import json
import logging
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cifar_lightning import __version__
from cifar_lightning.averaging import AveragedWeights
from cifar_lightning.callbacks import EpochHistory, FreezeParameters
from cifar_lightning.data import CIFAR10DataModule
from cifar_lightning.distributed import check_launch, requeue_checkpoint
from cifar_lightning.errors import CifarLightningError, ConfigError
from cifar_lightning.module import WEIGHT_DECAY_SCOPES, ClassifierModule

log = logging.getLogger(__name__)

VERSIONED_PACKAGES = ("torch", "torchvision", "lightning", "hydra-core", "omegaconf", "torchmetrics", "numpy")


@contextmanager
def config_errors(group: str) -> Iterator[None]:
    """Turn an error raised while building `group` from the config into a one-paragraph ConfigError."""
    try:
        yield
    except CifarLightningError:
        raise
    except (InstantiationException, OmegaConfBaseException, ValueError, TypeError, ImportError) as exc:
        cause: BaseException = exc
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        reason = " ".join(str(cause).split())  # one line
        raise ConfigError(
            f"invalid `{group}` config: {reason}. Fix the value on the command line "
            f"(python train.py {group}.<key>=<value>) or in conf/{group}/; nothing was trained."
        ) from exc


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    versions["cifar-lightning"] = __version__
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


def device_name(trainer: L.Trainer) -> str:
    if trainer.strategy.root_device.type == "cuda":
        return torch.cuda.get_device_name(trainer.strategy.root_device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def instantiate_entries(cfg: DictConfig | None, group: str) -> list[Any]:
    """Instantiate every entry of a group of named objects (callbacks, loggers); null entries are skipped."""
    objects = []
    for name, entry in (cfg or {}).items():
        if entry is None:
            continue
        with config_errors(f"{group}.{name}"):
            objects.append(instantiate(entry))
    return objects


def checked_seed(cfg: DictConfig) -> int:
    with config_errors("seed"):
        if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
            raise ValueError(f"seed must be an integer, got {cfg.seed!r}")
    return cfg.seed


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_loss(cfg: DictConfig) -> float:
    """The label smoothing, checked: a share of the target, in [0, 1)."""
    smoothing = OmegaConf.select(cfg, "loss.label_smoothing", default=0.0)
    with config_errors("loss"):
        if not _is_number(smoothing) or not 0.0 <= smoothing < 1.0:
            raise ValueError(
                f"label_smoothing must be in [0, 1) (the share of each target spread over all classes), "
                f"got {smoothing!r}, e.g. loss.label_smoothing=0.1"
            )
    return float(smoothing)


def check_param_groups(cfg: DictConfig) -> dict[str, Any]:
    """The optimizer's parameter-group options, checked (see ClassifierModule)."""
    groups = {"norm_lr_scale": 1.0, "weight_decay_scope": "weights", **(cfg.get("param_groups") or {})}
    with config_errors("param_groups"):
        if not _is_number(groups["norm_lr_scale"]) or groups["norm_lr_scale"] <= 0:
            raise ValueError(f"norm_lr_scale must be a positive number, got {groups['norm_lr_scale']!r}")
        if groups["weight_decay_scope"] not in WEIGHT_DECAY_SCOPES:
            raise ValueError(
                f"weight_decay_scope must be one of {', '.join(WEIGHT_DECAY_SCOPES)}, "
                f"got {groups['weight_decay_scope']!r}"
            )
    return groups


def check_flags(cfg: DictConfig) -> None:
    """Top-level switches are booleans (a typo such as compile=ture must not pass as true)."""
    for key in ("channels_last", "compile"):
        with config_errors(key):
            value = cfg.get(key, False)
            if not isinstance(value, bool):
                raise ValueError(f"{key} must be true or false, got {value!r}")


def build_averaging(cfg: DictConfig) -> AveragedWeights | None:
    """The EMA/lookahead callback of the `averaging` group, or None (averaging=none)."""
    if not cfg.get("averaging"):
        return None
    with config_errors("averaging"):
        averaging = instantiate(cfg.averaging)
        if not isinstance(averaging, AveragedWeights):
            raise TypeError("an averaging config needs _target_: cifar_lightning.averaging.AveragedWeights")
    return averaging


def check_frozen_names(callbacks: list[Any], module: ClassifierModule) -> None:
    """FreezeParameters callbacks must name parameters the model has."""
    for callback in callbacks:
        if isinstance(callback, FreezeParameters) and callback.missing(module.model):
            with config_errors("callbacks"):
                raise ValueError(
                    f"FreezeParameters names {', '.join(callback.missing(module.model))}, which the model "
                    f"({type(module.model).__name__}) does not have; its parameters include "
                    f"{', '.join(name for name, _ in list(module.model.named_parameters())[:4])}"
                )


def build(cfg: DictConfig) -> tuple[CIFAR10DataModule, ClassifierModule, L.Trainer, EpochHistory]:
    """Everything a run needs, each config group checked as it is built, before any training."""
    checked_seed(cfg)
    check_flags(cfg)
    label_smoothing = check_loss(cfg)
    groups = check_param_groups(cfg)
    with config_errors("data"):
        datamodule: CIFAR10DataModule = instantiate(cfg.data)
    with config_errors("model"):
        model = instantiate(cfg.model)
    with config_errors("optim"):
        optimizer_factory = instantiate(cfg.optim)
    with config_errors("scheduler"):
        scheduler_factory = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
        if scheduler_factory is not None and not callable(scheduler_factory):
            raise ValueError("a scheduler config needs a _target_ (see conf/scheduler/), or use scheduler=none")
    with config_errors("model"):
        module = ClassifierModule(
            model,
            optimizer_factory,
            scheduler_factory,
            num_classes=cfg.model.num_classes,
            channels_last=cfg.channels_last,
            run_config=OmegaConf.to_container(cfg, resolve=True),
            label_smoothing=label_smoothing,
            compile=cfg.get("compile", False),
            **groups,
        )
    # Build the optimizer and scheduler once now, so a bad value fails here, not mid-fit
    # (a per-step schedule is tried with a stand-in step count: the real one needs the trainer).
    with config_errors("optim"):
        optimizer = module.build_optimizer()
    with config_errors("scheduler"):
        module.build_scheduler(optimizer, total_steps=1000)
    averaging = build_averaging(cfg)
    history = EpochHistory()
    callbacks = instantiate_entries(cfg.get("callbacks"), "callbacks") + [history]
    check_frozen_names(callbacks, module)
    if averaging is not None:
        callbacks.append(averaging)
    loggers = instantiate_entries(cfg.get("logger"), "logger")
    with config_errors("trainer"):
        trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    check_launch(trainer)  # DDP: refuse process layouts that would hang or split the run's directory
    return datamodule, module, trainer, history


def stopped_early(trainer: L.Trainer) -> bool:
    """Whether early stopping ended the fit. Read it right after fit: testing a checkpoint restores the
    callback's state as it was when that checkpoint was saved (stopped_epoch 0 for a best epoch)."""
    early_stopping = next((c for c in trainer.callbacks if isinstance(c, EarlyStopping)), None)
    return bool(early_stopping is not None and early_stopping.stopped_epoch > 0)


def summarize(
    history: EpochHistory, test_metrics: dict[str, float], train_seconds: float, early_stop: bool
) -> dict[str, Any]:
    """The run's headline figures; epochs are counted from 1."""
    # Only epochs that validated can be best (check_val_every_n_epoch > 1 leaves others without val_loss);
    # the first of equal losses wins, as in ModelCheckpoint.
    validated = [row for row in history.history if "val_loss" in row]
    best_row = min(validated, key=lambda row: row["val_loss"]) if validated else {}
    return {
        "test_acc": test_metrics.get("test_acc"),
        "test_loss": test_metrics.get("test_loss"),
        "best_val_loss": best_row.get("val_loss"),
        "best_val_acc": best_row.get("val_acc"),
        "best_epoch": best_row.get("epoch"),
        "epochs_run": len(history.history),
        "stopped_early": early_stop,
        "train_seconds": round(train_seconds, 3),
    }


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job and return (and save) its metrics."""
    L.seed_everything(checked_seed(cfg), workers=True, verbose=False)  # before the model's weights are drawn
    datamodule, module, trainer, history = build(cfg)
    datamodule.prepare_data()  # missing or corrupt data fails here, before anything is written

    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if trainer.is_global_zero:  # DDP: one writer per run (ranks are known once the Trainer is built)
        (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    start = time.perf_counter()
    # A requeued cluster job continues from its own last checkpoint (cifar_lightning.distributed).
    trainer.fit(module, datamodule=datamodule, ckpt_path=requeue_checkpoint(output_dir))
    train_seconds = time.perf_counter() - start
    early_stop = stopped_early(trainer)

    checkpoint = trainer.checkpoint_callback
    best_path = checkpoint.best_model_path if isinstance(checkpoint, ModelCheckpoint) else ""
    if not best_path:
        log.warning("no best checkpoint was saved (e.g. fast_dev_run): testing the final weights")
    test_metrics = trainer.test(module, datamodule=datamodule, ckpt_path=best_path or None, verbose=False)[0]

    metrics = summarize(history, test_metrics, train_seconds, early_stop)
    metrics.update(
        test_confusion=module.test_confusion_matrix,
        classes=list(datamodule.classes),
        seed=cfg.seed,
        experiment=cfg.get("experiment_name"),
        ablation=OmegaConf.select(cfg, "ablation.name"),
        best_checkpoint=best_path or None,
        last_checkpoint=getattr(checkpoint, "last_model_path", None) or None,
        normalization={"mean": datamodule.mean, "std": datamodule.std},
        device=device_name(trainer),
        world_size=trainer.world_size,
        versions=library_versions(),
        git_commit=git_commit(),
        command=" ".join(sys.argv),
        history=history.history,
    )
    if trainer.is_global_zero:  # DDP: every rank has the same figures (metrics are reduced over ranks)
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log.info(
        "test_acc=%.4f test_loss=%.4f (best epoch %s of %s); run directory: %s",
        metrics["test_acc"], metrics["test_loss"], metrics["best_epoch"], metrics["epochs_run"], output_dir,
    )
    return metrics
