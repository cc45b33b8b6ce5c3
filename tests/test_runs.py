"""The run directory's one owner (cifar_lightning/runs/__init__.py): paths that agree with the configs, and
metrics.json's schema."""

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf

from cifar_lightning import runs
from cifar_lightning.runs import RunDir, RunDirError, read_metrics, write_metrics
from tests.conftest import CONF_DIR, ROOT, compose_train


def test_the_configs_write_where_the_runs_package_says(tmp_path):
    cfg = compose_train([], tmp_path)
    run = RunDir(tmp_path)
    checkpoint = cfg.callbacks.model_checkpoint
    assert Path(checkpoint.dirpath) == run.checkpoints
    assert checkpoint.filename + ModelCheckpoint.FILE_EXTENSION == run.best_checkpoint.name
    assert checkpoint.save_last and ModelCheckpoint.CHECKPOINT_NAME_LAST + ".ckpt" == run.last_checkpoint.name
    tensorboard = cfg.logger.tensorboard
    assert Path(tensorboard.save_dir) / tensorboard.name / tensorboard.version == run.tensorboard
    assert Path(cfg.trainer.default_root_dir) == run.root


def test_hydra_log_file_and_resume_directories(tmp_path):
    # Hydra logs to <output_dir>/<job name>.log, and the job name of train.py is "train".
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose(config_name="train", return_hydra_config=True)
    logging = OmegaConf.to_container(cfg.hydra.job_logging, resolve=False)
    assert logging["handlers"]["file"]["filename"] == "${hydra.runtime.output_dir}/${hydra.job.name}.log"
    assert runs.LOG_FILE == Path(ROOT / "train.py").stem + ".log"
    run = RunDir(tmp_path / "run")
    assert runs.hydra_run_dir(None, "new") == "new"
    assert runs.hydra_run_dir(str(run.root), "new") == "new"  # nothing to resume there: a new directory
    assert runs.hydra_output_subdir(str(run.root), "T") == ".hydra"
    run.checkpoints.mkdir(parents=True)
    run.config.write_text("seed: 0\n")
    run.last_checkpoint.write_bytes(b"x")
    assert runs.hydra_run_dir(str(run.root), "new") == str(run.root.resolve())
    assert runs.hydra_output_subdir(str(run.root), "T") == ".hydra/resume-T"
    assert RunDir.of_checkpoint(run.last_checkpoint) == RunDir(run.root.resolve())


def test_metrics_json_has_a_schema_version_and_a_status(tmp_path):
    run = RunDir(tmp_path)
    written = write_metrics(run, {"status": "diverged", "test_acc": None, "divergence": {"loss": float("nan")}})
    text = run.metrics.read_text()
    assert text.startswith(f'{{\n  "schema_version": {runs.METRICS_SCHEMA_VERSION},')
    assert '"loss": "nan"' in text  # valid JSON, no NaN
    assert read_metrics(run) == written and written["status"] == "diverged"
    assert list(tmp_path.iterdir()) == [run.metrics]  # the temporary file was renamed into place
    with pytest.raises(ValueError, match="status"):
        write_metrics(run, {"test_acc": 0.5})


def test_metrics_files_of_other_versions_and_broken_ones_are_refused(tmp_path):
    run = RunDir(tmp_path)
    current = {"schema_version": runs.METRICS_SCHEMA_VERSION, "status": "completed", "history": [{"epoch": 1}]}
    run.metrics.write_text(json.dumps(current))
    assert read_metrics(run) == current and runs.history(run) == [{"epoch": 1}]
    for other in ({"test_acc": 0.6}, {"schema_version": 3, "status": "completed"}, {"schema_version": 99}):
        run.metrics.write_text(json.dumps(other))
        with pytest.raises(RunDirError, match=f"reads version {runs.METRICS_SCHEMA_VERSION} only"):
            read_metrics(run)
    run.metrics.write_text('{"test_acc": ')
    with pytest.raises(RunDirError, match="cannot be read"):
        read_metrics(run)
    assert runs.history(run) == []
    run.metrics.unlink()
    with pytest.raises(RunDirError, match="does not exist"):
        read_metrics(run)
