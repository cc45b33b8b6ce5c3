"""Experiment tracking beyond Lightning's: MLflowRunLogger (one MLflow run per run directory, continued by a
resume), and record_outcome (metrics.json's final figures to MLflow and TensorBoard's HParams tab).
"""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
from lightning.fabric.utilities.logger import _convert_params, _flatten_dict, _sanitize_params
from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from torch.utils.tensorboard.summary import hparams

from cifar_lightning.credentials import refuse_password
from cifar_lightning.errors import ConfigError, one_line
from cifar_lightning.runs import COMPLETED, RunDir
from cifar_lightning.runs.compare import finite

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

#: metrics.json's headline figures, logged as final metrics (MLflow) and HParams metrics (TensorBoard, as hp/<name>).
FINAL_FIGURES = ("test_acc", "test_loss", "best_val_loss", "best_val_acc", "best_epoch", "epochs_run", "train_seconds")
#: The tag that ties an MLflow run to its run directory (absolute path).
RUN_DIR_TAG = "run_dir"
_INSTALL_FIX = 'pip install -e ".[tracking]" installs it; or train without MLflow (logger=tensorboard)'


def check_tracking_server(tracking_uri: str) -> None:
    """Raise ConfigError when an http(s) tracking server does not answer (MLflow itself would retry for minutes)."""
    if not tracking_uri or not tracking_uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=10).close()
    except urllib.error.HTTPError:
        return  # something answered: MLflow reports what it makes of the answer
    except (urllib.error.URLError, OSError) as exc:
        raise ConfigError(
            f"the MLflow tracking server {tracking_uri} does not answer ({getattr(exc, 'reason', exc)}); start it "
            f"(mlflow server), or pass a reachable one, e.g. logger.mlflow.tracking_uri=sqlite:///logs/mlflow.db"
        ) from exc


class MLflowRunLogger(MLFlowLogger):
    """Lightning's MLFlowLogger, one MLflow run per run directory (tagged `run_dir`): a run started in a directory
    with an MLflow run in this experiment (a resume, a requeued job) continues it."""

    def __init__(self, run_dir: str, tracking_uri: str | None, **kwargs: Any) -> None:
        if find_spec("mlflow") is None:
            raise ConfigError(f"logger=mlflow needs the mlflow package, which is not installed: {_INSTALL_FIX}")
        self.run_dir = str(Path(run_dir).expanduser().resolve())
        tags = {key: str(value) for key, value in (kwargs.pop("tags", None) or {}).items() if value is not None}
        refuse_password(tracking_uri, "logger.mlflow.tracking_uri", stopped="The run stopped before training")
        check_tracking_server(tracking_uri)
        try:
            super().__init__(tracking_uri=tracking_uri, tags={**tags, RUN_DIR_TAG: self.run_dir}, **kwargs)
        except Exception as exc:  # MLflow opens the store here: unknown scheme, unwritable path, refused file store
            raise ConfigError(
                f"cannot open the MLflow tracking store {tracking_uri} ({type(exc).__name__}: {one_line(exc)}); "
                f"pass one that works, e.g. logger.mlflow.tracking_uri=sqlite:///logs/mlflow.db or http://<host>:5000 "
                f"(a running mlflow server)"
            ) from exc

    @property
    @rank_zero_experiment
    def experiment(self) -> MlflowClient:
        """The MLflow client, once the experiment exists and the run is found or created (rank 0 only)."""
        if not self._initialized and self._run_id is None:
            self._run_id = self._existing_run()
        return super().experiment

    def _existing_run(self) -> str | None:
        """This run directory's MLflow run in the experiment (created if need be), marked running again; or None."""
        client = self._mlflow_client
        experiment = client.get_experiment_by_name(self._experiment_name)
        if experiment is None:
            self._experiment_id = client.create_experiment(self._experiment_name, self._artifact_location)
            return None
        self._experiment_id = experiment.experiment_id
        quote = '"' if "'" in self.run_dir else "'"
        found = client.search_runs(
            [experiment.experiment_id], f"tags.{RUN_DIR_TAG} = {quote}{self.run_dir}{quote}", max_results=1
        )
        if not found:
            return None
        client.update_run(found[0].info.run_id, status="RUNNING")
        log.info("MLflow: continuing run %s of experiment %s", found[0].info.run_id, self._experiment_name)
        return found[0].info.run_id

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Any) -> None:
        """Log params as dotted keys (optim.lr), cut to MLflow's length limit; only new keys (params are write-once)."""
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        flat = _flatten_dict(_convert_params(params), delimiter=".")
        logged = self.experiment.get_run(self.run_id).data.params
        new = [Param(key, str(value)[:MAX_PARAM_VAL_LENGTH]) for key, value in flat.items() if key not in logged]
        for start in range(0, len(new), MAX_PARAMS_TAGS_PER_BATCH):
            self.experiment.log_batch(self.run_id, params=new[start : start + MAX_PARAMS_TAGS_PER_BATCH])


def final_figures(metrics: dict[str, Any]) -> dict[str, float]:
    """The FINAL_FIGURES metrics.json has as finite numbers (a diverged run has no test figures)."""
    return {key: float(metrics[key]) for key in FINAL_FIGURES if finite(metrics.get(key))}


def log_outcome_to_mlflow(logger: MLFlowLogger, run: RunDir, metrics: dict[str, Any], step: int) -> None:
    """The final figures as metrics, status and checkpoint paths as tags, metrics.json as an artifact."""
    from mlflow.entities import Metric, RunTag

    client, run_id = logger.experiment, logger.run_id
    logged = client.get_run(run_id).data.metrics  # test_acc/test_loss came with the test: not twice
    now = int(time.time() * 1000)
    figures = [
        Metric(key, value, now, step) for key, value in final_figures(metrics).items() if logged.get(key) != value
    ]
    tags = {
        "status": metrics.get("status"),
        "best_checkpoint": metrics.get("best_checkpoint"),
        "last_checkpoint": metrics.get("last_checkpoint"),
        RUN_DIR_TAG: str(run.root.expanduser().resolve()),
    }
    client.log_batch(run_id, metrics=figures, tags=[RunTag(key, str(value)) for key, value in tags.items() if value])
    if run.metrics.is_file():
        client.log_artifact(run_id, str(run.metrics))


def log_outcome_to_tensorboard(logger: TensorBoardLogger, metrics: dict[str, Any], step: int) -> None:
    """The run's hyperparameters and final figures (hp/<name>) as one session of TensorBoard's HParams tab (the
    session records alone: Lightning's experiment record would make the tab take one run's names for all)."""
    figures = {f"hp/{key}": value for key, value in final_figures(metrics).items()}
    logger.log_metrics(figures, step)
    params = _sanitize_params(_flatten_dict(_convert_params(logger.hparams), delimiter="."))
    _, session_start, _ = hparams(params, figures)
    writer = logger.experiment._get_file_writer()
    writer.add_summary(session_start)
    status = api_pb2.STATUS_SUCCESS if metrics.get("status") == COMPLETED else api_pb2.STATUS_FAILURE
    end = plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=time.time())
    content = plugin_data_pb2.HParamsPluginData(session_end_info=end, version=metadata.PLUGIN_DATA_VERSION)
    summary = metadata.create_summary_metadata(content)
    writer.add_summary(Summary(value=[Summary.Value(tag=metadata.SESSION_END_INFO_TAG, metadata=summary)]))
    logger.experiment.close()  # Lightning had closed it after the fit or test; writing reopened it


def record_outcome(trainer: L.Trainer, run: RunDir, metrics: dict[str, Any]) -> None:
    """Send a finished run's metrics.json to its trackers (rank 0); one that fails costs a warning, not the run."""
    if not trainer.is_global_zero:
        return
    errors: tuple[type[Exception], ...] = (OSError,)  # and MLflow's: a server gone away, a locked database
    if find_spec("mlflow") is not None:
        from mlflow.exceptions import MlflowException

        errors = (OSError, MlflowException)
    for logger in trainer.loggers:
        try:
            if isinstance(logger, MLFlowLogger):
                log_outcome_to_mlflow(logger, run, metrics, trainer.global_step)
            elif isinstance(logger, TensorBoardLogger):
                log_outcome_to_tensorboard(logger, metrics, trainer.global_step)
        except errors as exc:
            log.warning("could not record the run's outcome with %s: %s", type(logger).__name__, exc)
