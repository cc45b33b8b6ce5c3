"""Calibration (cifar_lightning/calibration.py): ECE, MCE, NLL and Brier score against hand computations on six
images; temperature scaling recovering the factor of a deliberately over-confident model and lowering its NLL;
calibration.json saved, found for its very checkpoint and refused for another one or when damaged; the
temperature changing the reported probabilities, never the OOD scores."""

import json
import logging
import math
import os

import pytest
import torch

from cifar_lightning.calibration import (
    CALIBRATION_FILE,
    Calibration,
    CalibrationFileError,
    calibration_metrics,
    choose_calibration,
    find_calibration,
    fit_temperature,
    read_calibration,
    save_calibration,
)
from cifar_lightning.ood.runtime import classify
from cifar_lightning.ood.saved import OODDetector

#: Six images, three classes: each row's probabilities, and its label.
PROBABILITIES = [
    [0.50, 0.30, 0.20],  # confidence 0.50, right
    [0.25, 0.55, 0.20],  # 0.55, wrong (label 0)
    [0.70, 0.20, 0.10],  # 0.70, right
    [0.05, 0.05, 0.90],  # 0.90, right
    [0.95, 0.03, 0.02],  # 0.95, wrong (label 1)
    [0.10, 0.85, 0.05],  # 0.85, right
]
LABELS = [0, 0, 0, 2, 1, 1]


def hand_example() -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose softmax is PROBABILITIES (log-probabilities), and the labels."""
    return torch.tensor(PROBABILITIES, dtype=torch.float64).log(), torch.tensor(LABELS)


def test_ece_and_mce_by_hand():
    """Five bins [0, .2), [.2, .4), [.4, .6), [.6, .8), [.8, 1]: three hold images."""
    gaps = {  # bin: (images, accuracy, mean confidence)
        "[.4, .6)": (2, 1 / 2, (0.50 + 0.55) / 2),
        "[.6, .8)": (1, 1 / 1, 0.70),
        "[.8, 1]": (3, 2 / 3, (0.90 + 0.95 + 0.85) / 3),
    }
    ece = sum(n / 6 * abs(accuracy - confidence) for n, accuracy, confidence in gaps.values())  # 1.05 / 6
    mce = max(abs(accuracy - confidence) for _, accuracy, confidence in gaps.values())  # 0.3
    metrics = calibration_metrics(*hand_example(), bins=5)
    assert set(metrics) == {"ece", "mce", "nll", "brier"}
    assert metrics["ece"] == pytest.approx(ece, abs=1e-6) and ece == pytest.approx(0.175)
    assert metrics["mce"] == pytest.approx(mce, abs=1e-6) and mce == pytest.approx(0.3)


def test_nll_and_brier_by_hand():
    label_probabilities = [0.50, 0.25, 0.70, 0.90, 0.03, 0.85]
    nll = -sum(math.log(p) for p in label_probabilities) / 6
    # sum over classes of (p - one-hot)^2, per image, worked out by hand
    squared = [0.38, 0.905, 0.14, 0.015, 1.8438, 0.035]
    metrics = calibration_metrics(*hand_example(), bins=5)
    assert metrics["nll"] == pytest.approx(nll, abs=1e-12)
    assert metrics["brier"] == pytest.approx(sum(squared) / 6, abs=1e-12)


def test_metrics_divide_the_logits_by_the_temperature():
    logits, labels = hand_example()
    assert calibration_metrics(logits, labels, temperature=2.0) == pytest.approx(
        calibration_metrics(logits / 2, labels)
    )


def calibrated_logits(images: int = 2000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Reasonable logits (the true class 2 higher on average) and labels drawn from their own softmax: a model
    calibrated at T = 1, by construction."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(images, 10, generator=generator, dtype=torch.float64)
    logits[torch.arange(images), torch.randint(0, 10, (images,), generator=generator)] += 2.0
    labels = torch.multinomial(logits.softmax(dim=1), 1, generator=generator).squeeze(1)
    return logits, labels


def test_temperature_scaling_fixes_an_over_confident_model():
    """Logits of a calibrated model times 5: over-confident; the fitted T is near 5 and lowers NLL and ECE, and
    fitting again (also under inference_mode, as evaluate.py runs) gives the very same T."""
    logits, labels = calibrated_logits()
    over_confident = (5 * logits).float()
    temperature = fit_temperature(over_confident, labels)
    assert temperature == pytest.approx(5, rel=0.1)
    before = calibration_metrics(over_confident, labels)
    after = calibration_metrics(over_confident, labels, temperature)
    assert after["nll"] < before["nll"] - 0.5 and after["ece"] < before["ece"] / 3 and after["ece"] < 0.05
    assert after["brier"] < before["brier"]
    with torch.inference_mode():
        assert fit_temperature(over_confident, labels) == temperature
    assert fit_temperature(logits, labels) == pytest.approx(1, rel=0.1)  # calibrated already: T stays near 1


def test_fit_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match="one label per logit row"):
        fit_temperature(torch.zeros(3, 10), torch.zeros(2, dtype=torch.long))


@pytest.fixture
def checkpoints(tmp_path):
    """Two different files standing in for checkpoints (only their SHA-256 matters here)."""
    mine, other = tmp_path / "mine.ckpt", tmp_path / "other.ckpt"
    mine.write_bytes(b"my weights")
    other.write_bytes(b"other weights")
    return mine, other


def save_in_run(log_dir, run: str, temperature: float, checkpoint, mtime: float):
    metrics = {"ece": 0.1, "mce": 0.2, "nll": 0.9, "brier": 0.3}
    path = log_dir / "evaluate" / "runs" / run / CALIBRATION_FILE
    save_calibration(path, temperature, checkpoint, "validation split (5,000 images)", metrics, metrics)
    os.utime(path, (mtime, mtime))
    return path


def test_save_find_read_round_trip(checkpoints, tmp_path):
    mine, other = checkpoints
    logs = tmp_path / "logs"
    assert find_calibration(mine, logs) is None
    older = save_in_run(logs, "older", 1.5, mine, 1_000)
    newer = save_in_run(logs, "newer", 2.25, mine, 2_000)
    save_in_run(logs, "newest_other", 3.0, other, 3_000)  # newest, but another checkpoint's
    damaged = logs / "evaluate" / "runs" / "damaged" / CALIBRATION_FILE
    damaged.parent.mkdir(parents=True)
    damaged.write_text('{"format": "cifar-lightning calib')  # truncated: passed over
    record = json.loads(newer.read_text())
    assert record["fitted_on"] == "validation split (5,000 images)" and record["checkpoint"] == str(mine)
    assert record["before"]["ece"] == 0.1 and record["after"]["brier"] == 0.3 and record["bins"] == 15
    assert not list(newer.parent.glob(".*partial"))  # the atomic write's temporary file is gone
    assert find_calibration(mine, logs) == newer and read_calibration(newer, mine) == 2.25
    assert read_calibration(older, mine) == 1.5
    assert find_calibration(other, logs).parent.name == "newest_other"


def test_read_refuses_another_checkpoints_or_a_damaged_file(checkpoints, tmp_path):
    mine, other = checkpoints
    path = save_in_run(tmp_path, "run", 2.0, other, 1_000)
    with pytest.raises(CalibrationFileError, match="fitted for another checkpoint.*python evaluate.py ckpt="):
        read_calibration(path, mine)
    with pytest.raises(CalibrationFileError, match="does not exist.*calibration=false"):
        read_calibration(tmp_path / "missing.json", mine)
    path.write_text(path.read_text()[:40])
    with pytest.raises(CalibrationFileError, match="not readable JSON.*calibration_file="):
        read_calibration(path, other)
    for bad in (-1.0, 0.0, float("nan"), "2.0", True):
        record = json.loads(save_in_run(tmp_path, "run", 2.0, other, 1_000).read_text())
        path.write_text(json.dumps({**record, "temperature": bad}))
        with pytest.raises(CalibrationFileError, match="temperature .* is not a finite number > 0"):
            read_calibration(path, other)
    with pytest.raises(ValueError, match="finite number > 0"):
        save_calibration(path, 0.0, other, "here", {}, {})


def test_choose_calibration(checkpoints, tmp_path, caplog):
    mine, other = checkpoints
    logs = tmp_path / "logs"
    with caplog.at_level(logging.WARNING):
        assert choose_calibration(True, None, mine, logs, "predict") is None
    assert f"no {CALIBRATION_FILE} saved for {mine}" in caplog.text and f"python evaluate.py ckpt={mine}" in caplog.text
    saved = save_in_run(logs, "run", 1.75, mine, 1_000)
    assert choose_calibration(True, None, mine, logs, "predict") == Calibration(1.75, str(saved))
    assert choose_calibration(False, None, mine, logs, "predict") is None  # turned off: nothing read
    theirs = save_in_run(tmp_path, "theirs", 1.25, other, 1_000)
    with pytest.raises(CalibrationFileError, match="another checkpoint"):
        choose_calibration(True, str(theirs), mine, logs, "serve")


def test_the_temperature_changes_the_probabilities_not_the_ood_scores(classifier):
    """classify() with an MSP detector: with T = 3 the top-k probabilities are softmax(logits / 3), the classes
    and the OOD scores (MSP of the raw logits, as the detector was fitted) are those at T = 1."""
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    detector = OODDetector("msp", -0.5, (), "test", {})
    raw = classify(classifier, images, detector, top_k=3)
    classifier.temperature = 3.0
    try:
        scaled = classify(classifier, images, detector, top_k=3)
        predicted = classifier.predict(images)
    finally:
        classifier.temperature = 1.0  # the fixture is shared
    logits = classifier.predict(images).logits
    expected = (logits / 3).softmax(dim=1).topk(3, dim=1)
    assert torch.equal(predicted.logits, logits)  # logits are never scaled
    torch.testing.assert_close(predicted.probabilities, (logits / 3).softmax(dim=1))
    for before, after, probabilities, indices in zip(raw, scaled, expected.values, expected.indices):
        assert [top["index"] for top in after["top_k"]] == [top["index"] for top in before["top_k"]]
        assert [top["index"] for top in after["top_k"]] == indices.tolist()
        assert [top["probability"] for top in after["top_k"]] == pytest.approx(probabilities.tolist(), abs=1e-6)
        assert after["top_k"][0]["probability"] < before["top_k"][0]["probability"]  # T > 1 softens
        assert after["ood"] == before["ood"]
