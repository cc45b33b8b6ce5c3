"""Experiment tracking: logger=mlflow records each run (params, per-epoch and final metrics, tags naming
its checkpoints) where MLflow's own client reads it back, a resume continues its MLflow run, the runs
of one command share an experiment, and TensorBoard's HParams tab shows each run's config with its
final figures (read back through the HParams plugin itself)."""

import json
import shutil
from pathlib import Path

import pytest
from lightning.pytorch.loggers import TensorBoardLogger
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from tensorboard import context
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
from tensorboard.plugins import base_plugin
from tensorboard.plugins.hparams import api_pb2, backend_context, get_experiment, list_session_groups

from cifar_lightning import tracking
from cifar_lightning.errors import ConfigError
from cifar_lightning.resolvers import run_group, run_name
from cifar_lightning.resume import resume
from cifar_lightning.runs import RunDir
from cifar_lightning.training import build, train
from tests.conftest import QUIET, compose_train
from tests.helpers import run_entry_point

# Two epochs of two batches: val_loss gets two points, a resume to three epochs a third.
TWO_EPOCHS = [
    "experiment=report_base",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
]
RUN_STAMP = "2026-01-01_00-00-00_000000"


def compose_tracked(log_dir: Path, run_dir: Path, *overrides: str):
    """The train config of a run in run_dir under log_dir, with MLflow's default store ($MLFLOW_TRACKING_URI unset)."""
    with pytest.MonkeyPatch.context() as env:
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        cfg = compose_train([*QUIET, f"paths.log_dir={log_dir}", *overrides], run_dir)
        OmegaConf.resolve(cfg.logger)  # the default tracking_uri reads the environment: resolve it now
    return cfg


def mlflow_record(tracking_uri: str, experiment_name: str) -> dict:
    """Everything the tests read of the experiment's (only) MLflow run, read once."""
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    (run,) = client.search_runs([experiment.experiment_id])
    return {
        "experiment": experiment,
        "run": run,
        "val_loss": client.get_metric_history(run.info.run_id, "val_loss"),
        "artifacts": [info.path for info in client.list_artifacts(run.info.run_id)],
    }


@pytest.fixture(scope="module")
def mlflow_run(tmp_path_factory, data_dir) -> dict:
    """One tiny `logger=mlflow` run, its metrics.json and its MLflow record as read right after it ended."""
    log_dir = tmp_path_factory.mktemp("tracking") / "logs"
    run_dir = log_dir / "train" / "runs" / RUN_STAMP
    cfg = compose_tracked(log_dir, run_dir, f"data.data_dir={data_dir}", "logger=mlflow", *TWO_EPOCHS)
    metrics = train(cfg)
    record = mlflow_record(cfg.logger.mlflow.tracking_uri, "train/runs")
    return {"cfg": cfg, "log_dir": log_dir, "run_dir": run_dir, "metrics": metrics, **record}


# --- naming ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "run_dir, group",
    [
        ("logs/train/runs/2026-01-01_00-00-00", "train/runs"),
        ("logs/train/multiruns/2026-01-01_00-00-00/3", "train/multiruns/2026-01-01_00-00-00"),
        ("logs/train/hpo/lr_study/trial_7", "train/hpo/lr_study"),
        ("logs/one_run", "logs"),
    ],
)
def test_runs_are_grouped_by_their_folder_in_the_log_dir(run_dir, group, tmp_path):
    assert run_group(str(tmp_path / run_dir), str(tmp_path / "logs")) == group
    assert run_name(str(tmp_path / run_dir)) == Path(run_dir).name


def test_a_run_outside_the_log_dir_is_grouped_by_its_parents_path(tmp_path):
    assert run_group(str(tmp_path / "elsewhere" / "run"), str(tmp_path / "logs")) == (tmp_path / "elsewhere").as_posix()


def test_mlflow_alone_and_with_tensorboard_compose(tmp_path, monkeypatch):
    log_dir, run_dir = tmp_path / "logs", tmp_path / "logs" / "train" / "multiruns" / "2026-01-01" / "4"
    cfg = compose_tracked(log_dir, run_dir, "logger=mlflow")
    assert list(cfg.logger) == ["mlflow"]
    mlflow = cfg.logger.mlflow
    assert mlflow.tracking_uri == f"sqlite:///{log_dir}/mlflow.db"
    assert mlflow.artifact_location == f"{log_dir}/mlruns"
    assert (mlflow.experiment_name, mlflow.run_name) == ("train/multiruns/2026-01-01", "4")
    both = compose_tracked(log_dir, run_dir, "logger=[tensorboard,mlflow]")
    assert list(both.logger) == ["tensorboard", "mlflow"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert compose_train(["logger=mlflow"], run_dir).logger.mlflow.tracking_uri == "http://tracking.example:5000"


# --- an MLflow run, read back with MLflow's client ---------------------------------------------------


def test_logger_mlflow_records_params_and_per_epoch_metrics(mlflow_run):
    run, cfg = mlflow_run["run"], mlflow_run["cfg"]
    assert mlflow_run["experiment"].name == "train/runs"
    assert run.info.run_name == RUN_STAMP and run.info.status == "FINISHED"
    params = run.data.params
    assert float(params["optim.lr"]) == cfg.optim.lr
    assert params["trainer.max_epochs"] == "2" and params["model._target_"] == cfg.model._target_
    assert params["logger.mlflow.experiment_name"] == "train/runs"
    history = mlflow_run["val_loss"]
    assert len(history) == 2 and history[0].step < history[1].step
    epochs = json.loads((mlflow_run["run_dir"] / "metrics.json").read_text())["history"]
    assert [point.value for point in history] == pytest.approx([row["val_loss"] for row in epochs])


def test_logger_mlflow_records_the_final_figures_and_checkpoints(mlflow_run):
    run, metrics, run_dir = mlflow_run["run"], mlflow_run["metrics"], mlflow_run["run_dir"]
    saved = json.loads((run_dir / "metrics.json").read_text())
    for key in tracking.FINAL_FIGURES:
        assert run.data.metrics[key] == pytest.approx(saved[key]), key
    assert run.data.metrics["test_acc"] == saved["test_acc"] == metrics["test_acc"]
    tags = run.data.tags
    assert tags["status"] == "completed" and tags["recipe"] == "report_base"
    assert tags["run_dir"] == str(run_dir.resolve())
    assert tags["best_checkpoint"] == saved["best_checkpoint"] and Path(tags["best_checkpoint"]).is_file()
    assert tags["last_checkpoint"] == str(run_dir / "checkpoints" / "last.ckpt")
    assert mlflow_run["artifacts"] == ["metrics.json"]
    artifact_root = mlflow_run["log_dir"].resolve() / "mlruns" / run.info.run_id / "artifacts"
    assert json.loads((artifact_root / "metrics.json").read_text()) == saved


def test_a_resumed_run_continues_its_mlflow_run(mlflow_run):
    resume(mlflow_run["run_dir"], ["trainer.max_epochs=3"])
    again = mlflow_record(mlflow_run["cfg"].logger.mlflow.tracking_uri, "train/runs")  # still one run
    run = again["run"]
    assert run.info.run_id == mlflow_run["run"].info.run_id and run.info.status == "FINISHED"
    assert len(again["val_loss"]) == 3 and run.data.metrics["epochs_run"] == 3
    assert run.data.params["trainer.max_epochs"] == "2"  # params are write-once; metrics.json has the resume


# --- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri, detail",
    [
        ("notascheme://somewhere", "cannot open the MLflow tracking store notascheme://somewhere"),
        ("http://127.0.0.1:9", "the MLflow tracking server http://127.0.0.1:9 does not answer"),
    ],
)
def test_an_unusable_tracking_store_is_refused_before_training(uri, detail, tmp_path):
    log_dir = tmp_path / "logs"
    cfg = compose_tracked(log_dir, log_dir / "run", "logger=mlflow", f"logger.mlflow.tracking_uri={uri}")
    with pytest.raises(ConfigError, match="invalid `logger.mlflow` config") as error:
        build(cfg)
    assert detail in str(error.value) and "logger.mlflow.tracking_uri=" in str(error.value)


@pytest.mark.parametrize(
    "uri, fix",
    [
        ("http://me:s3cret@127.0.0.1:9", "export MLFLOW_TRACKING_USERNAME=<user> and MLFLOW_TRACKING_PASSWORD="),
        ("postgresql://me:s3cret@127.0.0.1/mlflow", "export PGPASSWORD=<password>"),
    ],
)
def test_a_password_in_the_tracking_uri_is_refused_before_training(uri, fix, tmp_path):
    log_dir = tmp_path / "logs"
    cfg = compose_tracked(log_dir, log_dir / "run", "logger=mlflow", f"logger.mlflow.tracking_uri='{uri}'")
    with pytest.raises(ConfigError, match=r"logger\.mlflow\.tracking_uri holds a password inside its URL") as error:
        build(cfg)  # before MLflow opens the store or asks the server: nothing is sent or recorded
    assert fix in str(error.value) and "The run stopped before training" in str(error.value)
    assert "s3cret" not in str(error.value) and not (log_dir / "mlruns").exists()


def test_missing_mlflow_is_refused_with_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setattr(tracking, "find_spec", lambda name: None)
    cfg = compose_tracked(tmp_path / "logs", tmp_path / "logs" / "run", "logger=mlflow")
    with pytest.raises(ConfigError, match=r'mlflow package, which is not installed: pip install -e "\.\[tracking\]"'):
        build(cfg)


# --- TensorBoard's HParams tab --------------------------------------------------------------------


def hparams_tab(log_dir: Path) -> tuple[api_pb2.Experiment, list[api_pb2.SessionGroup]]:
    """What TensorBoard's HParams tab shows for log_dir: its columns, and one group per run."""
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(log_dir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(log_dir))
    plugin = backend_context.Context(base_plugin.TBContext(logdir=str(log_dir), data_provider=provider))
    request = context.RequestContext()
    experiment = get_experiment.Handler(request, plugin, "", api_pb2.GetExperimentRequest()).run()
    statuses = [api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS, api_pb2.STATUS_FAILURE, api_pb2.STATUS_RUNNING]
    query = api_pb2.ListSessionGroupsRequest(start_index=0, slice_size=10, allowed_statuses=statuses)
    return experiment, list(list_session_groups.Handler(request, plugin, "", query).run().session_groups)


def tensorboard_run(run_dir: Path, config: dict, val_losses: list[float], metrics: dict) -> None:
    """A run's TensorBoard events as training.py leaves them: config logged at the start, curves, then the outcome."""
    logger = TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False)
    logger.log_hyperparams(config)
    for step, loss in enumerate(val_losses):
        logger.log_metrics({"val_loss": loss}, step)
    logger.finalize("success")
    tracking.log_outcome_to_tensorboard(logger, metrics, step=len(val_losses))


def flat_keys(config: dict, prefix: str = "") -> set[str]:
    """A nested config's leaves as dotted keys (optim.lr), as the HParams tab names its columns."""
    keys = set()
    for key, value in config.items():
        name = f"{prefix}{key}"
        keys |= flat_keys(value, f"{name}.") if isinstance(value, dict) else {name}
    return keys


def test_hparams_tab_shows_each_runs_config_against_its_final_figures(tiny_run, tmp_path):
    """Row a is the shared tiny run's own TensorBoard events, as training wrote them: its whole config against its
    metrics.json figures. Row b, a diverged run written here, has other keys and no test figures."""
    run, metrics = tiny_run
    shutil.copytree(run / "tensorboard", tmp_path / "runs" / "a" / "tensorboard")
    diverged = {"status": "diverged", "test_acc": None, "best_val_loss": float("nan"), "epochs_run": 1}
    tensorboard_run(tmp_path / "runs" / "b", {"optim": {"lr": 9.0}, "ema": {"decay": None}}, [3.0], diverged)

    experiment, groups = hparams_tab(tmp_path)
    config = OmegaConf.to_container(OmegaConf.load(run / "config.yaml"))
    # Every run's keys are columns (not one run's), and so are the final figures beside the curves.
    assert "ema.decay" not in flat_keys(config)
    assert {info.name for info in experiment.hparam_infos} == flat_keys(config) | {"ema.decay"}
    figures = ("test_acc", "test_loss", "best_val_loss", "best_val_acc", "best_epoch", "epochs_run", "train_seconds")
    metric_columns = {info.name.tag for info in experiment.metric_infos}
    assert {*(f"hp/{key}" for key in figures), "val_loss"} <= metric_columns
    rows = {Path(group.name).parent.name: group for group in groups}
    assert set(rows) == {"a", "b"}
    a, b = rows["a"], rows["b"]
    assert set(a.hparams) == flat_keys(config)
    assert a.hparams["optim.lr"].number_value == 0.05 and a.hparams["model.batch_norm"].string_value == "all"
    assert a.hparams["trainer.limit_train_batches"].number_value == 10 and b.hparams["optim.lr"].number_value == 9.0
    assert b.hparams["ema.decay"].string_value == "None"
    shown = {value.name.tag: value.value for value in a.metric_values}
    assert {tag: value for tag, value in shown.items() if tag.startswith("hp/")} == pytest.approx(
        {f"hp/{key}": metrics[key] for key in figures}, rel=1e-6
    )
    assert shown["val_loss"] == pytest.approx(metrics["history"][-1]["val_loss"], rel=1e-6)
    assert {value.name.tag for value in b.metric_values} == {"hp/epochs_run", "val_loss"}  # no test, no nan
    assert [session.status for session in a.sessions] == [api_pb2.STATUS_SUCCESS]
    assert [session.status for session in b.sessions] == [api_pb2.STATUS_FAILURE]


class Rank:
    """The part of a Trainer record_outcome reads, on rank `rank`: only rank 0 may reach the loggers."""

    def __init__(self, rank: int, loggers: list) -> None:
        self.is_global_zero, self._loggers, self.global_step = rank == 0, loggers, 3

    @property
    def loggers(self) -> list:
        if not self.is_global_zero:
            pytest.fail("a non-zero rank reached the loggers")
        return self._loggers


def test_only_rank_zero_records_the_outcome(tmp_path):
    """Rank 0 gives its loggers the outcome (a session in TensorBoard's HParams tab); any other rank writes nothing."""
    run = RunDir(tmp_path / "run")
    logger = TensorBoardLogger(save_dir=str(run.root), name="tensorboard", version="", default_hp_metric=False)
    logger.log_hyperparams({"optim": {"lr": 0.1}})
    outcome = {"status": "completed", "test_acc": 0.5, "epochs_run": 1}
    tracking.record_outcome(Rank(1, [logger]), run, outcome)
    assert hparams_tab(tmp_path)[1] == []
    tracking.record_outcome(Rank(0, [logger]), run, outcome)
    (group,) = hparams_tab(tmp_path)[1]
    assert {value.name.tag: value.value for value in group.metric_values} == {"hp/test_acc": 0.5, "hp/epochs_run": 1}
    assert group.sessions[0].status == api_pb2.STATUS_SUCCESS and group.hparams["optim.lr"].number_value == 0.1


# --- train.py -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_sweeps_jobs_land_in_one_experiment_with_tensorboard_beside(tmp_path, data_dir, monkeypatch):
    log_dir = tmp_path / "logs"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # MLflow's default store, under the log folder
    overrides = [f"paths.log_dir={log_dir}", f"data.data_dir={data_dir}", *QUIET, *TWO_EPOCHS, "trainer.max_epochs=1"]
    result = run_entry_point("train.py", "-m", *overrides, "logger=[tensorboard,mlflow]", "seed=0,1")
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (log_dir / "train" / "multiruns").iterdir()
    client = MlflowClient(f"sqlite:///{log_dir}/mlflow.db")
    experiment = client.get_experiment_by_name(f"train/multiruns/{sweep.name}")
    runs = client.search_runs([experiment.experiment_id], order_by=["params.seed"])
    assert [(run.info.run_name, run.data.params["seed"], run.data.tags["status"]) for run in runs] == [
        ("0", "0", "completed"),
        ("1", "1", "completed"),
    ]
    _, groups = hparams_tab(log_dir)
    assert len(groups) == 2
