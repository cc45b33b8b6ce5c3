"""The evaluation job on a real (tiny) checkpoint and all 10,000 test images: its figures agree
with the training run's own test, and its files have the right shapes."""

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from cifar_lightning.calibration import CALIBRATION_FILE, calibration_metrics, fit_temperature, read_calibration
from cifar_lightning.checkpoints import CheckpointError, chosen_checkpoint
from cifar_lightning.errors import ConfigError
from cifar_lightning.evaluation import (
    ranked,
    robustness_detector_names,
    run_evaluation,
    training_history,
    write_outputs,
)
from cifar_lightning.gradcam import gradcam_layer
from cifar_lightning.inference import Predictions, predict
from tests.conftest import compose_evaluate
from tests.helpers import assert_report_shows


@pytest.fixture(scope="module")
def trained(tiny_run):
    """A tiny real run that tested its best checkpoint on all 10,000 test images."""
    return tiny_run


@pytest.fixture(scope="module")
def evaluation(trained, data_dir, tmp_path_factory):
    run, _ = trained
    out = tmp_path_factory.mktemp("evaluation") / "out"
    return run_evaluation(compose_evaluate([f"run_dir={run}", f"data.data_dir={data_dir}"], out))


def test_figures_agree_with_the_training_runs_test(evaluation, trained):
    summary, metrics = evaluation.summary, trained[1]
    confusion = torch.tensor(summary["confusion"])
    assert confusion.shape == (10, 10) and summary["num_images"] == 10_000
    assert confusion.sum(dim=1).tolist() == [1000] * 10  # rows = true class, 1000 test images each
    assert summary["test_acc"] == pytest.approx(confusion.trace().item() / 10_000, abs=1e-6)
    assert summary["test_acc"] == pytest.approx(metrics["test_acc"], abs=1e-6)
    assert summary["test_loss"] == pytest.approx(metrics["test_loss"], rel=1e-4)
    assert summary["confusion"] == metrics["test_confusion"]
    assert summary["loss"] == "cross_entropy"  # the tiny run's loss, for the OpenOOD comparison's rows
    assert 0.0 < summary["test_acc"] < 1.0 and (confusion.sum(dim=0) > 0).sum() > 1  # both galleries have images


def test_per_class_figures(evaluation):
    summary = evaluation.summary
    confusion = torch.tensor(summary["confusion"], dtype=torch.float64)
    diagonal = confusion.diag()
    assert summary["per_class_acc"] == pytest.approx((diagonal / 1000).tolist(), abs=1e-6)
    assert summary["recall"] == pytest.approx(summary["per_class_acc"], abs=1e-6)
    columns = confusion.sum(dim=0)
    expected_precision = torch.where(columns > 0, diagonal / columns.clamp(min=1), torch.zeros(10))
    assert summary["precision"] == pytest.approx(expected_precision.tolist(), abs=1e-6)
    p, r = torch.tensor(summary["precision"]), torch.tensor(summary["recall"])
    expected_f1 = torch.where(p + r > 0, 2 * p * r / (p + r).clamp(min=1e-12), torch.zeros(10))
    assert summary["f1"] == pytest.approx(expected_f1.tolist(), abs=1e-5)


def test_files_written(evaluation, trained):
    out, summary = evaluation.output_dir, evaluation.summary
    saved = json.loads((out / "evaluation.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert saved["classes"][3] == "cat" and saved["checkpoint"] == str(trained[0] / "checkpoints" / "best.ckpt")
    assert saved["model"]["_target_"] == "cifar_lightning.models.ReportCNN" and saved["gradcam"]["layer"] == "conv3"
    assert saved["normalization"] == trained[1]["normalization"] and saved["seconds"] > 0
    for key in ("per_class_acc", "precision", "recall", "f1"):
        assert len(saved[key]) == 10
    rows = list(csv.reader((out / "confusion_matrix.csv").open()))
    assert rows[0][1:] == saved["classes"] and len(rows) == 11
    assert [row[0] for row in rows[1:]] == saved["classes"]
    assert [[int(v) for v in row[1:]] for row in rows[1:]] == saved["confusion"]


def test_predict_works_on_any_uint8_images(evaluation):
    images = evaluation.images[:300]
    again = predict(evaluation.classifier.model, images, evaluation.classifier.normalize, "cpu", batch_size=128)
    assert again.logits.shape == (300, 10) and again.probabilities.sum(dim=1).allclose(torch.ones(300))
    torch.testing.assert_close(again.logits, evaluation.predictions.logits[:300], rtol=1e-4, atol=1e-5)


def test_test_time_augmentation_averages_the_views(evaluation):
    images, model, normalize = evaluation.images[:64], evaluation.classifier.model, evaluation.classifier.normalize
    with torch.no_grad():
        x = normalize(images)
        plain, mirrored = model(x), model(x.flip(3))
        padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
        shifts = [padded[:, :, :32, :32], padded[:, :, 2:, 2:]]
        shifted = sum(0.5 * model(s) + 0.5 * model(s.flip(3)) for s in shifts)
    flip = predict(model, images, normalize, "cpu", batch_size=50, tta=1)
    torch.testing.assert_close(flip.logits, 0.5 * (plain + mirrored), rtol=1e-4, atol=1e-5)
    both = predict(model, images, normalize, "cpu", batch_size=50, tta=2)
    torch.testing.assert_close(both.logits, 0.25 * (plain + mirrored) + 0.25 * shifted, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(both.logits, plain)


def test_galleries_are_ranked_by_confidence():
    probabilities = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7], [0.95, 0.05]])
    predictions = Predictions(logits=probabilities.log(), probabilities=probabilities)
    labels = torch.tensor([0, 1, 1, 0, 0])
    assert ranked(predictions, labels, correct=True).tolist() == [4, 0, 2]
    assert ranked(predictions, labels, correct=False).tolist() == [3, 1]


def test_training_history_is_read_from_the_run(trained, tmp_path):
    run, metrics = trained
    assert training_history(run / "checkpoints" / "best.ckpt") == metrics["history"]
    assert training_history(tmp_path / "elsewhere" / "best.ckpt") == []


def test_exactly_one_of_ckpt_and_run_dir(tmp_path):
    with pytest.raises(ConfigError, match="evaluate.py needs exactly one checkpoint, but neither ckpt nor run_dir"):
        chosen_checkpoint(None, None, "evaluate.py")
    with pytest.raises(ConfigError, match="both ckpt and run_dir") as info:
        chosen_checkpoint("a.ckpt", "b", "predict.py", " inputs=<files>")
    assert "python predict.py run_dir=logs/train/runs/<date>_<time> inputs=<files>" in str(info.value)
    with pytest.raises(CheckpointError, match="does not exist") as info:
        chosen_checkpoint(None, tmp_path / "nope", "evaluate.py")
    assert "run_dir=" in str(info.value)
    with pytest.raises(CheckpointError, match="holds no checkpoints/best.ckpt"):
        chosen_checkpoint(None, tmp_path, "evaluate.py")
    assert chosen_checkpoint("~/a.ckpt", None, "serve.py") == Path("~/a.ckpt").expanduser()


@pytest.mark.parametrize(
    "override, expected",
    [
        ("device=tpu", "invalid `device` config: device must be one of auto, cpu, gpu, got 'tpu'"),
        ("batch_size=0", "invalid `batch_size` config: batch_size must be an integer >= 1"),
        ("tta=3", r"invalid `tta` config: tta must be one of 0, 1, 2 \(0: none"),
        ("gallery.size=-1", "invalid `gallery` config: gallery.size must be an integer >= 0"),
        ("gradcam.explain=both", "gradcam.explain must be one of predicted, label, got 'both'"),
        ("gradcam.explain=true", "gradcam.explain must be one of predicted, label, got True.*reads as booleans"),
        ("gradcam.explain=False", "gradcam.explain must be one of predicted, label, got False.*reads as booleans"),
        ("gradcam.layer=conv9", "invalid `gradcam` config: the model has no layer 'conv9'; its layers are: conv1"),
        ("data.val_fraction=1", r"invalid `data` config: data.val_fraction must be in \[0, 1\)"),
    ],
)
def test_bad_settings_stop_before_anything_is_written(trained, data_dir, tmp_path, override, expected):
    cfg = compose_evaluate([f"run_dir={trained[0]}", f"data.data_dir={data_dir}", override], tmp_path / "out")
    with pytest.raises(ConfigError, match=expected):
        run_evaluation(cfg)
    assert not (tmp_path / "out").exists()


def test_the_last_conv_layer_is_explained_by_default(evaluation):
    assert gradcam_layer(evaluation.classifier.model, None) == "conv3"
    assert gradcam_layer(evaluation.classifier.model, "conv2") == "conv2"


def test_evaluate_writes_figures_gradcam_and_report(evaluation, trained, tmp_path):
    """evaluate()'s second half (write_outputs) on the shared evaluation: every figure decodes, the Grad-CAM
    overlays are the 3 most confident of each gallery, and report.html shows evaluation.json's accuracy (the
    training run's own test figure) and each PNG written, once. (evaluate.py end to end: test_evaluate_cli.)"""
    out = tmp_path / "out"
    report = write_outputs(
        replace(evaluation, output_dir=out), compose_evaluate(["gallery.size=12", "gradcam.count=3"], out)
    )
    assert report == out / "report.html"
    test_acc = json.loads((evaluation.output_dir / "evaluation.json").read_text())["test_acc"]
    assert test_acc == pytest.approx(trained[1]["test_acc"], abs=1e-6)
    pngs = sorted(out.rglob("*.png"))
    names = sorted(str(png.relative_to(out)) for png in pngs)
    cams = [f"gradcam/{kind}_{i}.png" for kind in ("correct", "wrong") for i in range(3)]
    assert names == sorted(["confusion_matrix.png", "reliability.png", "correct.png", "wrong.png", "curves.png", *cams])
    for png in pngs:
        with Image.open(png) as image:
            image.load()
            assert image.format == "PNG" and min(image.size) >= 100, png
    assert_report_shows(report.read_text(encoding="utf-8"), test_acc, pngs)


def test_the_temperature_is_fitted_on_held_out_images_and_saved_for_predict(evaluation, tmp_path):
    """T minimizes the NLL of the run's validation images (never the test set's); the test figures before and after
    are those of the test logits divided by it; calibration.json carries it to predict.py and serve.py."""
    calibration, datamodule = evaluation.summary["calibration"], evaluation.datamodule
    held_out = datamodule.arrays.train_images[datamodule.val_idx]
    val_logits = evaluation.classifier.predict(held_out).logits
    assert calibration["temperature"] == pytest.approx(
        fit_temperature(val_logits, datamodule.arrays.train_labels[datamodule.val_idx])
    )
    assert calibration["temperature"] != pytest.approx(
        fit_temperature(evaluation.predictions.logits, evaluation.labels)
    )
    assert calibration["fitted_on"] == f"{len(datamodule.val_idx):,} images of the run's validation split"
    logits = evaluation.predictions.logits
    assert calibration["before"] == calibration_metrics(logits, evaluation.labels)
    assert calibration["after"] == calibration_metrics(logits, evaluation.labels, calibration["temperature"])
    out = tmp_path / "out"
    write_outputs(replace(evaluation, output_dir=out), compose_evaluate([], out))
    checkpoint = evaluation.classifier.checkpoint_path
    assert read_calibration(out / CALIBRATION_FILE, checkpoint) == pytest.approx(calibration["temperature"])
    assert f"T = {calibration['temperature']:.4g}" in (out / "calibration.md").read_text()


def test_robustness_measures_the_chosen_detector_msp_and_mean_activation_by_default():
    """By default the false alarms are those of the detector chosen on the validation halves, MSP and the report's
    mean activation, each once and only if saved; a list given replaces them."""
    record = {"default": "knn", "detectors": dict.fromkeys(["msp", "knn", "odin", "mean_activation"])}
    assert robustness_detector_names(record, None) == ["knn", "msp", "mean_activation"]
    assert robustness_detector_names({**record, "default": "msp"}, None) == ["msp", "mean_activation"]
    assert robustness_detector_names({"default": "knn", "detectors": {"knn": 0}}, None) == ["knn"]
    assert robustness_detector_names(record, ["odin", "energy", "odin"]) == ["odin"]


@pytest.mark.slow  # 75 corruption runs: ~25 s even on 20 images (tests/test_robustness.py covers the library)
def test_robustness_adds_its_files_section_and_summary(evaluation, tmp_path):
    """robustness=generated on a few test images: robustness.json/.md/.png, evaluation.json's `robustness`."""
    out = tmp_path / "out"
    cfg = compose_evaluate(["robustness=generated", "robustness_images=20", "ood=none", "gradcam.count=0"], out)
    report = write_outputs(replace(evaluation, output_dir=out, corruptions="generated", ood=None), cfg)
    saved = json.loads((out / "evaluation.json").read_text())["robustness"]
    assert saved["images"] == 20 and len(saved["accuracy"]) == 15
    assert all(len(per_severity) == 5 for per_severity in saved["accuracy"].values())
    assert {"robustness.json", "robustness.md", "robustness.png"} <= {path.name for path in out.iterdir()}
    assert "Corruption robustness" in report.read_text(encoding="utf-8")
