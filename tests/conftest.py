"""Shared fixtures. Tests read the real CIFAR-10 from $CIFAR10_DATA_DIR (default: data/, where
train.py downloads it); CI points that at ../shared/data.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict
from torch.utils.data import DataLoader, TensorDataset

from cifar_lightning import training
from cifar_lightning.data import find_cifar10_problems
from cifar_lightning.inference import Classifier
from cifar_lightning.training import train
from tests.helpers import ROOT

CONF_DIR = ROOT / "conf"
DATA_DIR = Path(os.environ.get("CIFAR10_DATA_DIR", ROOT / "data")).resolve()


def pytest_configure(config):
    """Under `pytest -n N` (pytest-xdist) each of the N workers gets its share of the cores, for its own torch and
    for the programs it starts (OMP_NUM_THREADS): N workers each using every core would slow one another."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


# Quiet, quick runs: no progress bar or model table in test output.
# Ten training batches at a high rate: enough to predict several classes. The run tests on all 10,000
# test images, so its test_acc can be compared with evaluate()'s.
TINY_RUN = [
    "experiment=report_base",
    "model.batch_norm=all",
    "optim.lr=0.05",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=10",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1.0",
]

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


class StepLosses(L.Callback):
    """Each optimizer step's training loss, as training_step returned it (a host read per step: tests only)."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args: Any) -> None:
        self.losses.append(float(outputs["loss"] if isinstance(outputs, dict) else outputs))


def fit_on_one_batch(module: L.LightningModule, images: torch.Tensor, labels: torch.Tensor, steps: int) -> list[float]:
    """Fit `module` for `steps` optimizer steps on one fixed batch with a real Trainer, so that its own
    training_step and configure_optimizers (and scheduler) are used: each step's training loss."""
    recorder = StepLosses()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        callbacks=[recorder],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    repeated = TensorDataset(images.repeat(steps, 1, 1, 1), labels.repeat(steps))  # the batch, `steps` times
    trainer.fit(module, train_dataloaders=DataLoader(repeated, batch_size=len(labels)))
    assert len(recorder.losses) == steps
    return recorder.losses


@dataclass
class TinyRun:
    """The tiny run's directory and metrics, and what train() does not keep: the weights it started
    from (the model as train() built it, before any step) and each step's training loss."""

    run: Path
    metrics: dict
    initial_weights: dict[str, torch.Tensor]
    step_losses: list[float]


@pytest.fixture(scope="session")
def tiny_run_record(tmp_path_factory, data_dir) -> TinyRun:
    """The tiny real train.py run (TINY_RUN) behind `tiny_run`, watched from inside train(): its build()
    is wrapped, while this run lasts, to copy the freshly built weights and to add a StepLosses callback
    (no state: the run's checkpoints and metrics are those of an unwatched run)."""
    run = tmp_path_factory.mktemp("tiny_run") / "run"
    initial: dict[str, torch.Tensor] = {}
    recorder = StepLosses()

    def watched_build(cfg: DictConfig):
        datamodule, module, trainer, history = build(cfg)
        initial.update({name: p.detach().clone() for name, p in module.model.named_parameters()})
        trainer.callbacks.append(recorder)
        return datamodule, module, trainer, history

    build = training.build
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training, "build", watched_build)
        metrics = train(compose_train([f"data.data_dir={data_dir}", *QUIET, *TINY_RUN], run))
    return TinyRun(run, metrics, initial, recorder.losses)


@pytest.fixture(scope="session")
def tiny_run(tiny_run_record) -> tuple[Path, dict]:
    """A tiny real train.py run (TINY_RUN), shared by the evaluation and OOD tests: (run directory, metrics)."""
    return tiny_run_record.run, tiny_run_record.metrics


@pytest.fixture(scope="session")
def classifier(tiny_run) -> Classifier:
    """The tiny run's best checkpoint, loaded as evaluate.py, predict.py and serve.py load it."""
    return Classifier.load(tiny_run[0] / "checkpoints" / "best.ckpt", device="cpu")
