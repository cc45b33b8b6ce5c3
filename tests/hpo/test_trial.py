"""A trial's own side: a real tiny training that reports to its study and is pruned by the study's pruner."""

import pytest
from optuna.trial import TrialState

from cifar_lightning.errors import ConfigError, TrialPruned
from cifar_lightning.hpo.study import build_sampler, default_storage, open_storage, open_study
from cifar_lightning.runs import PRUNED, RunDir, read_metrics
from cifar_lightning.training import train

TINY = [
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
]
#: Prunes any trial whose validation loss is above 0: every trial, at its first epoch.
ALWAYS_PRUNE = {"_target_": "optuna.pruners.ThresholdPruner", "upper": 0.0}


def test_a_trial_reports_its_validation_loss_and_is_pruned(tmp_path, make_cfg):
    url = default_storage(tmp_path / "sweep")
    study = open_study(open_storage(url), "tiny", "val_loss", "minimize", build_sampler(None), ALWAYS_PRUNE)
    trial = study.ask()
    run = RunDir(tmp_path / "sweep" / "trial_0")
    cfg = make_cfg(*TINY, "hpo.study=tiny", f"hpo.storage='{url}'", f"hpo.trial={trial.number}", output_dir=run.root)
    with pytest.raises(TrialPruned, match="trial 0 of study 'tiny' was pruned after epoch 1"):
        train(cfg)
    metrics = read_metrics(run)
    assert metrics["status"] == PRUNED and metrics["test_acc"] is None
    assert metrics["pruned"]["epoch"] == 1 and metrics["hpo"] == {"study": "tiny", "trial": 0, "storage": url}
    reported = study.get_trials()[0]
    assert reported.state == TrialState.RUNNING  # the sweeper tells the outcome, from metrics.json
    assert list(reported.intermediate_values) == [0]
    assert reported.intermediate_values[0] == pytest.approx(metrics["pruned"]["value"])


def test_a_trial_needs_its_study(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match="hpo.trial=3 needs hpo.study and hpo.storage"):
        train(make_cfg(*TINY, "hpo.trial=3"))


def test_a_trial_with_a_password_in_its_storage_url_stops_before_training(make_cfg, tmp_path):
    run = RunDir(tmp_path / "sweep" / "trial_0")
    url = "postgresql://optuna:s3cret@127.0.0.1/optuna"
    cfg = make_cfg(*TINY, "hpo.study=tiny", f"hpo.storage='{url}'", "hpo.trial=0", output_dir=run.root)
    with pytest.raises(ConfigError, match=r"hpo\.storage holds a password .*The run stopped before training") as error:
        train(cfg)
    assert "s3cret" not in str(error.value) and "PGPASSWORD" in str(error.value)
    assert not run.root.exists() or not list(run.root.rglob("*"))  # no checkpoint, record or event file
