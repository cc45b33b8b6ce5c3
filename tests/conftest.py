"""Shared fixtures. Tests read the real CIFAR-10 from $CIFAR10_DATA_DIR (default: data/, where
train.py downloads it); CI points that at ../shared/data.
"""

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from cifar_lightning.data import find_cifar10_problems
from cifar_lightning.inference import Classifier
from cifar_lightning.training import train
from tests.helpers import ROOT

CONF_DIR = ROOT / "conf"
DATA_DIR = Path(os.environ.get("CIFAR10_DATA_DIR", ROOT / "data")).resolve()

# Quiet, quick runs: no progress bar or model table in test output.
# Ten training batches at a high rate: enough to predict several classes. The run tests on all 10,000
# test images, so its test_acc can be compared with evaluate()'s.
TINY_RUN = [
    "experiment=seed_base", "model.batch_norm=all", "optim.lr=0.05", "trainer.max_epochs=1",
    "trainer.limit_train_batches=10", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1.0",
]  # fmt: skip

QUIET = [
    "callbacks.progress_bar=null",
    "callbacks.model_summary=null",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    problems = find_cifar10_problems(DATA_DIR)
    if problems:
        pytest.fail(
            f"the tests need the real CIFAR-10 under {DATA_DIR}: {'; '.join(problems)}. "
            "Set CIFAR10_DATA_DIR to the folder that holds cifar-10-batches-py/ "
            "(e.g. CIFAR10_DATA_DIR=../shared/data pytest), or run python train.py once to download it."
        )
    return DATA_DIR


def compose_train(overrides: list[str], output_dir: Path | None = None) -> DictConfig:
    """The train.py config with these overrides, as Hydra would compose it."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose(config_name="train", overrides=overrides)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg


def compose_evaluate(overrides: list[str], output_dir: Path, ood: bool = False) -> DictConfig:
    """The evaluate.py config with these overrides, as Hydra would compose it; OOD detection (tested in
    tests/ood/) is off unless `ood`."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose(config_name="evaluate", overrides=["progress=false", *([] if ood else ["ood=none"]), *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


@pytest.fixture
def make_cfg(tmp_path, data_dir):
    """Compose a quiet train config on the real data, writing into tmp_path/run."""

    def make(*overrides: str, output_dir: Path | None = None) -> DictConfig:
        run_dir = output_dir or tmp_path / "run"
        return compose_train([f"data.data_dir={data_dir}", *QUIET, *overrides], run_dir)

    return make


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, data_dir) -> tuple[Path, dict]:
    """A tiny real train.py run (TINY_RUN), shared by the evaluation and OOD tests: (run directory, metrics)."""
    run = tmp_path_factory.mktemp("tiny_run") / "run"
    return run, train(compose_train([f"data.data_dir={data_dir}", *QUIET, *TINY_RUN], run))


@pytest.fixture(scope="session")
def classifier(tiny_run) -> Classifier:
    """The tiny run's best checkpoint, loaded as evaluate.py, predict.py and serve.py load it."""
    return Classifier.load(tiny_run[0] / "checkpoints" / "best.ckpt", device="cpu")
