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
    assert compose_train([]).experiment_name == "report_improved"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_builds(experiment, tmp_path):
    cfg = compose_train([f"experiment={experiment}"], tmp_path)
    datamodule, module, trainer, history = build(cfg)
    assert trainer.max_epochs == cfg.trainer.max_epochs


def scheduler_of(module):
    return module.build_scheduler(module.build_optimizer(), total_steps=100)


def callback_types(trainer) -> set[str]:
    return {type(callback).__name__ for callback in trainer.callbacks}


def averaging_of(trainer):
    return next(c for c in trainer.callbacks if type(c).__name__ == "AveragedWeights")


def group_named(optimizer, name):
    return next(group for group in optimizer.param_groups if group["name"] == name)


# Each option, and what it must change in the objects build() makes from it.
OPTION_EFFECTS = {
    "debug=fast_dev_run": lambda dm, module, trainer: trainer.fast_dev_run in (True, 1),
    "trainer=cpu": lambda dm, module, trainer: trainer.strategy.root_device.type == "cpu",
    "scheduler=multistep": lambda dm, module, trainer: type(scheduler_of(module)).__name__ == "MultiStepLR",
    "scheduler=none": lambda dm, module, trainer: scheduler_of(module) is None,
    "callbacks.early_stopping=null": lambda dm, module, trainer: "EarlyStopping" not in callback_types(trainer),
    "~experiment model=resnet18": lambda dm, module, trainer: type(module.model).__name__ == "ResNet18",
    "~experiment model=fast_net": lambda dm, module, trainer: type(module.model).__name__ == "FastNet",
    "scheduler=warmup_linear": lambda dm, module, trainer: module.scheduler_factory.keywords["shape"] == "linear",
    "scheduler=warmup_cosine": lambda dm, module, trainer: module.scheduler_factory.keywords["shape"] == "cosine",
    "scheduler=one_cycle": lambda dm, module, trainer: module.scheduler_factory.keywords["shape"] == "one_cycle",
    "averaging=ema": lambda dm, module, trainer: averaging_of(trainer).mode == "ema",
    "averaging=lookahead": lambda dm, module, trainer: averaging_of(trainer).mode == "lookahead",
    "loss.label_smoothing=0.1": lambda dm, module, trainer: module.criterion.label_smoothing == 0.1,
    "loss=logitnorm": lambda dm, module, trainer: (
        type(module.criterion).__name__ == "LogitNorm" and module.criterion.t == 0.04
    ),
    "data.flip=alternating": lambda dm, module, trainer: dm.flip == "alternating",
    "data.translate=2": lambda dm, module, trainer: dm.translate == 2,
    "data.cutout=8": lambda dm, module, trainer: dm.cutout == 8,
    "data.on_device=false": lambda dm, module, trainer: dm.on_device is False,
    "module.norm_lr_scale=64": lambda dm, module, trainer: (
        group_named(module.build_optimizer(), "norm")["lr"] == 64 * module.build_optimizer().defaults["lr"]
    ),
    "module.weight_decay_scope=all": lambda dm, module, trainer: (
        group_named(module.build_optimizer(), "biases")["weight_decay"]
        == module.build_optimizer().defaults["weight_decay"]
    ),
    "module.compile=true": lambda dm, module, trainer: (
        hasattr(module.model, "_compiled_call_impl") and module.model._compiled_call_impl is not None
    ),
    "callbacks.model_checkpoint.every_n_train_steps=100": lambda dm, module, trainer: (
        trainer.checkpoint_callback.last_every_n_train_steps == 100
    ),
}


@pytest.mark.parametrize("override", OPTION_EFFECTS)
def test_options_compose_build_and_take_effect(override, tmp_path):
    datamodule, module, trainer, _ = build(compose_train(override.split(), tmp_path))
    assert OPTION_EFFECTS[override](datamodule, module, trainer), override


def test_fast94_is_airbench94s_recipe():
    cfg = compose_train(["experiment=fast94", "trainer.accelerator=cpu"])
    assert cfg.model._target_ == "cifar_lightning.models.FastNet" and list(cfg.model.widths) == [64, 256, 256]
    assert (cfg.data.batch_size, cfg.trainer.max_epochs, cfg.loss.label_smoothing) == (1024, 10, 0.2)
    assert (cfg.data.translate, cfg.data.flip, cfg.data.crop_padding, cfg.data.cutout) == (2, "alternating", 0, 0)
    assert (cfg.optim.momentum, cfg.optim.nesterov) == (0.85, True)
    # airbench: lr 11.5 and weight decay 0.0153 per 1024 summed examples, momentum-normalized.
    kilostep = 1024 * (1 + 1 / (1 - 0.85))
    assert cfg.optim.lr == pytest.approx(11.5 / kilostep * 1024, rel=1e-3)
    assert cfg.optim.weight_decay == pytest.approx(0.0153 * 1024 / kilostep / (11.5 / kilostep) / 1024, rel=1e-3)
    assert (cfg.module.norm_lr_scale, cfg.module.weight_decay_scope, cfg.module.test_tta) == (64.0, "all", 2)
    assert (cfg.scheduler.shape, cfg.scheduler.warmup, cfg.scheduler.start_factor, cfg.scheduler.end_factor) == (
        "linear",
        0.23,
        0.2,
        0.07,
    )
    assert (cfg.averaging.mode, cfg.averaging.every_n_steps, cfg.averaging.ramp_power) == ("lookahead", 5, 3.0)
    assert cfg.averaging.decay == pytest.approx(0.95**5, abs=1e-4)
    assert (list(cfg.callbacks.freeze_whiten_bias.names), cfg.callbacks.freeze_whiten_bias.after_epochs) == (
        ["whiten.bias"],
        3,
    )
    assert cfg.callbacks.early_stopping is None
    assert (cfg.trainer.precision, cfg.trainer.benchmark) == ("32-true", None)  # on a CPU
    on_gpu = compose_train(["experiment=fast94", "trainer.accelerator=gpu"])
    assert (on_gpu.trainer.precision, on_gpu.trainer.benchmark) == ("bf16-mixed", True)


def test_fast94_cpu_is_fast94_smaller():
    cfg, full = compose_train(["experiment=fast94_cpu"]), compose_train(["experiment=fast94"])
    assert list(cfg.model.widths) == [48, 96, 192] and cfg.trainer.max_epochs == 10
    assert cfg.experiment_name == "fast94_cpu"
    for key in ("optim", "loss", "module", "scheduler", "averaging", "callbacks"):
        assert cfg[key] == full[key], key


def test_logitnorm_composes_with_a_recipe_and_changes_only_the_loss(tmp_path):
    """`experiment=fast94_cpu loss=logitnorm`: the recipe's label smoothing stays, on the normalized logits."""
    cfg = compose_train(["experiment=fast94_cpu", "loss=logitnorm"], tmp_path)
    plain = compose_train(["experiment=fast94_cpu"], tmp_path)
    assert (cfg.loss._target_, cfg.loss.temperature, cfg.loss.label_smoothing) == (
        "cifar_lightning.losses.logitnorm",
        0.04,
        0.2,
    )
    for key in ("model", "optim", "module", "scheduler", "averaging", "callbacks"):
        assert cfg[key] == plain[key], key
    _, module, _, _ = build(cfg)
    assert (type(module.criterion).__name__, module.criterion.label_smoothing) == ("SmoothedLogitNorm", 0.2)


def test_resnet18_is_the_accuracy_recipe():
    cfg = compose_train(["experiment=resnet18"])
    assert cfg.model._target_ == "cifar_lightning.models.ResNet18"
    assert (cfg.data.batch_size, cfg.trainer.max_epochs, cfg.optim.lr, cfg.optim.weight_decay) == (256, 200, 0.2, 5e-4)
    assert (cfg.data.translate, cfg.data.flip, cfg.data.cutout) == (4, True, 16)
    assert (cfg.scheduler.shape, cfg.averaging.mode, cfg.loss.label_smoothing) == ("cosine", "ema", 0.1)


def test_report_base_is_the_reports_base_run():
    cfg = compose_train(["experiment=report_base"])
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (0.001, 0.9, 0.0)
    assert (cfg.data.batch_size, cfg.trainer.max_epochs) == (128, 10)
    assert (cfg.model.batch_norm, cfg.model.dropout) == ("none", 0.0)
    assert not cfg.scheduler
    assert (cfg.data.crop_padding, cfg.data.flip) == (0, False)


def test_report_improved_is_the_reports_improved_run():
    cfg = compose_train(["experiment=report_improved"])
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
        ("model.dropout=1.5", "model", "dropout must be in [0, 1)"),
        ("model.batch_norm=some", "model", "batch_norm must be one of none, first, all"),
        ("optim.lr=-1", "optim", "optim.lr must be a number >= 0"),
        ("optim.momentum=-0.5", "optim", "momentum"),
        ("data.val_fraction=-0.1", "data", "val_fraction must be in [0, 1)"),
        ("data.val_fraction=0", "data", "no validation split, but callbacks.model_checkpoint (monitor: val_loss)"),
        ("module.test_tta=3", "module", "test_tta must be one of 0, 1, 2"),
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


@pytest.mark.parametrize(
    "overrides, group, detail",
    [
        (["loss.label_smoothing=-0.1"], "loss", "label_smoothing must be in [0, 1)"),
        (["loss.label_smoothing=1.0"], "loss", "label_smoothing must be in [0, 1)"),
        (["loss=logitnorm", "loss.temperature=0"], "loss", "temperature must be a positive number"),
        (["optim.nesterov=true", "optim.momentum=0"], "optim", "nesterov=true needs momentum > 0"),
        (["scheduler=warmup_cosine", "scheduler.shape=triangle"], "scheduler", "shape must be one of"),
        (["scheduler=one_cycle", "scheduler.warmup=1.5"], "scheduler", "warmup"),
        (["averaging=ema", "averaging.decay=1.5"], "averaging", "decay must be in (0, 1)"),
        (["averaging=lookahead", "averaging.decay=0"], "averaging", "decay must be in (0, 1)"),
        (["averaging=ema", "averaging.mode=swa"], "averaging", "mode must be one of ema, lookahead"),
        (["averaging=ema", "averaging.every_n_steps=0"], "averaging", "every_n_steps must be an integer >= 1"),
        (["averaging=ema", "averaging.ramp_power=-1"], "averaging", "ramp_power must be a number >= 0"),
        (["experiment=fast94", "callbacks.freeze_whiten_bias.after_epochs=-1"], "callbacks", "after_epochs must be"),
        (["module.weight_decay_scope=some"], "module", "weight_decay_scope must be one of weights, all"),
        (["module.norm_lr_scale=0"], "module", "norm_lr_scale"),
        (["callbacks.model_checkpoint.every_n_train_steps=-1"], "callbacks", "every_n_train_steps must be"),
        (["callbacks.model_checkpoint.every_n_train_steps=1.5"], "callbacks", "every_n_train_steps must be"),
        (["hpo.trial=3"], "hpo", "hpo.trial=3 needs hpo.study and hpo.storage"),
        (["data.flip=sometimes"], "data", "flip must be false, true or alternating"),
        (["data.cutout=40"], "data", "cutout"),
        (["data.translate=-2"], "data", "translate"),
        (["module.compile=yes"], "module", "compile must be true or false"),
        (["~experiment", "model=fast_net", "model.widths=[64,256]"], "model", "widths must be three positive"),
        (["~experiment", "model=resnet18", "model.widths=[64]"], "model", "widths must be four positive integers"),
        (["experiment=fast94", "callbacks.freeze_whiten_bias.names=[whitening.bias]"], "callbacks", "does not have"),
    ],
)
def test_invalid_new_options_are_refused_before_training(overrides, group, detail, tmp_path):
    with pytest.raises(ConfigError) as err:
        build(compose_train(overrides, tmp_path / "run"))
    message = str(err.value)
    assert f"invalid `{group}` config" in message and detail in message
    assert "\n" not in message
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override", ["model.dropot=0.1", "loss=focal", "loss.name=logitnorm", "test.tta=2"])
def test_unknown_key_is_refused_at_composition(override):
    with pytest.raises(ConfigCompositionException, match=override.split("=")[0].replace(".", "\\.")):
        compose_train([override])


ABLATIONS = ["base", "improved", "literal_improved", "no_scheduler", "no_l2", "no_batchnorm", "no_dropout"]


def test_ablation_all_sweeps_the_seven_configurations_over_seeds():
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose(
            "train", overrides=["+ablation=all", "ablation.seeds=2", "hydra/launcher=joblib"], return_hydra_config=True
        )
    assert cfg.hydra.sweeper.params.ablation.split(",") == ABLATIONS
    assert cfg.hydra.sweeper.params.seed == "range(2)"
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    assert cfg.hydra.callbacks.aggregate_ablation._target_ == "cifar_lightning.ablation.AggregateAblation"


@pytest.mark.parametrize(
    "name, expected",
    [
        ("base", {"experiment_name": "report_base", "model.batch_norm": "none", "optim.lr": 0.001}),
        ("improved", {"experiment_name": "report_improved", "model.batch_norm": "all", "model.dropout": 0.2}),
        ("literal_improved", {"experiment_name": "report_improved", "model.batch_norm": "first", "model.dropout": 0.2}),
        ("no_scheduler", {"experiment_name": "report_improved", "scheduler": {}, "optim.weight_decay": 0.004}),
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
