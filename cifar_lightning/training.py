"""The training job behind train.py: build everything from the config, check it, fit, test the
best checkpoint, and write the run's record (config.yaml, metrics.json) beside its checkpoints;
or resume a run from its last checkpoint (`resume`). The run directory's layout is
cifar_lightning/runs/__init__.py's.
"""

from __future__ import annotations

import logging
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, InstantiationException
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cifar_lightning import __version__
from cifar_lightning.augment import TTA_LEVELS, is_tta_level
from cifar_lightning.averaging import AveragedWeights
from cifar_lightning.callbacks import DivergenceGuard, EpochHistory, FreezeParameters, ResumeState
from cifar_lightning.checkpoints import trained_epoch
from cifar_lightning.data import CIFAR10DataModule
from cifar_lightning.distributed import check_launch, requeue_checkpoint
from cifar_lightning.errors import (
    CifarLightningError,
    ConfigError,
    ResumeError,
    TrainingDiverged,
    TrialPruned,
    is_int,
    is_number,
    one_line,
)
from cifar_lightning.losses import build_loss
from cifar_lightning.module import WEIGHT_DECAY_SCOPES, ClassifierModule
from cifar_lightning.runs import (
    COMPLETED,
    DIVERGED,
    PRUNED,
    RunDir,
    RunDirError,
    metrics_record,
    read_metrics,
    write_metrics,
)  # fmt: skip
from cifar_lightning.tracking import record_outcome

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
        reason = one_line(cause)  # one line
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
        if not is_int(cfg.seed):
            raise ValueError(f"seed must be an integer, got {cfg.seed!r}")
    return cfg.seed


def check_loss(cfg: DictConfig) -> dict[str, Any]:
    """The loss options of ClassifierModule (losses.build_loss), checked; a run saved before `loss.name`
    existed trained with cross-entropy."""
    options = {
        "loss": OmegaConf.select(cfg, "loss.name", default="cross_entropy"),
        "label_smoothing": OmegaConf.select(cfg, "loss.label_smoothing", default=0.0),
        "loss_temperature": OmegaConf.select(cfg, "loss.temperature", default=0.04),
    }
    with config_errors("loss"):
        build_loss(options["loss"], options["label_smoothing"], options["loss_temperature"])
    return options


def check_param_groups(cfg: DictConfig) -> dict[str, Any]:
    """The optimizer's parameter-group options, checked (see ClassifierModule)."""
    groups = {"norm_lr_scale": 1.0, "weight_decay_scope": "weights", **(cfg.get("param_groups") or {})}
    with config_errors("param_groups"):
        if not is_number(groups["norm_lr_scale"]) or groups["norm_lr_scale"] <= 0:
            raise ValueError(f"norm_lr_scale must be a positive number, got {groups['norm_lr_scale']!r}")
        if groups["weight_decay_scope"] not in WEIGHT_DECAY_SCOPES:
            raise ValueError(
                f"weight_decay_scope must be one of {', '.join(WEIGHT_DECAY_SCOPES)}, "
                f"got {groups['weight_decay_scope']!r}"
            )
    return groups


def check_test(cfg: DictConfig) -> int:
    """The test-time augmentation level of the run's test (test.tta), checked."""
    tta = OmegaConf.select(cfg, "test.tta", default=0)
    with config_errors("test"):
        if not is_tta_level(tta):
            raise ValueError(
                f"tta must be one of {', '.join(map(str, TTA_LEVELS))} (0: none, 1: with mirror images, 2: also "
                f"shifted by one pixel), got {tta!r}; e.g. test.tta=2"
            )
    return tta


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


def check_validation_needs(cfg: DictConfig, datamodule: CIFAR10DataModule, callbacks: list[Any]) -> None:
    """With no validation split (data.val_fraction=0) nothing may wait for a validation metric, and no
    best.ckpt is written (the run keeps its final weights in last.ckpt; see RunDir.kept_checkpoint)."""
    if datamodule.has_validation:
        return
    names = [name for name, entry in (cfg.get("callbacks") or {}).items() if entry is not None]
    needs = []
    for name, callback in zip(names, callbacks):
        if isinstance(callback, (ModelCheckpoint, EarlyStopping)) and str(callback.monitor or "").startswith("val_"):
            needs.append(f"callbacks.{name} (monitor: {callback.monitor})")
        elif isinstance(callback, ModelCheckpoint) and callback.save_top_k != 0:
            needs.append(f"callbacks.{name} (save_top_k: {callback.save_top_k}, a best.ckpt by validation loss)")
    if is_trial(cfg):
        needs.append("the hyperparameter search (its objective is a validation metric)")
    if needs:
        with config_errors("data"):
            raise ValueError(
                f"data.val_fraction=0 holds no validation split, but {' and '.join(needs)} need one. Hold some "
                f"images out (data.val_fraction=0.1), or drop what needs them (callbacks.early_stopping=null "
                f"callbacks.model_checkpoint.monitor=null callbacks.model_checkpoint.save_top_k=0: the final "
                f"weights are then tested and kept as last.ckpt)"
            )


def no_validation_overrides(datamodule: CIFAR10DataModule) -> dict[str, Any]:
    """Trainer arguments for a run without a validation split: no validation loop, no sanity check."""
    return {} if datamodule.has_validation else {"limit_val_batches": 0, "num_sanity_val_steps": 0}


def is_trial(cfg: DictConfig) -> bool:
    """Whether the run is a trial of an Optuna study (the sweeper sets hpo.trial; see cifar_lightning.hpo)."""
    return OmegaConf.select(cfg, "hpo.trial") is not None


def pruning_callback(cfg: DictConfig) -> L.Callback:
    """The trial's pruning callback. Optuna is an optional stack ([hpo]), imported only for trials."""
    from cifar_lightning.hpo.trial import pruning_callback as study_pruning_callback

    return study_pruning_callback(cfg)


def build(cfg: DictConfig) -> tuple[CIFAR10DataModule, ClassifierModule, L.Trainer, EpochHistory]:
    """Everything a run needs, each config group checked as it is built, before any training."""
    checked_seed(cfg)
    check_flags(cfg)
    loss_options = check_loss(cfg)
    groups = check_param_groups(cfg)
    tta = check_test(cfg)
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
            **loss_options,
            compile=cfg.get("compile", False),
            test_tta=tta,
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
    # Always on: the history and the resume state travel in checkpoints; a non-finite loss stops the run.
    configured = instantiate_entries(cfg.get("callbacks"), "callbacks")
    check_validation_needs(cfg, datamodule, configured)
    callbacks = configured + [history, ResumeState(), DivergenceGuard()]
    check_frozen_names(callbacks, module)
    if averaging is not None:
        callbacks.append(averaging)
    if is_trial(cfg):  # a hyperparameter-search trial reports to its study and may be pruned
        callbacks.append(pruning_callback(cfg))
    loggers = instantiate_entries(cfg.get("logger"), "logger")
    with config_errors("trainer"):
        trainer: L.Trainer = instantiate(
            cfg.trainer, callbacks=callbacks, logger=loggers or False, **no_validation_overrides(datamodule)
        )
    check_launch(trainer)  # DDP: refuse process layouts that would hang or split the run's directory
    return datamodule, module, trainer, history


def stopped_early(trainer: L.Trainer) -> bool:
    """Whether early stopping ended the fit. Read it right after fit: testing a checkpoint restores the
    callback's state as it was when that checkpoint was saved (stopped_epoch 0 for a best epoch)."""
    early_stopping = next((c for c in trainer.callbacks if isinstance(c, EarlyStopping)), None)
    return bool(early_stopping is not None and early_stopping.stopped_epoch > 0)


def summarize(
    history: EpochHistory, test_metrics: dict[str, float], train_seconds: float, early_stop: bool, tta: int = 0
) -> dict[str, Any]:
    """The run's headline figures; epochs are counted from 1. test_acc is measured with the run's
    test-time augmentation level `tta` (test.tta), test_acc_plain without it."""
    # Only epochs that validated can be best (check_val_every_n_epoch > 1 leaves others without val_loss);
    # the first of equal losses wins, as in ModelCheckpoint.
    validated = [row for row in history.history if "val_loss" in row]
    best_row = min(validated, key=lambda row: row["val_loss"]) if validated else {}
    return {
        "test_acc": test_metrics.get("test_acc"),
        "test_acc_plain": test_metrics.get("test_acc_plain"),
        "test_tta": tta,
        "test_loss": test_metrics.get("test_loss"),
        "best_val_loss": best_row.get("val_loss"),
        "best_val_acc": best_row.get("val_acc"),
        "best_epoch": best_row.get("epoch"),
        "epochs_run": len(history.history),
        "stopped_early": early_stop,
        "train_seconds": round(train_seconds, 3),
    }


def trial_record(cfg: DictConfig) -> dict[str, Any] | None:
    """metrics.json's `hpo`: the study and trial the run was, or None for a run alone."""
    if not is_trial(cfg):
        return None
    from cifar_lightning.hpo.trial import trial_record as study_trial_record

    return study_trial_record(cfg)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job in cfg.paths.output_dir and return (and save) its metrics.

    Raises TrainingDiverged after writing metrics.json with status: diverged.
    """
    return _fit_and_record(cfg, RunDir(cfg.paths.output_dir))


def _fit_and_record(
    cfg: DictConfig, run: RunDir, ckpt_path: Path | None = None, resumes: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Build, fit (from ckpt_path when resuming), test the best checkpoint and write config.yaml and metrics.json."""
    if ckpt_path is None and (ckpt_path := requeue_checkpoint(run.root)) is not None:
        # A requeued cluster job continues from its own last checkpoint (cifar_lightning.distributed): a resume.
        position = _checked_last_checkpoint(run)
        log.info(
            "requeued job: resuming %s from %s (written in epoch %d, at step %d)",
            run.root, ckpt_path, position["epoch"], position["global_step"],
        )  # fmt: skip
        requeue = {"epoch": position["epoch"], "global_step": position["global_step"], "overrides": []}
        resumes = [*(resumes or []), requeue]
    L.seed_everything(checked_seed(cfg), workers=True, verbose=False)  # before the model's weights are drawn
    datamodule, module, trainer, history = build(cfg)
    datamodule.prepare_data()  # missing or corrupt data fails here, before anything is written

    run.root.mkdir(parents=True, exist_ok=True)
    if trainer.is_global_zero:  # DDP: one writer per run (ranks are known once the Trainer is built)
        run.config.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    resume_state = next(c for c in trainer.callbacks if isinstance(c, ResumeState))

    def record(status: str, test_metrics: dict[str, float], train_seconds: float, early_stop: bool) -> dict[str, Any]:
        checkpoint = trainer.checkpoint_callback
        best_path = checkpoint.best_model_path if isinstance(checkpoint, ModelCheckpoint) else ""
        if not datamodule.has_validation:  # no best by validation: the final weights in last.ckpt are kept
            best_path = ""
        metrics = {"status": status, **summarize(history, test_metrics, train_seconds, early_stop, module.test_tta)}
        metrics.update(
            test_confusion=module.test_confusion_matrix if status == COMPLETED else None,
            classes=list(datamodule.classes),
            seed=cfg.seed,
            experiment=cfg.get("experiment_name"),
            ablation=OmegaConf.select(cfg, "ablation.name"),
            best_checkpoint=best_path or None,
            last_checkpoint=getattr(checkpoint, "last_model_path", None)
            or (str(run.last_checkpoint) if run.last_checkpoint.is_file() else None),
            normalization={"mean": datamodule.mean, "std": datamodule.std},
            device=device_name(trainer),
            world_size=trainer.world_size,
            versions=library_versions(),
            git_commit=git_commit(),
            command=" ".join(sys.argv),
            resumes=resumes or [],
            hpo=trial_record(cfg),
            history=history.history,
        )
        return metrics

    start = time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path is not None else None)
        for callback in trainer.callbacks:
            if hasattr(callback, "check_pruned"):  # DDP: the pruning callback stops the fit; raise here
                callback.check_pruned()
    except (TrainingDiverged, TrialPruned) as exc:  # stopped before its end: recorded as such, then raised
        seconds = resume_state.previous_seconds + time.perf_counter() - start
        if isinstance(exc, TrainingDiverged):
            metrics = record(DIVERGED, {}, seconds, False)
            metrics["divergence"] = {"step": exc.step, "epoch": exc.epoch, "loss": exc.loss}
        else:
            metrics = record(PRUNED, {}, seconds, False)
            metrics["pruned"] = {"epoch": exc.epoch, "value": exc.value}
        if trainer.is_global_zero:
            write_metrics(run, metrics)
        record_outcome(trainer, run, metrics)
        log.log(logging.ERROR if isinstance(exc, TrainingDiverged) else logging.INFO, "%s", exc)
        raise
    train_seconds = resume_state.previous_seconds + time.perf_counter() - start
    early_stop = stopped_early(trainer)

    checkpoint = trainer.checkpoint_callback
    best_path = checkpoint.best_model_path if isinstance(checkpoint, ModelCheckpoint) else ""
    if not datamodule.has_validation:
        # No validation split: the final weights (averaged, with weight averaging) are the run's model.
        # Saved here, after the timed fit; every rank calls it (a collective under DDP), rank 0 writes. A full
        # checkpoint (optimizer and loop state too), like the ones ModelCheckpoint writes inside fit.
        best_path = ""
        trainer.save_checkpoint(run.last_checkpoint, weights_only=False)
        log.info("no validation split (data.val_fraction=0): testing the final weights, kept in %s",
                 run.last_checkpoint)  # fmt: skip
    elif not best_path:
        log.warning("no best checkpoint was saved (e.g. fast_dev_run): testing the final weights")
    test_metrics = trainer.test(module, datamodule=datamodule, ckpt_path=best_path or None, verbose=False)[0]

    # DDP: every rank has the same figures (metrics are reduced over ranks); rank 0 writes them.
    metrics = metrics_record(record(COMPLETED, test_metrics, train_seconds, early_stop))
    if trainer.is_global_zero:
        write_metrics(run, metrics)
    record_outcome(trainer, run, metrics)
    kept = f"best epoch {metrics['best_epoch']}" if metrics["best_epoch"] is not None else "final weights"
    log.info(
        "test_acc=%.4f (test-time augmentation level %d; %.4f without) test_loss=%.4f (%s of %s epochs); "
        "run directory: %s",
        metrics["test_acc"], metrics["test_tta"], metrics["test_acc_plain"], metrics["test_loss"], kept,
        metrics["epochs_run"], run.root,
    )  # fmt: skip
    return metrics


# --- resume ---------------------------------------------------------------------------------------

#: Overrides a resume accepts: none of them can change what the run computes. A key also covers
#: its subkeys (callbacks.progress_bar.refresh_rate); `hydra...` (Hydra's own settings) are accepted too.
RESUME_OVERRIDES = (
    "resume",
    "trainer.max_epochs",  # upward only, and not with a per-step schedule or averaging ramp
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "callbacks.progress_bar",
    "callbacks.model_summary",
    "callbacks.device_stats",
    "callbacks.model_checkpoint.every_n_train_steps",
    "data.data_dir",
    "data.download",
    "paths.log_dir",
)
_RESUME_FIX = "Fix: pass only those, or start a new run with the changed settings"


def _allowed_on_resume(key: str) -> bool:
    if key == "hydra" or key.startswith(("hydra.", "hydra/")):
        return True
    return any(key == allowed or key.startswith(allowed + ".") for allowed in RESUME_OVERRIDES)


def _parse_overrides(run: RunDir, overrides: Sequence[str]) -> list[Any]:
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as exc:
        raise ResumeError(f"cannot resume {run.root}: the overrides cannot be parsed ({exc}).") from exc
    refused = [o.input_line for o in parsed if not _allowed_on_resume(o.key_or_group) or o.is_sweep_override()]
    if refused:
        raise ResumeError(
            f"cannot resume {run.root} with {', '.join(refused)}: a resumed run keeps the config it started with "
            f"({run.config}), and these could change its result. A resume accepts only "
            f"{', '.join(RESUME_OVERRIDES[1:])} and hydra.* (trainer.max_epochs upward only). {_RESUME_FIX} "
            f"(python train.py <its overrides>)."
        )
    return parsed


def _per_step_plan(config: DictConfig) -> str | None:
    """What in the run spans its planned number of steps (so max_epochs cannot grow), or None."""
    target = OmegaConf.select(config, "scheduler._target_")
    try:
        interval = getattr(get_class(target), "interval", "epoch") if isinstance(target, str) else "epoch"
    except (ImportError, ValueError, AttributeError):
        interval = "epoch"
    if interval == "step":
        return f"its per-step learning-rate schedule ({target})"
    if (OmegaConf.select(config, "averaging.ramp_power") or 0) > 0:
        return "its weight averaging's decay ramp (averaging.ramp_power > 0)"
    return None


def _apply_overrides(run: RunDir, config: DictConfig, parsed: list[Any]) -> list[str]:
    """Apply the (allowed) overrides to the saved config; returns the ones that changed it."""
    changed = []
    for override in parsed:
        key = override.key_or_group
        if key == "resume" or key == "hydra" or key.startswith(("hydra.", "hydra/")):
            continue
        if key == "trainer.max_epochs":
            value, saved = override.value(), config.trainer.max_epochs
            if not is_int(value, saved):
                raise ResumeError(
                    f"cannot resume {run.root} with trainer.max_epochs={value!r}: the run was planned for {saved} "
                    f"epochs and a resume can only extend it (an integer >= {saved}). {_RESUME_FIX}."
                )
            plan = _per_step_plan(config)
            if value != saved and plan is not None:
                raise ResumeError(
                    f"cannot resume {run.root} with trainer.max_epochs={value}: {plan} is laid out over the "
                    f"{saved} planned epochs, so more epochs would change the steps already planned. "
                    f"{_RESUME_FIX}."
                )
        if override.is_delete():
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(config, parent) if parent else config
            if isinstance(node, DictConfig) and leaf in node:
                del node[leaf]
        else:
            OmegaConf.update(config, key, override.value(), merge=False, force_add=True)
        changed.append(override.input_line)
    return changed


def _relocated(value: Any, old: str, new: str) -> Any:
    """The config with every path inside the run's old location moved to its new one."""
    if isinstance(value, dict):
        return {key: _relocated(item, old, new) for key, item in value.items()}
    if isinstance(value, list):
        return [_relocated(item, old, new) for item in value]
    if isinstance(value, str) and (value == old or value.startswith(old + "/")):
        return new + value[len(old) :]
    return value


def _checked_last_checkpoint(run: RunDir) -> dict[str, Any]:
    """The last checkpoint's loop position (its epoch from 1, its global step), after checking that it loads and
    holds a full training state."""
    path = run.last_checkpoint
    fix = (
        f"The run directory was left as it is. Fix: resume from another copy of the run, or start it again "
        f"(python train.py <its overrides>; its settings are in {run.config})"
    )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch reports damage as RuntimeError, EOFError, UnpicklingError, ...
        reason = one_line(exc, 200)
        raise ResumeError(
            f"cannot resume {run.root}: its last checkpoint {path} is truncated or corrupt "
            f"({type(exc).__name__}: {reason}). {fix}."
        ) from exc
    needed = ("state_dict", "optimizer_states", "loops", "epoch", "global_step")
    missing = [key for key in needed if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise ResumeError(
            f"cannot resume {run.root}: {path} is not a full training checkpoint of train.py "
            f"(it has no {', '.join(missing)}). {fix}."
        )
    return {"epoch": trained_epoch(checkpoint), "global_step": int(checkpoint["global_step"])}


def resume(run_dir: str | Path, overrides: Sequence[str] = (), output_dir: str | Path | None = None) -> dict[str, Any]:
    """Continue the run in `run_dir` from its checkpoints/last.ckpt, with its own config.yaml, in place.

    overrides: command-line overrides (Hydra syntax); only RESUME_OVERRIDES are accepted, since the
        others could change the result. output_dir: where Hydra put this job's outputs; it must be
        the run directory (it is when train.py's config resolves `resume`).
    The weights, optimizer, schedulers, early stopping, averaging, history, random generators and the
    position in the data continue, so the result equals an uninterrupted run's (on the CPU). Raises
    ResumeError, before anything in the run directory changes, when it cannot.
    """
    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise ResumeError(
            f"cannot resume {run.root}: no such directory. Fix: pass a run directory that train.py wrote, "
            f"e.g. resume=logs/train/runs/<date>_<time>."
        )
    if not run.last_checkpoint.is_file():
        raise ResumeError(
            f"cannot resume {run.root}: it has no {run.last_checkpoint.relative_to(run.root)} (the run stopped before "
            f"its first checkpoint, or this is not a train.py run directory). Fix: start the run again "
            f"(python train.py <its overrides>), or pass another run directory."
        )
    try:
        saved = OmegaConf.load(run.config)
        if not isinstance(saved, DictConfig) or "trainer" not in saved or "paths" not in saved:
            raise ValueError("it is not a train.py run config")
    except (OSError, ValueError, OmegaConfBaseException) as exc:
        raise ResumeError(
            f"cannot resume {run.root}: its config {run.config} is missing or unreadable "
            f"({one_line(exc, 200)}). The run directory was left as it is. Fix: restore "
            f"config.yaml from a copy of the run (the checkpoint's hyper_parameters.run_config holds it too), "
            f"or start the run again."
        ) from exc
    if output_dir is not None and Path(output_dir).resolve() != run.root.resolve():
        raise ResumeError(
            f"cannot resume {run.root} into {output_dir}: a resume writes into the run it continues. Fix: run it "
            f"alone, python train.py resume={run.root} (not in a -m sweep, and without hydra.run.dir)."
        )
    position = _checked_last_checkpoint(run)
    parsed = _parse_overrides(run, overrides)
    config = OmegaConf.create(OmegaConf.to_container(saved))
    changed = _apply_overrides(run, config, parsed)
    previous: dict[str, Any] = {}
    if run.metrics.is_file():
        try:
            previous = read_metrics(run)
        except RunDirError:
            previous = {}
    if previous.get("status") == DIVERGED:
        raise ResumeError(
            f"cannot resume {run.root}: it diverged (see its metrics.json), and with its own settings it would diverge "
            f"again. Fix: start a new run with a lower learning rate (optim.lr=...)."
        )
    if previous.get("status") == COMPLETED and config.trainer.max_epochs <= saved.trainer.max_epochs:
        raise ResumeError(
            f"cannot resume {run.root}: it already completed its {saved.trainer.max_epochs} epochs. Fix: to train it "
            f"further, raise trainer.max_epochs (e.g. trainer.max_epochs={saved.trainer.max_epochs + 10})."
        )
    container = OmegaConf.to_container(config, resolve=True)
    old_root = str(container["paths"]["output_dir"])
    new_root = str(run.root.resolve())
    container = _relocated(container, old_root.rstrip("/"), new_root)
    container["paths"]["output_dir"] = new_root
    container["resume"] = new_root
    if container.get("hpo"):  # the study told its trial's outcome already: a resume reports to no study
        container["hpo"] = {key: None for key in container["hpo"]}
    cfg = OmegaConf.create(container)
    # epoch: the one (from 1) in which, or at whose end, last.ckpt was written.
    record = {"epoch": position["epoch"], "global_step": position["global_step"], "overrides": changed}
    log.info(
        "resuming %s from %s (written in epoch %d, at step %d)%s", run.root, run.last_checkpoint, record["epoch"],
        record["global_step"], f" with {', '.join(changed)}" if changed else "",
    )  # fmt: skip
    resumes = [*(previous.get("resumes") or []), record]
    return _fit_and_record(cfg, RunDir(new_root), ckpt_path=run.last_checkpoint, resumes=resumes)
