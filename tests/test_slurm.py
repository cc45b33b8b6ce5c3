"""The Slurm launcher's settings and the requeue plumbing, without a cluster (tests/test_slurm_cluster.py runs
real jobs on one)."""

import pytest
from hydra import compose, initialize_config_dir

from cifar_lightning.cluster import check_one_job_shape
from cifar_lightning.distributed import cluster_plugins, requeue_checkpoint
from tests.conftest import CONF_DIR
from tests.helpers import assert_refused, run_entry_point

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[cluster]'")


def launcher_config(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose("train", overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True)


def test_slurm_launcher_asks_for_one_task_per_device():
    cfg = launcher_config("trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2", "trainer.accelerator=gpu")
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)
    assert launcher.max_num_timeout > 0 and launcher.signal_delay_s > 0  # submitit requeues
    for key in ("partition", "cpus_per_task", "mem_gb", "timeout_min", "array_parallelism"):
        assert key in launcher
    cpu = launcher_config("trainer.accelerator=cpu").hydra.launcher
    assert (cpu.nodes, cpu.tasks_per_node, cpu.gpus_per_node) == (1, 1, None)


def test_lightning_auto_requeue_is_off_inside_slurm(monkeypatch):
    variables = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "7"}
    for key in variables:
        monkeypatch.delenv(key, raising=False)
    assert cluster_plugins() == []
    for key, value in variables.items():  # a Slurm job of 2 tasks, as srun starts them
        monkeypatch.setenv(key, value)
    (environment,) = cluster_plugins()
    assert environment.auto_requeue is False  # submitit alone requeues


def test_only_a_submitit_job_continues_from_its_last_checkpoint(tmp_path, monkeypatch):
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    assert requeue_checkpoint(tmp_path) is None
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    assert requeue_checkpoint(tmp_path) is None  # a first attempt: nothing saved yet
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_bytes(b"")
    assert requeue_checkpoint(tmp_path) == last
    monkeypatch.delenv("SUBMITIT_EXECUTOR")
    assert requeue_checkpoint(tmp_path) is None  # outside submitit a run directory is new


def test_a_sweep_over_what_sizes_a_job_is_refused_before_submitting(tmp_path):
    # Slurm's nodes, tasks and GPUs follow the command line's trainer.* once per sweep: a job of another size
    # would fail in Lightning ("devices=1 ... --ntasks-per-node=2"). No cluster is needed: nothing is submitted.
    result = run_entry_point(
        "train.py", "-m", "hydra/launcher=slurm", "trainer=ddp", "trainer.devices=1,2", f"paths.log_dir={tmp_path}"
    )
    assert_refused(result, "the sweep's jobs differ in trainer.devices (1, 2)", "one sweep per value")
    assert not list(tmp_path.rglob("*_submitted.pkl"))
    check_one_job_shape([["seed=0", "trainer.devices=2"], ["seed=1", "trainer.devices=2"]])  # one size: submitted
