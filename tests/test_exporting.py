"""cifar_lightning/exporting.py on real tiny train.py checkpoints: every model exports to both formats, the files
take uint8 images at any batch size and give the PyTorch model's logits, a tampered graph fails the parity check,
and bad settings are refused before anything is written."""

import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict
from torch import nn

from cifar_lightning.checkpoints import CheckpointError
from cifar_lightning.data import load_cifar10
from cifar_lightning.errors import ConfigError
from cifar_lightning.exporting import (
    NormalizedClassifier,
    ParityError,
    export,
    export_model,
    load_exported,
    verify,
)
from cifar_lightning.inference import Classifier
from cifar_lightning.runs import RunDir
from cifar_lightning.training import train
from tests.conftest import CONF_DIR, QUIET, compose_train

# One training batch, one validation batch, one small test batch: a real train.py checkpoint in seconds.
ONE_BATCH = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=1",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "data.batch_size=32",
    "data.eval_batch_size=50",
]
RECIPES = {"fast_net": ["experiment=fast94", "model.init_images=500"], "resnet18": ["experiment=resnet18"]}


def compose_export(overrides: list[str], output_dir: Path | None = None) -> DictConfig:
    """The export.py config with these overrides, as Hydra would compose it."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose(config_name="export", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir) if output_dir is not None else None
    return cfg


@pytest.fixture(scope="module")
def checkpoints(tiny_run, tmp_path_factory, data_dir):
    """model name -> the checkpoint a real train.py run of it keeps, trained on demand (report_cnn: the shared tiny
    run)."""
    made = {"report_cnn": tiny_run[0] / "checkpoints" / "best.ckpt"}

    def get(name: str) -> Path:
        if name not in made:
            run = tmp_path_factory.mktemp(name) / "run"
            train(compose_train([f"data.data_dir={data_dir}", *QUIET, *RECIPES[name], *ONE_BATCH], run))
            made[name] = RunDir(run).kept_checkpoint()  # fast94 holds out no validation split: its last.ckpt
        return made[name]

    return get


def test_the_normalization_inside_is_the_classifiers(checkpoints):
    classifier = Classifier.load(checkpoints("report_cnn"), device="cpu")
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(
        NormalizedClassifier(nn.Identity(), classifier.mean, classifier.std)(images), classifier.normalize(images)
    )


MODEL_FORMATS = [
    *[pytest.param(model, fmt, id=f"{model}-{fmt}") for model in ("report_cnn", "fast_net") for fmt in ("onnx", "pt2")],
    *[pytest.param("resnet18", fmt, id=f"resnet18-{fmt}", marks=pytest.mark.slow) for fmt in ("onnx", "pt2")],
]


@pytest.mark.parametrize(("model", "fmt"), MODEL_FORMATS)
def test_export_matches_pytorch_at_any_batch_size(model, fmt, checkpoints, data_dir, tmp_path):
    ckpt = checkpoints(model)
    cfg = compose_export(
        [f"ckpt={ckpt}", f"format={fmt}", f"data.data_dir={data_dir}", "check.images=300", "check.batch_size=128"],
        tmp_path,
    )
    summary = export(cfg)

    path = tmp_path / f"model.{fmt}"
    assert json.loads((tmp_path / "export.json").read_text()) == summary
    assert summary["format"] == fmt and summary["file"] == str(path) and summary["checkpoint"] == str(ckpt)
    assert summary["opset"] == (20 if fmt == "onnx" else None)
    assert summary["input"]["dtype"] == "uint8" and summary["input"]["shape"] == ["batch", 3, 32, 32]
    assert summary["output"]["shape"] == ["batch", 10]
    parity = summary["parity"]
    assert parity["passed"] and parity["images"] == 300 and parity["batch_sizes"] == [128, 44, 1]
    assert parity["max_abs_diff"] <= 1e-3 and parity["agreement"] >= 0.999
    assert summary["versions"]["torch"] == torch.__version__.split("+")[0]

    # The file alone, as a user runs it, on real test images at batch sizes it was not traced with.
    classifier = Classifier.load(ckpt, device="cpu")
    run = load_exported(path, fmt)
    images = load_cifar10(data_dir).test_images[300:307]
    expected = classifier.predict(images).logits
    for batch in (images[:1], images):
        logits = run(batch)
        assert logits.dtype == torch.float32 and logits.shape == (len(batch), 10)
        torch.testing.assert_close(logits, expected[: len(batch)], atol=1e-4, rtol=1e-4)
    assert torch.equal(run(images).argmax(1), expected.argmax(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.json", path.name]  # weights inside the one file
    assert_uint8_contract(path, fmt)


def assert_uint8_contract(path: Path, fmt: str) -> None:
    """The file declares uint8 (batch, 3, 32, 32) in, float32 (batch, 10) out, and refuses [0, 1] floats."""
    floats = np.zeros((2, 3, 32, 32), np.float32)
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (given,), (output,) = session.get_inputs(), session.get_outputs()
        assert (given.name, given.type, given.shape) == ("images", "tensor(uint8)", ["batch", 3, 32, 32])
        assert (output.name, output.type, output.shape) == ("logits", "tensor(float)", ["batch", 10])
        with pytest.raises(onnxruntime.capi.onnxruntime_pybind11_state.InvalidArgument, match="uint8"):
            session.run(None, {"images": floats})
    else:
        module = torch.export.load(str(path)).module()
        with pytest.raises(RuntimeError, match="dtype mismatch"):
            module(torch.from_numpy(floats))


def test_a_tampered_graph_fails_the_parity_check(checkpoints, data_dir, tmp_path):
    classifier = Classifier.load(checkpoints("report_cnn"), device="cpu")
    path = tmp_path / "model.onnx"
    export_model(classifier, path, "onnx", 20, metadata={})
    graph = onnx.load(str(path))
    (head,) = [init for init in graph.graph.initializer if "fc2.weight" in init.name]
    head.CopyFrom(onnx.numpy_helper.from_array(-onnx.numpy_helper.to_array(head), head.name))  # logits negated
    onnx.save(graph, str(path))

    parity = verify(load_exported(path, "onnx"), classifier, load_cifar10(data_dir).test_images[:100], 64)
    assert parity.max_abs_diff > 1e-3 and parity.agreement < 0.999
    with pytest.raises(ParityError, match="does not reproduce the PyTorch model on 100 CIFAR-10 test images") as err:
        parity.check(1e-3, 0.999, path)
    assert ParityError.exit_code == 1
    assert "check.max_abs_diff 0.001" in str(err.value) and "check.min_agreement 99.90%" in str(err.value)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("format=tflite", "invalid `format` config: format must be one of onnx, pt2, got 'tflite'"),
        ("opset=17", "invalid `opset` config: opset must be an integer >= 18"),
        ("check.images=0", "invalid `check` config: check.images must be a positive integer"),
        ("check.batch_size=-1", "invalid `check` config: check.batch_size must be a positive integer"),
        ("check.max_abs_diff=-0.1", "invalid `check` config: check.max_abs_diff must be a number >= 0"),
        ("check.min_agreement=1.5", "invalid `check` config: check.min_agreement must be in [0, 1]"),
    ],
)
def test_bad_settings_are_refused(override, expected):
    with pytest.raises(ConfigError, match="^" + re.escape(expected)) as err:
        export(compose_export(["ckpt=any.ckpt", override]))
    assert "nothing was exported" in str(err.value)


def test_exactly_one_checkpoint_is_named(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="export.py needs exactly one checkpoint, but neither ckpt nor run_dir"):
        export(compose_export([], out))
    with pytest.raises(ConfigError, match="export.py needs exactly one checkpoint, but both ckpt and run_dir"):
        export(compose_export(["ckpt=a.ckpt", f"run_dir={tmp_path}"], out))
    with pytest.raises(CheckpointError, match="holds no checkpoints/best.ckpt"):
        export(compose_export([f"run_dir={tmp_path}"], out))
    assert not out.exists()
