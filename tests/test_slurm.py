"""Cluster jobs through submitit: the Slurm launcher's settings, and a real sweep through
hydra/launcher=local (submitit's local executor, the code path of hydra/launcher=slurm)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from cifar_lightning.distributed import cluster_plugins, requeue_checkpoint
from cifar_lightning.runs import RunDir, read_metrics
from tests.conftest import CONF_DIR, QUIET, ROOT
from tests.test_resume import checkpoint_position

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


@pytest.mark.slow  # two submitit jobs (~43 s alone); CI runs it after the default run
def test_a_sweep_through_submitit_local_runs_each_job_in_its_own_directory(data_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run(
        [
            sys.executable,
            "train.py",
            "-m",
            "hydra/launcher=local",
            "seed=0,1",
            "experiment=report_base",
            "model.batch_norm=all",
            "optim.lr=0.05",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=3",
            "trainer.limit_val_batches=1",
            f"data.data_dir={data_dir}",
            f"paths.log_dir={tmp_path}",
            *QUIET,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    assert "Submitit 'local' sweep output dir" in result.stdout + result.stderr
    for job, seed in (("0", 0), ("1", 1)):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["seed"] == seed and metrics["world_size"] == 1
        assert sum(map(sum, metrics["test_confusion"])) == 10000
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file()
    assert len(list((sweep / ".submitit").glob("*/*_submitted.pkl"))) == 2  # two submitit jobs


# --- issue 11: a job preempted in epoch 2 is requeued by submitit and ends as an uninterrupted run ---


def children(pid: int) -> list[int]:
    """The child processes of `pid` (empty once it has ended)."""
    try:
        return [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def kill_group(process: subprocess.Popen) -> None:
    """Kill a process started in its own session, with whatever it started (submitit's controller, tasks)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=60)


REQUEUE_RUN = [
    "seed=0",
    "experiment=report_base",
    "trainer.max_epochs=3",
    "trainer.limit_train_batches=60",
    "trainer.limit_val_batches=2",
    *QUIET,
]


@pytest.mark.slow
def test_a_preempted_submitit_job_is_requeued_and_ends_as_the_uninterrupted_run(data_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

    def start(name: str, *args: str) -> subprocess.Popen:
        with open(tmp_path / f"{name}.out", "w") as out:  # files, not pipes: nothing blocks on a full pipe
            return subprocess.Popen(
                [
                    sys.executable,
                    "train.py",
                    *args,
                    *REQUEUE_RUN,
                    f"data.data_dir={data_dir}",
                    f"paths.log_dir={tmp_path / name}",
                ],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(name: str) -> str:
        return (tmp_path / f"{name}.out").read_text()[-3000:]

    # The reference: the same run, uninterrupted, as a plain train.py run beside the sweep.
    reference = start("reference")
    sweep_process = start("sweep", "-m", "hydra/launcher=local")
    try:
        multiruns = tmp_path / "sweep" / "train" / "multiruns"
        deadline = time.monotonic() + 600
        position = None
        while time.monotonic() < deadline and sweep_process.poll() is None:
            lasts = list(multiruns.glob("*/0/checkpoints/last.ckpt"))
            position = checkpoint_position(lasts[0]) if lasts else None
            if position is not None:
                break
            time.sleep(0.05)
        assert position is not None, f"no last.ckpt (sweep exit {sweep_process.poll()}):\n{output('sweep')}"
        assert position == (0, 60), f"last.ckpt was first seen at {position}, not at the end of epoch 1"
        (sweep,) = multiruns.iterdir()
        job = sweep / "0"
        (job_id,) = [p.name for p in (sweep / ".submitit").iterdir() if p.name.isdigit()]
        controller = int(job_id)  # submitit_local's job id is the pid of the job's controller process
        (task,) = children(controller)  # the process that runs the Hydra job: it handles USR2
        time.sleep(1.0)  # into epoch 2: 60 batches take several seconds
        assert checkpoint_position(job / "checkpoints" / "last.ckpt") == (0, 60), (
            "epoch 2 ended before the signal: the machine is too slow for 1 s"
        )
        os.kill(task, signal.SIGUSR2)  # what Slurm sends on a preemption (and before a time limit)
        while time.monotonic() < deadline and task in children(controller):
            time.sleep(0.05)
        assert task not in children(controller), "the job's task did not stop after SIGUSR2"
        assert checkpoint_position(job / "checkpoints" / "last.ckpt") == (0, 60), (
            "the signal came after epoch 2 had ended, or last.ckpt was damaged"
        )
        assert sweep_process.wait(timeout=max(1.0, deadline - time.monotonic())) == 0, output("sweep")
        assert reference.wait(timeout=max(1.0, deadline - time.monotonic())) == 0, output("reference")
    finally:
        for process in (reference, sweep_process):  # leftovers of a failed check
            kill_group(process)

    # submitit's log of the job (both attempts append to it): the signal, the requeue, a second start.
    submitit_log = (sweep / ".submitit" / job_id / f"{job_id}_0_log.out").read_text()
    assert "Caught signal SIGUSR2" in submitit_log and f"Requeued job {job_id}" in submitit_log, submitit_log[-3000:]
    assert submitit_log.count("Starting with JobEnvironment") == 2, submitit_log[-3000:]
    assert sorted(p.name for p in sweep.iterdir()) == [".submitit", "0", "multirun.yaml"]  # one job directory
    assert len(list(multiruns.iterdir())) == 1
    train_log = (job / "train.log").read_text()  # appended by the second attempt
    assert f"Requeued job {job_id}" in train_log
    assert [train_log.count(f"epoch {epoch}/3:") for epoch in (1, 2, 3)] == [1, 1, 1], train_log
    assert f"requeued job: resuming {job} from {job / 'checkpoints' / 'last.ckpt'} (written in epoch 1" in train_log
    requeued = read_metrics(RunDir(job))
    (reference_dir,) = (tmp_path / "reference" / "train" / "runs").iterdir()
    uninterrupted = read_metrics(RunDir(reference_dir))
    assert requeued["status"] == "completed" and uninterrupted["resumes"] == []
    assert requeued["resumes"] == [{"epoch": 1, "global_step": 60, "overrides": []}]  # from the end of epoch 1
    assert [row["epoch"] for row in requeued["history"]] == [1, 2, 3]
    for key in ("test_acc", "test_loss", "best_epoch", "best_val_loss", "epochs_run", "history", "test_confusion"):
        assert requeued[key] == uninterrupted[key], key
