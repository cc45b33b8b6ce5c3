"""The search as a user runs it (python train.py -m hparams_search=...), with tiny trials: a killed study
resumes, trials run through other launchers, and bad input stops before any trial. Two workers sharing one
study (and hpo.md's command retraining the best trial) run on PostgreSQL: tests/hpo/test_postgres.py. Each test
starts train.py processes (about 10 s each), so they run with -m slow."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.storages import RetryFailedTrialCallback
from optuna.trial import TrialState

from cifar_lightning.hpo.study import STATUS, build_sampler, counted, default_storage, open_storage, open_study
from tests.conftest import QUIET
from tests.helpers import ROOT, assert_refused, run_entry_point

pytestmark = pytest.mark.slow

TINY = [
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "hydra.sweeper.heartbeat_interval=1",
    "hydra.sweeper.pruner.n_startup_trials=2",
]


def search_args(log_dir: Path, data_dir: Path, *overrides: str) -> list[str]:
    """train.py's arguments for a tiny search."""
    return [
        "-m",
        "hparams_search=report_cnn",
        f"data.data_dir={data_dir}",
        f"paths.log_dir={log_dir}",
        *QUIET,
        *TINY,
        *overrides,
    ]


def search_command(log_dir: Path, data_dir: Path, *overrides: str) -> list[str]:
    """The whole command, for workers started in the background (subprocess.Popen)."""
    return [sys.executable, "train.py", *search_args(log_dir, data_dir, *overrides)]


def run_search(log_dir: Path, data_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    return run_entry_point("train.py", *search_args(log_dir, data_dir, *overrides), timeout=900)


def trials_of(sweep_dir: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="report_cnn", storage=default_storage(sweep_dir)).get_trials()


def assert_no_duplicates(trials: list[optuna.trial.FrozenTrial], sweep_dir: Path) -> None:
    ran = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    params = [tuple(sorted(t.params.items())) for t in ran]
    assert len(set(params)) == len(params), params  # no configuration trained twice
    for trial in ran:  # each finished trial has its own run directory, with its own record
        record = yaml.safe_load((sweep_dir / f"trial_{trial.number}" / "metrics.json").read_text())
        assert record["hpo"]["trial"] == trial.number and record["status"] == trial.user_attrs[STATUS]


def test_a_killed_study_resumes_where_it_stopped(tmp_path, data_dir):
    sweep_dir = tmp_path / "logs" / "train" / "hpo" / "report_cnn"
    worker = subprocess.Popen(
        search_command(tmp_path / "logs", data_dir, "hydra.sweeper.n_trials=4"),
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # kill it while its second trial trains, the first one told
        time.sleep(0.5)
        if (sweep_dir / "optuna.db").exists():
            trials = trials_of(sweep_dir) if (sweep_dir / "trial_1").exists() else []
            if len(trials) == 2 and trials[0].state != TrialState.RUNNING and trials[1].state == TrialState.RUNNING:
                break
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    before = trials_of(sweep_dir)
    assert [t.state for t in before] == [before[0].state, TrialState.RUNNING]
    first_record = (sweep_dir / "trial_0" / "metrics.json").read_bytes()
    time.sleep(2.5)  # the killed trial's heartbeat goes stale (2 x heartbeat_interval)

    result = run_search(tmp_path / "logs", data_dir, "hydra.sweeper.n_trials=4")
    assert result.returncode == 0, result.stderr[-3000:]
    after = trials_of(sweep_dir)
    assert after[0].state == before[0].state and after[0].params == before[0].params  # kept, not redone
    assert (sweep_dir / "trial_0" / "metrics.json").read_bytes() == first_record
    killed = after[1]
    assert killed.state == TrialState.FAIL and STATUS not in killed.user_attrs
    retries = [t for t in after if RetryFailedTrialCallback.retried_trial_number(t) == 1]
    assert len(retries) == 1 and retries[0].params == killed.params  # run again with the same parameters
    assert counted(after) == 4 and len(after) == 5  # trial numbers went on: 0, (1 killed), 2, 3, 4
    assert all(t.state != TrialState.RUNNING for t in after)
    assert_no_duplicates(after, sweep_dir)
    assert "## Best trial" in (sweep_dir / "hpo.md").read_text()


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["model.dropotu=interval(0.0,0.5)"], "model.dropotu=0.0 does not compose into a train.py config"),
        (["model.dropout=interval(0.5,0.1)"], "search space of `model.dropout` is empty"),
        (["hydra.sweeper.sampler._target_=optuna.samplers.NoSuchSampler"], "unknown or invalid sampler"),
        (["hydra.sweeper.pruner._target_=optuna.pruners.NoSuchPruner"], "unknown or invalid pruner"),
        (["hydra.sweeper.storage='sqlite:////proc/no/optuna.db'"], "cannot be opened"),
        (["hydra.sweeper.objective=test_acc"], "objective must be one of val_loss, val_acc, got 'test_acc'"),
        (["hydra.sweeper.direction=maximize"], "val_loss improves when you minimize it"),
        (["hydra.sweeper.objective=val_acc", "hydra.sweeper.direction=maximize"], "minimizes val_loss, but the config"),
    ],
)
def test_bad_input_stops_before_any_trial(tmp_path, data_dir, overrides, expected):
    sweep_dir = tmp_path / "logs" / "train" / "hpo" / "report_cnn"
    open_study(
        open_storage(default_storage(sweep_dir)), "report_cnn", "val_loss", "minimize", build_sampler(None), None
    )
    assert_refused(run_search(tmp_path / "logs", data_dir, *overrides), expected)
    assert trials_of(sweep_dir) == [] and not list(sweep_dir.glob("trial_*"))


def test_hpo_trial_outside_a_search_is_refused(tmp_path, data_dir):
    result = run_entry_point(
        "train.py", f"data.data_dir={data_dir}", f"paths.log_dir={tmp_path}", "hpo.trial=3", timeout=300
    )
    assert_refused(result, "hpo.trial is set, but this is no sweep")


@pytest.mark.parametrize("launcher", ["joblib", "local"])
def test_trials_run_through_other_launchers(tmp_path, data_dir, launcher):
    """Two trials at a time in their own processes: joblib's, or submitit's (the Slurm launcher's code path)."""
    sweep_dir = tmp_path / "logs" / "train" / "hpo" / "report_cnn"
    result = run_search(
        tmp_path / "logs", data_dir, "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2", f"hydra/launcher={launcher}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    trials = trials_of(sweep_dir)
    assert len(trials) == 2 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert_no_duplicates(trials, sweep_dir)
