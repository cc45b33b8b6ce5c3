"""The training job end to end on the real CIFAR-10, shortened with batch limits."""

import json
import math

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from cifar_lightning.augment import tta_logits
from cifar_lightning.checkpoints import build_model, chosen_checkpoint, load_checkpoint
from cifar_lightning.config.data import EVAL_BATCH_SIZE
from cifar_lightning.data import CIFAR10DataModule
from cifar_lightning.errors import ConfigError
from cifar_lightning.inference import Classifier
from cifar_lightning.models import FastNet, ResNet18
from cifar_lightning.models.fast_net import PatchWhitening
from cifar_lightning.runs import METRICS_SCHEMA_VERSION, RunDir, read_metrics
from cifar_lightning.training import build, train
from tests.conftest import TINY_RUN, compose_train

SHORT = [
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=5",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=3",
]
METRIC_KEYS = {
    "test_acc",
    "test_loss",
    "best_val_loss",
    "best_epoch",
    "epochs_run",
    "train_seconds",
    "seed",
    "versions",
}


def test_fast_dev_run_writes_the_run_record(make_cfg, tmp_path):
    metrics = train(make_cfg("debug=fast_dev_run"))
    run = tmp_path / "run"
    saved = json.loads((run / "metrics.json").read_text())
    assert METRIC_KEYS <= set(saved) and saved == json.loads(json.dumps(metrics))
    assert 0.0 <= saved["test_acc"] <= 1.0 and saved["epochs_run"] == 1
    assert {"torch", "lightning", "hydra-core", "torchvision"} <= set(saved["versions"])
    config = (run / "config.yaml").read_text()
    assert "${" not in config and "report_improved" in config  # resolved


def test_short_run_checkpoints_logs_and_tests_the_best_checkpoint(make_cfg, tmp_path):
    cfg = make_cfg(*SHORT, "experiment=report_base", "optim.lr=0.01")
    metrics = train(cfg)
    run = tmp_path / "run"
    best, last = run / "checkpoints" / "best.ckpt", run / "checkpoints" / "last.ckpt"
    assert best.is_file() and last.is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert metrics["epochs_run"] == 2 and len(metrics["history"]) == 2
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr"} <= set(metrics["history"][0])

    checkpoint = torch.load(best, weights_only=True)
    assert metrics["best_epoch"] == checkpoint["epoch"] + 1
    state_key = next(k for k in checkpoint["callbacks"] if k.startswith("RunCheckpoint"))
    assert metrics["best_val_loss"] == pytest.approx(float(checkpoint["callbacks"][state_key]["best_model_score"]))

    tested = 3 * EVAL_BATCH_SIZE  # limit_test_batches=3
    confusion = torch.tensor(metrics["test_confusion"])
    assert confusion.shape == (10, 10) and int(confusion.sum()) == tested
    assert metrics["test_acc"] == pytest.approx(confusion.trace().item() / tested, abs=1e-6)
    assert metrics["classes"][3] == "cat"

    # Recompute test accuracy from the best checkpoint by hand: same figure as metrics.json.
    model = instantiate(cfg.model)
    model.load_state_dict({k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()})
    model.eval()
    dm = CIFAR10DataModule(data_dir=cfg.data.data_dir, download=False)
    dm.load_state_dict(checkpoint["CIFAR10DataModule"])
    dm.setup()
    images, labels = dm.arrays.test_images[:tested], dm.arrays.test_labels[:tested]
    with torch.no_grad():
        predictions = model(dm.normalize(images)).argmax(dim=1)
    assert metrics["test_acc"] == pytest.approx((predictions == labels).float().mean().item(), abs=1e-6)
    assert torch.equal(confusion.sum(dim=1), torch.bincount(labels, minlength=10))  # rows = true class


def test_the_tiny_run_learns(tiny_run_record):
    """The shared tiny run (10 steps through training_step and configure_optimizers) lowers its training
    loss, moves every weight, and predicts the 10,000 test images far better than chance (0.1)."""
    losses = tiny_run_record.step_losses
    assert len(losses) == 10 and losses[0] == pytest.approx(math.log(10), abs=0.15)  # the untrained guess
    assert sum(losses[-3:]) / 3 < 0.9 * losses[0]  # seeds 0, 1, 2: 14%, 18%, 20% lower
    assert tiny_run_record.metrics["history"][0]["train_loss"] < losses[0]

    final = load_checkpoint(tiny_run_record.run / "checkpoints" / "last.ckpt")["state_dict"]
    weights = {name: w for name, w in tiny_run_record.initial_weights.items() if w.ndim > 1}  # conv and fc
    assert len(weights) == 5
    for name, start in weights.items():  # each moved by 9-24% of its norm (seeds 0-2)
        assert (final[f"model.{name}"] - start).norm() > 0.02 * start.norm(), name

    metrics = tiny_run_record.metrics
    assert sum(map(sum, metrics["test_confusion"])) == 10_000
    assert metrics["test_acc"] >= 0.2  # seeds 0, 1, 2: 0.253, 0.224, 0.288


def test_same_seed_same_numbers_on_cpu(make_cfg, tmp_path):
    # Augmentation on: its draws must repeat too. A few small batches suffice to show equality and difference.
    overrides = [
        "experiment=report_base",
        "trainer.max_epochs=1",
        "data.batch_size=32",
        "data.eval_batch_size=250",
        "trainer.limit_train_batches=4",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "data.crop_padding=4",
        "data.flip=true",
        "seed=3",
    ]
    first = train(make_cfg(*overrides, output_dir=tmp_path / "a"))
    second = train(make_cfg(*overrides, output_dir=tmp_path / "b"))
    other = train(make_cfg(*overrides[:-1], "seed=4", output_dir=tmp_path / "c"))
    assert first["test_acc"] == second["test_acc"] and first["test_loss"] == second["test_loss"]
    assert first["history"] == second["history"]
    weights = {run: load_checkpoint(tmp_path / run / "checkpoints" / "last.ckpt")["state_dict"] for run in "abc"}
    assert all(torch.equal(weights["a"][key], weights["b"][key]) for key in weights["a"])
    assert other["test_loss"] != first["test_loss"]
    assert other["history"][0]["train_loss"] != first["history"][0]["train_loss"]
    assert not torch.equal(weights["a"]["model.conv1.weight"], weights["c"]["model.conv1.weight"])


@pytest.mark.slow  # a 476-step-shaped fast94 run (~47 s alone); CI runs it after the default run
def test_fast94_trains_on_all_images_and_tests_its_final_weights_with_tta(make_cfg, tmp_path):
    # The real recipe, at batch 128 and 2 + 2 steps, so that it runs in seconds on a CPU.
    cfg = make_cfg(
        "experiment=fast94",
        "data.batch_size=128",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=2",
        "trainer.limit_test_batches=1",
    )
    metrics = train(cfg)
    assert metrics["experiment"] == "fast94" and metrics["epochs_run"] == 2
    # No validation split: no validation loop, no best epoch; the final weights are the run's checkpoint.
    assert all("val_loss" not in row for row in metrics["history"])
    assert metrics["best_epoch"] is None and metrics["best_checkpoint"] is None
    run = RunDir(tmp_path / "run")
    assert not run.best_checkpoint.exists() and run.kept_checkpoint() == run.last_checkpoint
    assert metrics["last_checkpoint"] == str(run.last_checkpoint)
    # 4 steps: int(0.23 * 4) = 0 warmup steps, so the rate starts at its peak and falls linearly.
    assert [row["lr"] for row in metrics["history"]] == pytest.approx([1.5, 1.5 * (1 - 0.93 * 2 / 4)])
    checkpoint = load_checkpoint(run.last_checkpoint)
    model = build_model(checkpoint).eval()
    assert isinstance(model, FastNet) and "averaged_weights" in checkpoint
    # The whitening was computed from the first 5,000 of all 50,000 training images, in the data set's order.
    dm = CIFAR10DataModule(data_dir=cfg.data.data_dir, download=False, val_fraction=0)
    dm.load_state_dict(checkpoint["CIFAR10DataModule"])
    dm.setup()
    expected = PatchWhitening(2, 5e-4)
    expected.init_from_data(dm.normalize(dm.arrays.train_images[:5000]))
    assert torch.allclose(model.whiten.weight, expected.weight, atol=1e-4)
    # test_acc: the kept (averaged) weights with airbench's TTA on the first test batch; test_acc_plain: without.
    tested = EVAL_BATCH_SIZE
    images, labels = dm.normalize(dm.arrays.test_images[:tested]), dm.arrays.test_labels[:tested]
    with torch.no_grad():
        plain, with_tta = model(images).argmax(dim=1), tta_logits(model, images, 2).argmax(dim=1)
    assert metrics["test_tta"] == 2
    assert metrics["test_acc"] == pytest.approx((with_tta == labels).float().mean().item())
    assert metrics["test_acc_plain"] == pytest.approx((plain == labels).float().mean().item())


def test_fast94_takes_airbenchs_476_steps_on_50000_images(data_dir):
    cfg = compose_train([f"data.data_dir={data_dir}", "experiment=fast94"])
    assert cfg.data.val_fraction == 0 and cfg.data.drop_last and cfg.data.batch_size == 1024
    dm = instantiate(cfg.data)
    dm.setup()
    steps_per_epoch = len(dm.train_dataloader())
    assert steps_per_epoch == 48  # 50,000 // 1024, the last incomplete batch dropped
    assert cfg.trainer.max_steps == math.ceil(9.9 * steps_per_epoch) == 476 and cfg.trainer.max_epochs == 10
    assert FastNet().whiten.bias.abs().sum() == 0  # the whitening bias starts at zero


def test_a_run_without_validation_split_keeps_its_final_weights(make_cfg, tmp_path):
    # Any recipe can drop its validation split once nothing waits for a validation metric.
    cfg = make_cfg(
        *TINY_RUN,
        "data.val_fraction=0",
        "callbacks.early_stopping=null",
        "callbacks.model_checkpoint.monitor=null",
        "callbacks.model_checkpoint.save_top_k=0",
        "trainer.limit_test_batches=1",
        "module.test_tta=1",
    )
    metrics = train(cfg)
    run = RunDir(tmp_path / "run")
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["last.ckpt"]
    assert chosen_checkpoint(None, run.root, "evaluate.py") == run.last_checkpoint
    assert Classifier.load(run.last_checkpoint, device="cpu").checkpoint_epoch == 1  # saved after its one epoch
    assert metrics["best_val_loss"] is None and metrics["test_tta"] == 1
    assert read_metrics(run)["schema_version"] == METRICS_SCHEMA_VERSION


def test_a_validation_split_without_a_checkpoint_callback_keeps_the_final_weights(make_cfg, tmp_path):
    """fast94's recipes turn per-epoch checkpoints off; with data.val_fraction > 0 the final weights must still be
    saved (they were lost once: a whole run with nothing to evaluate)."""
    train(make_cfg(*TINY_RUN, "callbacks.model_checkpoint=null", "trainer.enable_checkpointing=false"))
    run = RunDir(tmp_path / "run")
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["last.ckpt"]
    assert chosen_checkpoint(None, run.root, "evaluate.py") == run.last_checkpoint


def test_a_run_without_validation_split_refuses_what_needs_one(make_cfg):
    with pytest.raises(ConfigError) as err:
        build(
            make_cfg(
                "data.val_fraction=0",
                "callbacks.model_checkpoint.monitor=null",
                "callbacks.model_checkpoint.save_top_k=0",
            )
        )
    message = str(err.value)
    assert "callbacks.early_stopping (monitor: val_loss)" in message and "data.val_fraction=0.1" in message
    assert "model_checkpoint" not in message.split(" need")[0]
    assert "\n" not in message


def test_resnet18_runs_end_to_end_and_its_checkpoint_rebuilds(make_cfg, tmp_path):
    cfg = make_cfg(
        "experiment=resnet18",
        "data.batch_size=16",
        "data.eval_batch_size=50",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
    )
    metrics = train(cfg)
    assert metrics["experiment"] == "resnet18" and 0.0 <= metrics["test_acc"] <= 1.0
    model = build_model(load_checkpoint(tmp_path / "run" / "checkpoints" / "best.ckpt"))
    assert isinstance(model, ResNet18)


def test_best_epoch_when_validation_skips_epochs(make_cfg):
    # Validation runs in epoch 2 only: the best epoch is 2, with its own loss (it was 1 and null).
    metrics = train(make_cfg(*SHORT, "experiment=report_base", "trainer.check_val_every_n_epoch=2"))
    assert [("val_loss" in row) for row in metrics["history"]] == [False, True]
    assert metrics["best_epoch"] == 2
    assert metrics["best_val_loss"] == metrics["history"][1]["val_loss"]
    assert metrics["best_val_acc"] == metrics["history"][1]["val_acc"]


class SpoilAfterFirstEpoch(L.Callback):
    """Test helper: from epoch 2 on, adds seeded noise to the last layer before each validation, so the
    validation loss of epoch 1 stays the best and early stopping has to stop the run."""

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.current_epoch == 0:
            return
        generator = torch.Generator().manual_seed(trainer.current_epoch)
        fc2 = pl_module.model.fc2
        with torch.no_grad():
            fc2.weight.add_(torch.randn(fc2.weight.shape, generator=generator).to(fc2.weight) * 1.0)


def test_early_stopping_with_the_default_patience_tests_the_best_epoch(make_cfg, tmp_path):
    cfg = make_cfg(
        *TINY_RUN,
        "trainer.max_epochs=10",
        "trainer.limit_train_batches=5",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2",
        f"+callbacks.spoil._target_={__name__}.SpoilAfterFirstEpoch",
    )
    assert cfg.callbacks.early_stopping.patience == 5  # the default under test
    metrics = train(cfg)
    assert metrics["best_epoch"] == 1 and metrics["epochs_run"] == 1 + 5 and metrics["stopped_early"] is True
    val_losses = [row["val_loss"] for row in metrics["history"]]
    assert metrics["best_val_loss"] == val_losses[0] < min(val_losses[1:])

    def test_accuracy(path) -> float:
        checkpoint = load_checkpoint(path)
        dm = CIFAR10DataModule(data_dir=cfg.data.data_dir, download=False)
        dm.load_state_dict(checkpoint["CIFAR10DataModule"])
        dm.setup()
        with torch.no_grad():
            predicted = (
                build_model(checkpoint).eval()(dm.normalize(dm.arrays.test_images[: 2 * EVAL_BATCH_SIZE])).argmax(dim=1)
            )
        return (predicted == dm.arrays.test_labels[: 2 * EVAL_BATCH_SIZE]).float().mean().item()

    checkpoints = tmp_path / "run" / "checkpoints"
    assert torch.load(checkpoints / "best.ckpt", weights_only=True)["epoch"] == 0
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["epoch"] == 5  # the last epoch, not the best
    best_acc, last_acc = test_accuracy(checkpoints / "best.ckpt"), test_accuracy(checkpoints / "last.ckpt")
    assert metrics["test_acc"] == pytest.approx(best_acc, abs=1e-6) and best_acc != last_acc
