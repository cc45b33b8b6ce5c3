"""Slurm's refusals as one-paragraph errors, for hydra/launcher=slurm (hydra_plugins/cifar_lightning_slurm).

A request the cluster cannot meet (an unknown partition, more CPUs or memory than a node has, a time limit
above the partition's) is refused by sbatch at submission: the user gets its reason and what the partitions
offer instead of submitit's traceback, exit status 2, and no job."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from cifar_lightning.errors import ConfigError, one_line

#: What conf/hydra/launcher/slurm.yaml sizes a job by (nodes, tasks per node, GPUs), resolved once per sweep.
SIZING_KEYS = ("trainer", "trainer.devices", "trainer.num_nodes", "trainer.accelerator")


def partitions() -> str:
    """What each partition offers (sinfo), to say what a refused request could ask for instead."""
    try:
        rows = subprocess.run(
            ["sinfo", "-h", "-o", "%P: %c CPUs, %m MB per node, time limit %l"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "sinfo did not answer"
    return "; ".join(row for row in rows if row) or "sinfo listed none"


def submission_error(stderr: str) -> ConfigError:
    """sbatch's refusal as a ConfigError that names the launcher keys to change."""
    reason = one_line(" ".join(line.removeprefix("sbatch: error: ") for line in stderr.splitlines()), 300)
    return ConfigError(
        f"Slurm refused the sweep's jobs ({reason}). Fix the request on the command line: "
        f"hydra.launcher.partition, hydra.launcher.cpus_per_task, hydra.launcher.mem_gb (per node) and "
        f"hydra.launcher.timeout_min must fit a partition (here: {partitions()}; a * marks the default), "
        f"and account/qos must be yours; no job was submitted."
    )


def check_one_job_shape(job_overrides: Sequence[Sequence[str]]) -> None:
    """Refuse a sweep whose jobs differ in what sizes a Slurm job: submitit submits the whole sweep with the
    nodes, tasks and GPUs of the command line's values, so a job sized otherwise would fail in Lightning."""
    for key in SIZING_KEYS:
        values = {
            next((o.split("=", 1)[1] for o in job if o.split("=", 1)[0].lstrip("+~") == key), None)
            for job in job_overrides
        }
        if len(values) > 1:
            shown = ", ".join(sorted(str(value) for value in values))
            raise ConfigError(
                f"the sweep's jobs differ in {key} ({shown}), but hydra/launcher=slurm submits every job of a sweep "
                f"with one size (nodes, tasks per node and GPUs follow trainer.num_nodes, trainer.devices and "
                f"trainer.accelerator as the command line gives them, not each job's). Fix: one sweep per value, "
                f"e.g. python train.py -m hydra/launcher=slurm {key}=<value> ...; no job was submitted."
            )
