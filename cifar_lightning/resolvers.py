"""OmegaConf resolvers the configs use, registered when the package is imported.

`${if_gpu:<accelerator>,<value on a GPU>,<value otherwise>}` picks a setting by where the run will
train, so one recipe can ask for bf16 autocast on a GPU and stay in float32 on a CPU (where bf16
is slow on most processors): accelerator gpu/cuda, or auto with a CUDA GPU present, counts as GPU.
The run's config.yaml records the value chosen.

`${run_dir_or_resume:<resume>,<new run dir>}` and `${hydra_subdir_or_resume:<resume>,<time>}` let
conf/hydra/default.yaml put a resumed run's outputs into the run it resumes (see
cifar_lightning/runs/__init__.py).

`${run_group:<run dir>,<log dir>}` and `${run_name:<run dir>}` name a run in an experiment tracker
(conf/logger/mlflow.yaml) after where it lies: the runs one command starts share a group.
"""

from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from cifar_lightning.runs import hydra_output_subdir, hydra_run_dir


def if_gpu(accelerator: str, on_gpu: Any, otherwise: Any) -> Any:
    uses_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return on_gpu if uses_gpu else otherwise


def run_group(run_dir: str, log_dir: str) -> str:
    """The run directory's parent relative to the log directory: train/runs for single runs,
    train/multiruns/<time> for a sweep's jobs, train/hpo/<study> for a study's trials. A run outside
    the log directory is grouped by its parent's absolute path; one right in it, by the log directory's name."""
    parent = Path(run_dir).expanduser().resolve().parent
    log_root = Path(log_dir).expanduser().resolve()
    if parent == log_root:
        return log_root.name
    try:
        return parent.relative_to(log_root).as_posix()
    except ValueError:
        return parent.as_posix()


def run_name(run_dir: str) -> str:
    """The run directory's own name: <date>_<time>, a sweep job's number, trial_<n>."""
    return Path(run_dir).expanduser().resolve().name


OmegaConf.register_new_resolver("if_gpu", if_gpu, replace=True)
OmegaConf.register_new_resolver("run_dir_or_resume", hydra_run_dir, replace=True)
OmegaConf.register_new_resolver("hydra_subdir_or_resume", hydra_output_subdir, replace=True)
OmegaConf.register_new_resolver("run_group", run_group, replace=True)
OmegaConf.register_new_resolver("run_name", run_name, replace=True)
