"""Every config composes and builds; the report's recipes hold the report's values; bad values
are refused before training with a one-line reason naming the config group.
"""


import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from cifar_lightning.errors import ConfigError
from cifar_lightning.models import MODELS
from cifar_lightning.training import build
from tests.conftest import CONF_DIR, compose_train

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def test_default_run_is_the_improved_recipe():
    assert compose_train([]).experiment_name == "seed_improved"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_builds(experiment, tmp_path):
    cfg = compose_train([f"experiment={experiment}"], tmp_path)
    datamodule, module, trainer, history = build(cfg)
    assert trainer.max_epochs == cfg.trainer.max_epochs


@pytest.mark.parametrize(
    "override",
    ["debug=fast_dev_run", "trainer=cpu", "scheduler=multistep", "scheduler=none", "callbacks.early_stopping=null"],
)
def test_options_compose_and_build(override, tmp_path):
    build(compose_train([override], tmp_path))


def test_seed_base_is_the_reports_base_run():
    cfg = compose_train(["experiment=seed_base"])
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (0.001, 0.9, 0.0)
    assert (cfg.data.batch_size, cfg.trainer.max_epochs) == (128, 10)
    assert (cfg.model.batch_norm, cfg.model.dropout) == ("none", 0.0)
    assert not cfg.scheduler
    assert (cfg.data.crop_padding, cfg.data.flip) == (0, False)


def test_seed_improved_is_the_reports_improved_run():
    cfg = compose_train(["experiment=seed_improved"])
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (0.0002, 0.9, 0.004)
    assert (cfg.data.batch_size, cfg.trainer.max_epochs) == (128, 20)
    assert (cfg.model.batch_norm, cfg.model.dropout) == ("all", 0.2)
    assert (cfg.scheduler.step_size, cfg.scheduler.gamma) == (16, 0.1)
    assert cfg.callbacks.early_stopping.monitor == "val_loss"
    assert cfg.callbacks.model_checkpoint.monitor == "val_loss"


def test_every_registered_model_has_a_config():
    configs = {p.stem for p in (CONF_DIR / "model").glob("*.yaml")}
    assert configs == set(MODELS)
    for name, cls in MODELS.items():
        cfg = compose_train([f"model={name}"])
        assert cfg.model._target_ == f"cifar_lightning.models.{cls.__name__}"


@pytest.mark.parametrize(
    "override, group, detail",
    [
        ("model.dropout=1.5", "model", "dropout must be a probability in [0, 1)"),
        ("model.batch_norm=some", "model", "batch_norm must be one of none, first, all"),
        ("optim.lr=-1", "optim", "Invalid learning rate"),
        ("optim.momentum=-0.5", "optim", "momentum"),
        ("data.val_fraction=0", "data", "val_fraction"),
        ("data.batch_size=0", "data", "batch_size"),
        ("trainer.max_epochs=-2", "trainer", "max_epochs"),
        ("seed=abc", "seed", "seed must be an integer"),
    ],
)
def test_invalid_values_are_refused_before_training(override, group, detail, tmp_path):
    with pytest.raises(ConfigError) as err:
        build(compose_train([override], tmp_path / "run"))
    message = str(err.value)
    assert f"invalid `{group}` config" in message and detail in message
    assert "\n" not in message
    assert not (tmp_path / "run").exists()


def test_unknown_key_is_refused_at_composition():
    with pytest.raises(ConfigCompositionException, match="model.dropot"):
        compose_train(["model.dropot=0.1"])


ABLATIONS = ["base", "improved", "no_scheduler", "no_l2", "no_batchnorm", "no_dropout"]


def test_ablation_all_sweeps_the_six_configurations_over_seeds():
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("train", overrides=["+ablation=all", "ablation.seeds=2", "hydra/launcher=joblib"],
                      return_hydra_config=True)  # fmt: skip
    assert cfg.hydra.sweeper.params.ablation.split(",") == ABLATIONS
    assert cfg.hydra.sweeper.params.seed == "range(2)"
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    assert cfg.hydra.callbacks.aggregate_ablation._target_ == "cifar_lightning.ablation.AggregateAblation"


@pytest.mark.parametrize(
    "name, expected",
    [
        ("base", {"experiment_name": "seed_base", "model.batch_norm": "none", "optim.lr": 0.001}),
        ("improved", {"experiment_name": "seed_improved", "model.batch_norm": "all", "model.dropout": 0.2}),
        ("no_scheduler", {"experiment_name": "seed_improved", "scheduler": {}, "optim.weight_decay": 0.004}),
        ("no_l2", {"optim.weight_decay": 0.0, "model.dropout": 0.2, "scheduler.step_size": 16}),
        ("no_batchnorm", {"model.batch_norm": "none", "model.dropout": 0.2, "optim.weight_decay": 0.004}),
        ("no_dropout", {"model.dropout": 0.0, "model.batch_norm": "all", "optim.lr": 0.0002}),
    ],
)
def test_each_ablation_changes_one_ingredient(name, expected, tmp_path):
    cfg = compose_train([f"+ablation={name}"], tmp_path)
    assert cfg.ablation.name == name
    for key, value in expected.items():
        assert OmegaConf.select(cfg, key) == value, key
    build(cfg)
