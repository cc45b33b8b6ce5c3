"""Loading train.py checkpoints: a real one rebuilds its model exactly; anything else is refused
with one paragraph that names the file and the fix, and nothing in it runs."""

import os
import pickle

import pytest
import torch

from cifar_lightning.checkpoints import CheckpointError, build_model, load_checkpoint, normalization, run_config
from cifar_lightning.checkpoints import trained_epoch as epoch_of_checkpoint
from cifar_lightning.data import CIFAR10DataModule


@pytest.fixture(scope="module")
def trained(tiny_run):
    """The shared tiny run's best checkpoint (read, never changed, here) and metrics."""
    run, metrics = tiny_run
    return run / "checkpoints" / "best.ckpt", metrics


def refused(path, *expected: str) -> str:
    """load_checkpoint + build_model must raise CheckpointError; returns its message after checking it."""
    with pytest.raises(CheckpointError) as info:
        build_model(load_checkpoint(path), path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "Fix" in message, message
    for text in expected:
        assert text in message, message
    return message


def saved(checkpoint: dict, path):
    torch.save(checkpoint, path)
    return path


def test_a_real_checkpoint_rebuilds_its_model(trained, data_dir):
    path, metrics = trained
    checkpoint = load_checkpoint(path)
    model = build_model(checkpoint, path)
    assert not model.training and run_config(checkpoint)["model"]["batch_norm"] == "all"
    for key, value in model.state_dict().items():
        assert torch.equal(value, checkpoint["state_dict"][f"model.{key}"])
    stats = normalization(checkpoint, path)
    assert stats == metrics["normalization"]

    # Same predictions as the run's test (all 10,000 test images).
    dm = CIFAR10DataModule(data_dir=str(data_dir), download=False)
    dm.load_state_dict(stats)
    dm.setup()
    with torch.no_grad():
        predicted = model(dm.normalize(dm.arrays.test_images)).argmax(dim=1)
    assert len(predicted) == 10_000
    assert metrics["test_acc"] == pytest.approx((predicted == dm.arrays.test_labels).float().mean().item())


def progress(started: int, completed: int) -> dict:
    return {"fit_loop": {"epoch_progress": {"current": {"ready": started, "started": started, "completed": completed}}}}


@pytest.mark.parametrize(
    ("checkpoint", "epoch"),
    [
        ({"epoch": 2, "loops": progress(started=3, completed=2)}, 3),  # written at the end of the 3rd epoch
        ({"epoch": 18, "loops": progress(started=18, completed=18)}, 18),  # written after an 18-epoch fit
        ({"epoch": 4}, 5),  # no loop state: Lightning's 0-based epoch in progress
        ({}, None),
    ],
)
def test_trained_epoch_counts_from_one(checkpoint, epoch):
    assert epoch_of_checkpoint(checkpoint) == epoch


def test_missing_file(tmp_path):
    refused(tmp_path / "nowhere.ckpt", "does not exist", "ckpt=", "run_dir=")


def test_a_folder_is_not_a_checkpoint(tmp_path):
    refused(tmp_path, "is a folder", f"run_dir={tmp_path}")


@pytest.mark.parametrize("keep", [0.5, 0.0], ids=["half", "empty"])
def test_truncated_file(trained, tmp_path, keep):
    data = trained[0].read_bytes()
    short = tmp_path / "short.ckpt"
    short.write_bytes(data[: int(len(data) * keep)])
    refused(short, "truncated or corrupt", "copy it again")


class RunsCode:
    """Unpickling this runs a shell command: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_pickle_that_runs_code_is_not_loaded(tmp_path, writer):
    marker, path = tmp_path / "marker", tmp_path / "evil.ckpt"
    payload = {"state_dict": RunsCode(marker), "hyper_parameters": {"run_config": {"model": {}}}}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    refused(path, "not a safe checkpoint", "was not loaded")
    assert not marker.exists()


def test_a_torch_file_that_is_not_ours(tmp_path):
    refused(saved({"a": torch.zeros(1)}, tmp_path / "other.pt"), "not a cifar-lightning checkpoint", "state_dict")
    refused(saved(torch.zeros(3), tmp_path / "tensor.pt"), "not a cifar-lightning checkpoint")


def test_a_lightning_checkpoint_without_our_run_config(trained, tmp_path):
    checkpoint = load_checkpoint(trained[0])
    del checkpoint["hyper_parameters"]["run_config"]
    refused(saved(checkpoint, tmp_path / "foreign.ckpt"), "hyper_parameters.run_config")


def test_another_architecture_names_the_keys(trained, tmp_path):
    checkpoint = load_checkpoint(trained[0])
    run_config(checkpoint)["model"]["batch_norm"] = "none"  # trained with all
    message = refused(saved(checkpoint, tmp_path / "bn.ckpt"), "do not fit", "not in the model")
    assert "bn1.weight" in message and "batch_norm='none'" in message


def test_a_dropped_weight_is_named(trained, tmp_path):
    checkpoint = load_checkpoint(trained[0])
    del checkpoint["state_dict"]["model.fc1.bias"]
    refused(saved(checkpoint, tmp_path / "dropped.ckpt"), "missing from the checkpoint: fc1.bias")


def test_a_shape_mismatch_is_named(trained, tmp_path):
    checkpoint = load_checkpoint(trained[0])
    run_config(checkpoint)["model"]["num_classes"] = 5
    refused(saved(checkpoint, tmp_path / "five.ckpt"), "shapes differ", "fc2.weight (10, 64) vs (5, 64)")


def edited_targets(marker) -> dict[str, dict]:
    """Model configs that would run a command, or build something other than a model."""
    command = f"echo pwned > {marker}"
    return {
        "os.system": {"_target_": "os.system", "_args_": [command]},
        "nested": {
            "_target_": "cifar_lightning.models.ReportCNN",
            "dropout": {"_target_": "os.system", "_args_": [command]},
        },
        "not-a-module": {"_target_": "cifar_lightning.data.normalize"},
        "outside-the-project": {"_target_": "antigravity.Nope"},
    }


@pytest.mark.parametrize("edit", ["os.system", "nested", "not-a-module", "outside-the-project"])
def test_an_edited_model_target_is_not_called(trained, tmp_path, edit):
    marker = tmp_path / "marker"
    checkpoint = load_checkpoint(trained[0])
    run_config(checkpoint)["model"] = edited_targets(marker)[edit]
    refused(saved(checkpoint, tmp_path / "edited.ckpt"), "not allowed", "probably edited")
    assert not marker.exists()


def test_an_invalid_model_value_is_refused(trained, tmp_path):
    checkpoint = load_checkpoint(trained[0])
    run_config(checkpoint)["model"]["batch_norm"] = "some"
    refused(saved(checkpoint, tmp_path / "some.ckpt"), "cannot be rebuilt", "batch_norm must be one of")


def test_missing_normalization_is_refused(trained, tmp_path):
    checkpoint = load_checkpoint(trained[0])
    del checkpoint["CIFAR10DataModule"]
    path = saved(checkpoint, tmp_path / "nostats.ckpt")
    with pytest.raises(CheckpointError, match="no usable normalization statistics") as info:
        normalization(load_checkpoint(path), path)
    assert str(path) in str(info.value)
