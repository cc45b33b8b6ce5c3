"""Shared fixtures. Tests read the real CIFAR-10 from $CIFAR10_DATA_DIR (default: data/, where
train.py downloads it); CI points that at ../shared/data.
"""

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from cifar_lightning.data import find_cifar10_problems

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
DATA_DIR = Path(os.environ.get("CIFAR10_DATA_DIR", ROOT / "data")).resolve()

# Quiet, quick runs: no progress bar or model table in test output.
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


@pytest.fixture
def make_cfg(tmp_path, data_dir):
    """Compose a quiet train config on the real data, writing into tmp_path/run."""

    def make(*overrides: str, output_dir: Path | None = None) -> DictConfig:
        run_dir = output_dir or tmp_path / "run"
        return compose_train([f"data.data_dir={data_dir}", *QUIET, *overrides], run_dir)

    return make
