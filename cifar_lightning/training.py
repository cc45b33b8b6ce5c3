"""The training job behind train.py: check the config, build everything, fit, test the kept weights, record the run."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping
from omegaconf import DictConfig, OmegaConf

from cifar_lightning.allocator import keep_heap
from cifar_lightning.callbacks import DivergenceGuard, EpochHistory, ResumeState, check_callbacks
from cifar_lightning.checkpoints import training_position
from cifar_lightning.config import check
from cifar_lightning.config.train import TrainSettings, built, config_errors, instantiate_entries
from cifar_lightning.distributed import check_launch, requeue_checkpoint
from cifar_lightning.errors import TrainingDiverged, TrialPruned
from cifar_lightning.module import ClassifierModule
from cifar_lightning.runs import COMPLETED, DIVERGED, PRUNED, RunDir, metrics_record, write_metrics
from cifar_lightning.runs.record import Fit, fit_record
from cifar_lightning.tracking import record_outcome

log = logging.getLogger(__name__)


def is_trial(cfg: DictConfig) -> bool:
    """Whether the run is a trial of an Optuna study (the sweeper sets hpo.trial; see cifar_lightning.hpo)."""
    return OmegaConf.select(cfg, "hpo.trial") is not None


def build(cfg: DictConfig) -> tuple[Any, ClassifierModule, L.Trainer, EpochHistory]:
    """Check the config, seed, and instantiate the data module, the module, and the trainer with its callbacks."""
    check(cfg, "train", "nothing was trained", root=TrainSettings)
    keep_heap(cfg.keep_heap)
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # before the model's weights are drawn
    datamodule = built(cfg, "data")
    groups = {"model": "model", "optimizer": "optim", "scheduler": "scheduler", "loss": "loss"}
    parts = {argument: built(cfg, group) for argument, group in groups.items()}
    with config_errors("module"):  # its model, optimizer, scheduler and loss come from their own groups
        module = built(cfg, "module", _partial_=True)(
            **parts, num_classes=cfg.model.num_classes, run_config=OmegaConf.to_container(cfg, resolve=True)
        )
    with config_errors("optim"):  # built once now, so that a bad value fails here, not mid-fit
        optimizer = module.build_optimizer()
    with config_errors("scheduler"):  # with a stand-in step count: the real one needs the trainer
        module.build_scheduler(optimizer, total_steps=1000)
    configured = instantiate_entries(cfg, "callbacks")
    check_callbacks(configured, datamodule.has_validation, is_trial(cfg), module.model)
    history = EpochHistory()
    # Always on: the history and resume state travel in checkpoints; a non-finite loss stops the run.
    callbacks = [*configured.values(), history, ResumeState(), DivergenceGuard()]
    callbacks += [averaging] if (averaging := built(cfg, "averaging")) else []
    if is_trial(cfg):  # a search trial reports to its study and may be pruned (Optuna: the [hpo] extra)
        from cifar_lightning.hpo.trial import pruning_callback

        callbacks.append(pruning_callback(cfg))
    loggers = list(instantiate_entries(cfg, "logger").values()) or False
    no_validation = {} if datamodule.has_validation else {"limit_val_batches": 0, "num_sanity_val_steps": 0}
    trainer = built(cfg, "trainer", callbacks=callbacks, logger=loggers, **no_validation)
    check_launch(trainer)  # DDP: refuse process layouts that would hang or split the run's directory
    return datamodule, module, trainer, history


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job in cfg.paths.output_dir (a requeued cluster job resumes); returns its metrics.json."""
    run = RunDir(cfg.paths.output_dir)
    if (ckpt_path := requeue_checkpoint(run.root)) is None:
        return fit_and_record(cfg, run)
    position = training_position(run)
    log.info(
        "requeued job: resuming %s from %s (written in epoch %d, at step %d)", run.root, ckpt_path, *position.values()
    )
    return fit_and_record(cfg, run, ckpt_path, [{**position, "overrides": []}])


def fit_and_record(
    cfg: DictConfig, run: RunDir, ckpt_path: Path | None = None, resumes: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Build, fit (from ckpt_path when resuming), test the kept weights, write config.yaml and metrics.json (also
    for a TrainingDiverged or TrialPruned, raised then)."""
    fit = Fit(cfg, run, *build(cfg))
    fit.datamodule.prepare_data()  # missing or corrupt data fails here, before anything is written
    run.root.mkdir(parents=True, exist_ok=True)
    if fit.trainer.is_global_zero:  # DDP: one writer per run (ranks are known once the Trainer is built)
        run.config.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    for logger in fit.trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    more: dict[str, Any] = {"resumes": resumes or [], "hpo": None}
    if is_trial(cfg):
        from cifar_lightning.hpo.trial import trial_record

        more["hpo"] = trial_record(cfg)
    timer = next(c for c in fit.trainer.callbacks if isinstance(c, ResumeState))
    start = time.perf_counter()
    try:
        fit.trainer.fit(fit.module, datamodule=fit.datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
        for callback in fit.trainer.callbacks:
            if hasattr(callback, "check_pruned"):  # DDP: the pruning callback stops the fit; raise here
                callback.check_pruned()
    except (TrainingDiverged, TrialPruned) as exc:  # stopped before its end: recorded as such, then raised
        seconds = timer.previous_seconds + time.perf_counter() - start
        if isinstance(exc, TrainingDiverged):
            stop = {"status": DIVERGED, "divergence": {"step": exc.step, "epoch": exc.epoch, "loss": exc.loss}}
        else:
            stop = {"status": PRUNED, "pruned": {"epoch": exc.epoch, "value": exc.value}}
        record(fit, fit_record(fit, {}, seconds, False, **stop, **more))
        log.log(logging.ERROR if isinstance(exc, TrainingDiverged) else logging.INFO, "%s", exc)
        raise
    seconds = timer.previous_seconds + time.perf_counter() - start
    # Read right after fit: testing a checkpoint restores early stopping's state as it was when saved.
    stopped_early = any(isinstance(c, EarlyStopping) and c.stopped_epoch > 0 for c in fit.trainer.callbacks)
    best = getattr(fit.trainer.checkpoint_callback, "best_model_path", "") if fit.datamodule.has_validation else ""
    if not best:
        # The final (averaged) weights are the run's model, saved by every rank (a collective under DDP): without a
        # validation split, or with one but no checkpoint callback (the fast94 recipes turn it off for speed).
        fit.trainer.save_checkpoint(run.last_checkpoint, weights_only=False)
        why = "no validation split (data.val_fraction=0)" if not fit.datamodule.has_validation else "no best checkpoint"
        log.info("%s: testing the final weights in %s", why, run.last_checkpoint)
    test = fit.trainer.test(fit.module, datamodule=fit.datamodule, ckpt_path=best or None, verbose=False)[0]
    # DDP: every rank has the same figures (metrics are reduced over ranks); rank 0 writes them.
    metrics = record(fit, fit_record(fit, test, seconds, stopped_early, status=COMPLETED, **more))
    kept = f"best epoch {metrics['best_epoch']}" if metrics["best_epoch"] is not None else "final weights"
    figures = [metrics[key] for key in ("test_acc", "test_tta", "test_acc_plain", "test_loss")]
    figures += [kept, metrics["epochs_run"], run.root]
    log.info(
        "test_acc=%.4f (test-time augmentation level %d; %.4f without) test_loss=%.4f (%s of %s epochs); run "
        "directory: %s",
        *figures,
    )
    return metrics


def record(fit: Fit, run_record: Any) -> dict[str, Any]:
    """Write metrics.json (rank 0) and send it to the trackers; returns what was written."""
    if fit.trainer.is_global_zero:
        write_metrics(fit.run, run_record)
    record_outcome(fit.trainer, fit.run, metrics := metrics_record(run_record))
    return metrics
