"""hydra/launcher=slurm against a real Slurm cluster (scripts/local_cluster.sh up: this host as controller and
node, a second slurmd as a second node, accounting through slurmdbd). The jobs go through sbatch and srun;
their final states are read from Slurm's accounting (sacct), which is what submitit polls too, and which
keeps both runs of a requeued job id (sacct --duplicates), where scontrol forgets a job after MinJobAge."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cifar_lightning.runs import RunDir, read_metrics
from tests.conftest import QUIET, ROOT
from tests.services import SLURM_CLUSTER, require_slurm
from tests.test_ddp import SYNC_RUN, assert_matches_evaluation, train_py
from tests.test_resume import checkpoint_position

pytestmark = SLURM_CLUSTER

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[cluster]'")

# README's command, sized for this machine's node (2 CPUs): the defaults (8 CPUs, 32 GB) are a GPU node's.
SLURM = ["-m", "hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=4"]
TINY = [
    "experiment=report_base",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=1",
]
RUN_FILES = ("config.yaml", "metrics.json", "train.log", "checkpoints/best.ckpt", "checkpoints/last.ckpt", ".hydra")


@pytest.fixture(scope="module")
def cluster() -> None:
    require_slurm()


def train(log_dir: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """python train.py <args> (a sweep), quiet, logging under log_dir."""
    return train_py(*args, log_dir=log_dir, timeout=timeout)


def sweep_dir(log_dir: Path) -> Path:
    (found,) = (log_dir / "train" / "multiruns").iterdir()
    return found


def job_ids(sweep: Path) -> list[str]:
    """The Slurm job ids of a sweep's jobs, from submitit's folders: <array id>_<task> (beside the array's own
    <array id>), or <id> for a sweep of one job."""
    ids = sorted(p.name for p in (sweep / ".submitit").iterdir() if p.name[0].isdigit())
    return [i for i in ids if "_" in i] or ids


def sacct(job_id: str, *fields: str, every_run: bool = False) -> list[list[str]]:
    """Slurm's accounting record of a job's allocation (no steps): one row per run with every_run."""
    command = ["sacct", "-n", "-X", "-P", "-j", job_id, "-o", ",".join(fields), *(["-D"] if every_run else [])]
    return [row.split("|") for row in subprocess.check_output(command, text=True).splitlines()]


UNFINISHED = ("PENDING", "RUNNING", "COMPLETING", "REQUEUED")


def ended_sacct(job_id: str, *fields: str, every_run: bool = False, timeout: float = 60) -> list[list[str]]:
    """sacct once Slurm's accounting has recorded the job's end: slurmdbd learns of it after the job's own result
    file appears, which is what ends the sweep, so a job that is done can still read RUNNING for a moment."""

    def recorded() -> list[list[str]] | None:
        runs = sacct(job_id, "State", *fields, every_run=every_run)
        return None if not runs or runs[-1][0] in UNFINISHED else [run[1:] for run in runs]

    return wait_for(recorded, f"job {job_id}'s end in the accounting", timeout=timeout, every=0.5)


def assert_complete(job: Path) -> None:
    for name in RUN_FILES:
        assert (job / name).exists(), f"{job} has no {name}"
    assert read_metrics(RunDir(job))["status"] == "completed"


@pytest.mark.slow  # two Slurm jobs of a tiny run (about 25 s)
def test_readmes_sweep_runs_one_slurm_job_per_seed(cluster, data_dir, tmp_path):
    result = train(tmp_path, *SLURM, "seed=0,1", *TINY, f"data.data_dir={data_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = sweep_dir(tmp_path)
    ids = job_ids(sweep)
    assert len(ids) == 2 and ids[0].endswith("_0") and ids[1].endswith("_1")  # one array, a task per seed
    for job_id in ids:
        assert ended_sacct(job_id, "State", "ExitCode", "Partition") == [["COMPLETED", "0:0", "debug"]]
    for job, seed in (("0", 0), ("1", 1)):
        assert_complete(sweep / job)
        assert read_metrics(RunDir(sweep / job))["seed"] == seed
    assert "Bypassing sacct error" not in result.stdout + result.stderr  # submitit's polls were answered


def test_a_request_the_cluster_cannot_meet_is_refused_with_what_it_offers(cluster, tmp_path):
    for override, reason in (
        ("hydra.launcher.partition=gpu", "invalid partition specified: gpu"),
        ("hydra.launcher.cpus_per_task=64", "More processors requested than permitted"),
    ):
        result = train(tmp_path, "-m", "hydra/launcher=slurm", override, "seed=0", timeout=120)
        assert result.returncode == 2, result.stderr[-3000:]
        error = result.stderr.strip().splitlines()[-1]
        assert error.startswith("error: Slurm refused the sweep's jobs") and reason in error, error
        assert "debug*:" in error and "CPUs" in error and "MB per node" in error  # what the partitions offer
        assert "Traceback" not in result.stderr
    assert not list(tmp_path.rglob("metrics.json"))


# --- preemption: Slurm requeues a job in epoch 2; it resumes from its own last.ckpt ---

STEPS = 30  # per epoch: several seconds, time enough to stop a job in its epoch 2
REQUEUE_RUN = [
    "experiment=report_base",
    "trainer.max_epochs=3",
    f"trainer.limit_train_batches={STEPS}",
    "trainer.limit_val_batches=2",
]


def wait_for(condition, what: str, timeout: float = 300, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (found := condition()) is not None:
            return found
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def preempt(sweep: Path, how: dict[str, list[str]]) -> dict[str, str]:
    """Stop each sweep job of `how` in its epoch 2 with its command + its Slurm job id; once Slurm has requeued
    them, release them; return their job ids."""
    lasts = {job: sweep / job / "checkpoints" / "last.ckpt" for job in how}
    for job, last in lasts.items():
        assert wait_for(lambda: checkpoint_position(last), f"job {job}'s last.ckpt") == (0, STEPS)
    ids = {job: wait_for(lambda: next((i for i in job_ids(sweep) if i.endswith(f"_{job}")), None), job) for job in how}
    time.sleep(1.0)  # into epoch 2
    assert all(checkpoint_position(last) == (0, STEPS) for last in lasts.values()), (
        "epoch 2 ended: the machine is too slow"
    )
    for job, command in how.items():
        subprocess.run([*command, ids[job]], check=True)
    for job_id in ids.values():
        wait_for(lambda: "PENDING" in state(job_id) or None, f"job {job_id} to be requeued", every=0.5)
    assert all(checkpoint_position(last) == (0, STEPS) for last in lasts.values()), "epoch 2 ended before the stop"
    for job_id in ids.values():  # Slurm holds a requeued job back 2 minutes (BeginTime); as an administrator would:
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
    return ids


def state(job_id: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout


@pytest.mark.slow  # three 3-epoch jobs, two of them preempted (about 2 minutes)
def test_preempted_jobs_resume_from_their_last_checkpoint_and_end_as_the_uninterrupted_run(cluster, data_dir, tmp_path):
    # One sweep, three jobs of the same run: job 0 is requeued by Slurm itself (scontrol requeue: SIGTERM, as a
    # preemption with PreemptMode=REQUEUE), job 1 gets the signal Slurm sends before a time limit (USR2:
    # submitit checkpoints and requeues it), job 2 runs uninterrupted.
    command = [sys.executable, "train.py", *SLURM, "seed=0,0,0", *REQUEUE_RUN, f"data.data_dir={data_dir}"]
    log = tmp_path / "sweep.out"
    with open(log, "w") as out:
        sweep_process = subprocess.Popen(
            [*command, f"paths.log_dir={tmp_path}", *QUIET], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        multiruns = tmp_path / "train" / "multiruns"
        sweep = wait_for(lambda: next(multiruns.iterdir(), None) if multiruns.is_dir() else None, "the sweep")
        ids = preempt(sweep, {"0": ["scontrol", "requeue"], "1": ["scancel", "--signal=USR2"]})
        requeued, signalled = ids["0"], ids["1"]
        assert sweep_process.wait(timeout=500) == 0, log.read_text()[-3000:]
    finally:
        if sweep_process.poll() is None:  # a failed check: end the sweep and its jobs
            sweep_process.kill()
            subprocess.run(["scancel", "--name", "train"], check=False)

    # Slurm's own record of each preempted job: both runs of the one job id, and a restart count of 1.
    for job_id in (requeued, signalled):
        runs = ended_sacct(job_id, "State", every_run=True)
        assert [state for (state,) in runs] == ["REQUEUED", "COMPLETED"], runs
        assert "Restarts=1" in subprocess.check_output(["scontrol", "show", "job", job_id], text=True)
    assert "Bypassing sacct error" not in log.read_text()
    submitit = (sweep / ".submitit" / signalled / f"{signalled}_0_log.out").read_text()
    assert "Caught signal SIGUSR2" in submitit and f"Requeued job {signalled}" in submitit, submitit[-3000:]

    uninterrupted = read_metrics(RunDir(sweep / "2"))
    assert uninterrupted["resumes"] == []
    for job, job_id in (("0", requeued), ("1", signalled)):
        run = sweep / job
        assert_complete(run)
        submitit_log = (sweep / ".submitit" / job_id / f"{job_id}_0_log.out").read_text()
        assert submitit_log.count("Starting with JobEnvironment") == 2, submitit_log[-3000:]  # both attempts kept
        train_log = (run / "train.log").read_text()  # appended by the second attempt
        assert [train_log.count(f"epoch {epoch}/3:") for epoch in (1, 2, 3)] == [1, 1, 1], train_log
        assert f"resuming {run} from {run / 'checkpoints' / 'last.ckpt'} (written in epoch 1" in train_log
        metrics = read_metrics(RunDir(run))
        assert metrics["resumes"] == [{"epoch": 1, "global_step": STEPS, "overrides": []}]
        for key in ("test_acc", "test_loss", "best_epoch", "best_val_loss", "epochs_run", "history", "test_confusion"):
            assert metrics[key] == uninterrupted[key], (job, key)


# --- DDP under Slurm: srun starts one task per process, Lightning reads the ranks from Slurm ---


@pytest.mark.slow  # two DDP jobs, one after the other on the 2-CPU node (about 60 s)
def test_ddp_jobs_on_one_node_and_on_two_nodes_score_like_evaluate(cluster, data_dir, tmp_path):
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "seed=0", *SYNC_RUN, f"data.data_dir={data_dir}"]
    host = os.uname().nodename.split(".")[0]  # local_cluster.sh's nodes: <host>, and <host>-2 (a second slurmd)
    shapes = {  # name: (launcher and trainer overrides, nodes Slurm gave the job)
        "one_node": (["trainer.devices=2"], [host]),
        "two_nodes": (
            ["hydra.launcher.partition=multinode", "trainer.devices=1", "trainer.num_nodes=2"],
            [host, f"{host}-2"],
        ),
    }
    for name, (overrides, _) in shapes.items():
        result = train(tmp_path / name, *SLURM, *overrides, *ddp)
        assert result.returncode == 0, result.stderr[-3000:]
    for name, (_, nodes) in shapes.items():
        sweep = sweep_dir(tmp_path / name)
        (job_id,) = job_ids(sweep)
        assert ended_sacct(job_id, "State", "NNodes", "NodeList") == [["COMPLETED", str(len(nodes)), ",".join(nodes)]]
        metrics = assert_matches_evaluation(sweep / "0", data_dir, tmp_path / f"eval_{name}")
        assert metrics["world_size"] == 2
        assert len(list(sweep.rglob("metrics.json"))) == 1  # rank 0 alone wrote it
