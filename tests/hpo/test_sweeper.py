"""The Optuna sweeper in-process, in seconds: Hydra composes `train.py -m hparams_search=report_cnn` and runs the
real sweeper, study and launcher (Hydra's basic one), but each trial's job is a stub instead of train.py: it
reports to the study as a training run does (cifar_lightning.hpo.trial), may be pruned by the study's pruner,
and writes the metrics.json the sweeper reads. Covered: ask/tell, a crashed trial (failed, counted, the sweep
goes on), a killed worker's trial (retried with its parameters), a pruned trial, and Ctrl-C mid-sweep (the
told trials kept, the unfinished ones enqueued again, a warning; re-running the command finishes the study)."""

import copy
import json
import logging
import math
import time
from pathlib import Path

import optuna
import pytest
from hydra._internal.hydra import Hydra
from hydra._internal.utils import create_config_search_path
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from omegaconf import OmegaConf
from optuna.storages import RetryFailedTrialCallback
from optuna.trial import TrialState

from cifar_lightning.hpo.space import build_space
from cifar_lightning.hpo.study import (
    FAILED,
    INTERRUPTED,
    OVERRIDES,
    RUN_DIR,
    STATUS,
    build_sampler,
    counted,
    default_storage,
    load_study,
    open_storage,
    open_study,
    trial_id,
)
from cifar_lightning.runs import COMPLETED, METRICS_SCHEMA_VERSION, PRUNED
from tests.conftest import CONF_DIR

# Optuna flags its heartbeat and retry helpers experimental, and asks for Study.optimize with a heartbeat.
pytestmark = [
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
    pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize"),
]

#: conf/hparams_search/report_cnn.yaml's space, as the sweeper reads it (Optuna distributions).
SPACE = build_space(OmegaConf.load(CONF_DIR / "hparams_search" / "report_cnn.yaml").hydra.sweeper.params, [])[0]


def objective(params: dict[str, float]) -> float:
    """The stub's best_val_loss: a function of the trial's parameters alone, so a told value can be checked."""
    return (
        (math.log10(params["optim.lr"]) + 2) ** 2 + params["model.dropout"] - math.log10(params["optim.weight_decay"])
    )


class StubTrain:
    """train.py's part in a trial, without training: what it was given, two epochs reported to the study (as the
    pruning callback does), then metrics.json with its status, as training.py writes it.

    Trial `crash` raises (train.py would log the error and leave no metrics.json), trial `worse` reports a far
    higher loss than any other (the median pruner stops it), trial `interrupt` gets Ctrl-C."""

    def __init__(self, crash: int | None = None, worse: int | None = None, interrupt: int | None = None) -> None:
        self.crash, self.worse, self.interrupt = crash, worse, interrupt
        self.jobs: dict[int, dict[str, float]] = {}  # trial number -> the values its config held

    def __call__(self, cfg) -> None:
        number = cfg.hpo.trial
        self.jobs[number] = {key: float(OmegaConf.select(cfg, key)) for key in SPACE}
        if number == self.interrupt:
            raise KeyboardInterrupt
        if number == self.crash:
            raise RuntimeError("the stub's training crashed")
        study = load_study(cfg.hpo.storage, cfg.hpo.study)
        trial = optuna.trial.Trial(study, trial_id(study, number))
        status = COMPLETED
        for epoch in range(2):
            trial.report(100.0 if number == self.worse else 1.0, epoch)  # ties are never pruned
            if trial.should_prune():
                status = PRUNED
                break
        record = {"schema_version": METRICS_SCHEMA_VERSION, "status": status}
        if status == COMPLETED:
            record["best_val_loss"] = objective(self.jobs[number])
        (Path(HydraConfig.get().runtime.output_dir) / "metrics.json").write_text(json.dumps(record))


def sweep(log_dir: Path, stub: StubTrain, *overrides: str) -> None:
    """`python train.py -m hparams_search=report_cnn <overrides>` in this process, each job run by `stub`; Hydra's
    global state (the job's HydraConfig, ...) is put back afterwards."""
    state = copy.deepcopy(Singleton.get_state())
    GlobalHydra.instance().clear()
    hydra = Hydra.create_main_hydra2("train", create_config_search_path(f"file://{CONF_DIR}"))
    try:
        hydra.multirun(
            "train",
            stub,
            [
                "hparams_search=report_cnn",
                f"paths.log_dir={log_dir}",
                "hydra/job_logging=none",
                "hydra/hydra_logging=none",
                "hydra.sweeper.pruner.n_startup_trials=2",
                "hydra.sweeper.pruner.n_warmup_steps=0",
                *overrides,
            ],
            with_log_configuration=False,
        )
    finally:
        GlobalHydra.instance().clear()
        Singleton.set_state(state)


def trials_in(sweep_dir: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="report_cnn", storage=default_storage(sweep_dir)).get_trials()


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, StubTrain, list[optuna.trial.FrozenTrial]]:
    """A 4-trial study, started after a worker was killed mid-trial: trial 0 (killed, its heartbeat stale), its
    retry 1, 2, 3 crashed, 4 pruned. Returns the sweep directory, the stub and the trials."""
    log_dir = tmp_path_factory.mktemp("sweep") / "logs"
    sweep_dir = log_dir / "train" / "hpo" / "report_cnn"
    storage = open_storage(default_storage(sweep_dir), heartbeat_interval=1)
    study = open_study(storage, "report_cnn", "val_loss", "minimize", build_sampler(None), None)
    killed = study.ask(SPACE)  # a trial whose worker died: running, and its heartbeat stops
    storage.record_heartbeat(killed._trial_id)
    time.sleep(2.2)  # stale after 2 x heartbeat_interval
    stub = StubTrain(crash=3, worse=4)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("cifar_lightning.hpo.report.PLOTS", {})  # hpo.md's plots: tests/hpo/test_report.py
        sweep(log_dir, stub, "hydra.sweeper.n_trials=4", "hydra.sweeper.heartbeat_interval=1")
    return sweep_dir, stub, trials_in(sweep_dir)


def test_each_trial_runs_its_drawn_values_and_is_told_its_objective(finished):
    sweep_dir, stub, trials = finished
    assert [t.number for t in trials] == list(range(5)) and counted(trials) == 4
    assert sorted(stub.jobs) == [1, 2, 3, 4]  # each asked trial ran once (0 was the killed worker's)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert [t.number for t in complete] == [1, 2]
    for trial in trials[1:]:
        assert stub.jobs[trial.number] == pytest.approx(trial.params, rel=1e-12)  # the job got what was asked
        assert trial.user_attrs[OVERRIDES] == [f"{key}={trial.params[key]!r}" for key in SPACE]
        assert trial.user_attrs[RUN_DIR] == str(sweep_dir / f"trial_{trial.number}")
    for trial in complete:
        assert trial.value == objective(trial.params) and trial.user_attrs[STATUS] == COMPLETED
    best = min(complete, key=lambda t: objective(t.params))
    assert f"## Best trial: {best.number}, val_loss {best.value:.4f}" in (sweep_dir / "hpo.md").read_text()


def test_a_killed_workers_trial_runs_again_with_its_parameters_and_only_the_retry_counts(finished):
    _, _, trials = finished
    killed, retry = trials[0], trials[1]
    assert killed.state == TrialState.FAIL and STATUS not in killed.user_attrs  # failed by its stale heartbeat
    assert RetryFailedTrialCallback.retried_trial_number(retry) == 0 and retry.params == killed.params
    assert retry.state == TrialState.COMPLETE


def test_a_pruned_trial_is_told_pruned_with_its_reports(finished):
    _, _, trials = finished
    pruned = trials[4]
    assert pruned.state == TrialState.PRUNED and pruned.user_attrs[STATUS] == PRUNED
    assert pruned.intermediate_values == {0: 100.0}  # reported, then stopped by the pruner
    assert all(t.state != TrialState.PRUNED for t in trials if t.number != 4)


def test_a_crashed_trial_fails_counts_and_the_sweep_goes_on(finished):
    _, _, trials = finished
    crashed = trials[3]
    assert crashed.state == TrialState.FAIL and crashed.user_attrs[STATUS] == FAILED
    assert not any(RetryFailedTrialCallback.retried_trial_number(t) == 3 for t in trials)  # ran to an outcome
    assert trials[4].state == TrialState.PRUNED  # the next trial ran


def test_ctrl_c_keeps_told_trials_and_the_rerun_finishes_the_interrupted_ones(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr("cifar_lightning.hpo.report.PLOTS", {})
    log_dir, sweep_dir = tmp_path / "logs", tmp_path / "logs" / "train" / "hpo" / "report_cnn"
    settings = ["hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2"]  # batches of 2: trials 0 and 1, 2 and 3
    first = StubTrain(interrupt=3)  # Ctrl-C in the batch's second job: trial 2 ran, but was not told yet
    with caplog.at_level(logging.WARNING, logger="cifar_lightning.hpo.sweeper"), pytest.raises(KeyboardInterrupt):
        sweep(log_dir, first, *settings)
    before = trials_in(sweep_dir)
    assert [t.state for t in before[:4]] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL] * 2
    assert [t.user_attrs[STATUS] for t in before[:4]] == [COMPLETED] * 2 + [INTERRUPTED] * 2
    retries = before[4:]  # enqueued with the same parameters
    assert [RetryFailedTrialCallback.retried_trial_number(t) for t in retries] == [2, 3]
    assert [t.state for t in retries] == [TrialState.WAITING] * 2
    assert counted(before) == 2  # interrupted trials do not count: their retries will
    for number in (2, 3):
        assert f"trial {number} interrupted: it will run again when the study continues" in caplog.text

    second = StubTrain()
    sweep(log_dir, second, *settings)  # the same command again
    after = trials_in(sweep_dir)
    assert sorted(second.jobs) == [4, 5]  # only the retries ran: the completed trials were kept
    assert [(t.state, t.params, t.value) for t in after[:2]] == [(t.state, t.params, t.value) for t in before[:2]]
    for retry, interrupted in zip(after[4:], before[2:4]):
        assert retry.state == TrialState.COMPLETE and retry.params == interrupted.params
        assert second.jobs[retry.number] == first.jobs[interrupted.number]  # the very values the first go ran
    assert counted(after) == 4 and len(after) == 6
    assert "## Best trial" in (sweep_dir / "hpo.md").read_text()


@pytest.mark.parametrize(
    "overrides, setting",
    [
        (["hydra.sweeper.storage='postgresql://optuna:s3cret@127.0.0.1/optuna'"], "hydra.sweeper.storage"),
        (
            ["logger=mlflow", "logger.mlflow.tracking_uri='http://me:s3cret@mlflow.example:5000'"],
            "logger.mlflow.tracking_uri",
        ),
    ],
)
def test_a_password_in_a_url_stops_the_search_before_anything_is_written(tmp_path, capsys, overrides, setting):
    stub = StubTrain()
    with pytest.raises(SystemExit) as stopped:
        sweep(tmp_path / "logs", stub, "hydra.sweeper.n_trials=1", *overrides)
    error = capsys.readouterr().err
    assert stopped.value.code == 2 and error.startswith(f"error: {setting} holds a password inside its URL")
    assert "Nothing was run or written" in error and "s3cret" not in error
    assert stub.jobs == {} and not (tmp_path / "logs").exists()  # no sweep dir, multirun.yaml, study or trial
