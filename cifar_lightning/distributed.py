"""Runs of several processes (DDP) and cluster jobs: the checks and settings that keep them safe.

Lightning owns the processes (it re-runs train.py once per extra device, or joins torchrun/srun ones); only
global rank 0 writes files. submitit alone launches and requeues cluster jobs (`hydra/launcher=slurm`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.strategies import ParallelStrategy
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher, _SubprocessScriptLauncher

from cifar_lightning.errors import ConfigError
from cifar_lightning.runs import RunDir


def cluster_plugins() -> list[Any]:
    """The Trainer's plugins (conf/trainer/default.yaml): inside a Slurm job, Lightning's SLURM environment with
    its auto-requeue off, so that submitit alone owns the job's signals and requeues it (same output directory)."""
    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


def check_launch(trainer: L.Trainer) -> None:
    """Refuse process layouts that would fail mid-run, hang or scatter one run over several directories."""
    strategy = trainer.strategy
    if not isinstance(strategy, ParallelStrategy) or trainer.world_size == 1:
        return
    launcher = strategy.launcher
    if isinstance(launcher, _MultiProcessingLauncher):
        raise ConfigError(
            f"trainer.strategy={type(strategy).__name__} starts its processes with multiprocessing, which runs "
            f"fit and test in children and hands back only the weights and logged figures, not the test "
            f"confusion matrix or the epoch history that metrics.json records. Fix: use trainer=ddp (strategy "
            f"ddp: Lightning re-runs train.py once per device, or joins torchrun/srun processes); nothing was "
            f"trained."
        )
    if getattr(strategy, "_layer_sync", None) is not None and strategy.root_device.type == "cpu":  # sync_batchnorm
        raise ConfigError(
            "trainer.sync_batchnorm=true needs GPUs: torch's SyncBatchNorm refuses CPU tensors when several "
            "processes train. Fix: trainer.sync_batchnorm=false on a CPU (each process normalizes its own "
            "batch, as single-process training does at batch data.batch_size), or train on GPUs with "
            "trainer.accelerator=gpu; nothing was trained."
        )
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.get() if HydraConfig.initialized() else None  # None outside a Hydra app
    mode, hydra_overrides = (hydra.mode.name, list(hydra.overrides.hydra)) if hydra else (None, [])
    # Lightning's launcher re-runs the command line, unless torchrun or srun already started every process.
    external = strategy.cluster_environment is not None and strategy.cluster_environment.creates_processes_externally
    if mode == "MULTIRUN" and isinstance(launcher, _SubprocessScriptLauncher) and not external:
        raise ConfigError(
            f"trainer=ddp with {trainer.world_size} processes cannot run inside a Hydra multirun launched on this "
            f"machine (-m, hydra/launcher=joblib or submitit_local): Lightning starts the extra processes by "
            f"re-running the command line, which would start the whole sweep again in each of them. Fix: run each "
            f"configuration as its own `python train.py trainer=ddp ...`, or sweep on Slurm (hydra/launcher=slurm, "
            f"whose tasks per node are the devices, started by srun); nothing was trained."
        )
    if mode == "RUN" and external and not any(o.startswith("hydra.run.dir=") for o in hydra_overrides):
        raise ConfigError(
            f"this process is rank {trainer.global_rank} of {trainer.world_size} started by "
            f"{type(strategy.cluster_environment).__name__.removesuffix('Environment')} (torchrun or srun), and "
            f"without hydra.run.dir every process would name its own run directory after the time it started. "
            f"Fix: give all of them the same one, e.g. `hydra.run.dir=logs/train/runs/<name>` (on Slurm "
            f"`hydra.run.dir=logs/train/runs/slurm-$SLURM_JOB_ID`); nothing was trained."
        )


def requeue_checkpoint(output_dir: str | Path) -> Path | None:
    """The checkpoint a requeued cluster job continues from: `<output_dir>/checkpoints/last.ckpt`, when this
    process runs a submitit job (re-run in the same output directory) and an earlier attempt saved one."""
    if "SUBMITIT_EXECUTOR" not in os.environ:
        return None
    last = RunDir(output_dir).last_checkpoint
    return last if last.is_file() else None
