"""predict.py as a user runs it: a folder of every image format, with a truncated JPEG and a text file, gives
one row per file (the unreadable two listed with their reasons), a summary table and images/s; with the
temperature evaluate.py saved for the checkpoint, calibrated probabilities, and the summary says which; no input
files or a bad checkpoint stop with one `error:` line, exit status 2, and nothing written but Hydra's own files."""

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cifar_lightning.calibration import CALIBRATION_FILE, save_calibration
from cifar_lightning.images import load_image
from cifar_lightning.inference import Classifier
from tests.helpers import assert_refused, only_run_dir, run_entry_point
from tests.test_images import write_every_format

HYDRA_FILES = {".hydra", "predict.log"}


def run_predict(*overrides: str, log_dir: Path) -> subprocess.CompletedProcess:
    """predict.py writing under log_dir, without progress bars."""
    return run_entry_point("predict.py", f"paths.log_dir={log_dir}", "progress=false", *overrides)


def test_every_format_in_a_folder(tiny_run, tmp_path):
    folder = tmp_path / "mixed"
    expected = write_every_format(folder)
    Image.new("RGB", (20, 20), (0, 0, 255)).save(folder / ".hidden.png")  # skipped: hidden
    (folder / "sub").mkdir()
    Image.new("RGB", (40, 40), (255, 0, 0)).save(folder / "sub" / "red.png")  # read: subfolders are
    expected["sub/red.png"] = "ok"
    logs = tmp_path / "logs"
    result = run_predict(f"run_dir={tiny_run[0]}", f"inputs={folder}", "top_k=2", log_dir=logs)
    assert result.returncode == 0, result.stderr
    out = only_run_dir(logs, job="predict")

    with (out / "predictions.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    names = [str(Path(row["file"]).relative_to(folder)) for row in rows]
    assert names == sorted(expected)  # one row per file, sorted by path, the hidden one left out
    for row, name in zip(rows, names):
        if expected[name] == "ok":
            assert row["status"] == "ok" and row["error"] == "", row
            probabilities = [float(row["probability_1"]), float(row["probability_2"])]
            assert row["class_1"] != row["class_2"] and 1 >= probabilities[0] >= probabilities[1] > 0
        else:
            assert row["status"] == "error" and expected[name] in row["error"], row
            assert row["class_1"] == row["probability_1"] == ""
        assert row["ood_score"] == row["ood"] == ""  # no detector saved for this checkpoint

    record = json.loads((out / "predictions.json").read_text())
    assert record["counts"] == {"files": len(expected), "predicted": len(expected) - 2, "errors": 2, "ood": None}
    assert record["ood"] is None and all(
        len(e["top_k"]) == (2 if e["status"] == "ok" else 0) for e in record["predictions"]
    )
    assert "no OOD detector saved" in result.stdout + result.stderr  # a warning logged by Hydra
    assert record["calibrated"] is False and record["calibration"] is None
    logged = result.stdout + result.stderr
    assert f"no {CALIBRATION_FILE} saved" in logged and "python evaluate.py ckpt=" in logged
    assert "probabilities: not calibrated (raw softmax)" in result.stdout
    assert f"{len(expected) - 2} of {len(expected)} files predicted" in result.stdout
    assert "images/s" in result.stdout and "not read: " in result.stdout and "truncated.jpg" in result.stdout


def test_a_saved_temperature_calibrates_the_probabilities(tiny_run, tmp_path):
    """calibration.json of this checkpoint (T = 2) under paths.log_dir: found by default, the top-1 classes are
    the raw ones, the probabilities softmax(logits / 2); the printed summary says so."""
    checkpoint = tiny_run[0] / "checkpoints" / "best.ckpt"
    logs = tmp_path / "logs"
    metrics = {"ece": 0.2, "mce": 0.4, "nll": 2.0, "brier": 0.8}
    saved = save_calibration(
        logs / "evaluate" / "runs" / "earlier" / CALIBRATION_FILE, 2.0, checkpoint, "validation split", metrics, metrics
    )
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(4):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    result = run_predict(f"ckpt={checkpoint}", f"inputs={folder}", "top_k=1", "ood=none", log_dir=logs)
    assert result.returncode == 0, result.stderr
    assert f"probabilities: calibrated (temperature 2 from {saved})" in result.stdout

    record = json.loads((only_run_dir(logs, job="predict") / "predictions.json").read_text())
    assert record["calibrated"] is True and record["calibration"] == {"temperature": 2.0, "source": str(saved)}
    images = torch.stack([load_image(folder / f"{index}.png") for index in range(4)])
    logits = Classifier.load(checkpoint, device="cpu").predict(images).logits
    raw, calibrated = logits.softmax(dim=1).max(dim=1), (logits / 2).softmax(dim=1)
    answers = [entry["top_k"][0] for entry in record["predictions"]]
    assert [answer["index"] for answer in answers] == raw.indices.tolist()  # the same classes
    np.testing.assert_allclose([a["probability"] for a in answers], calibrated.max(dim=1).values, atol=1e-6)
    assert all(answer["probability"] < p for answer, p in zip(answers, raw.values.tolist()))


@pytest.mark.slow  # a CLI process start (10-20 s here); the same check runs in-process in the default suite
def test_no_input_files_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    logs = tmp_path / "logs"
    result = run_predict("ckpt=any.ckpt", f"inputs={tmp_path / 'empty'}", log_dir=logs)
    assert_refused(result, "no files to predict", "holds no file", "inputs")
    assert {p.name for p in only_run_dir(logs, job="predict").iterdir()} <= HYDRA_FILES


@pytest.mark.slow  # a CLI process start (10-20 s here); the same check runs in-process in the default suite
def test_a_bad_checkpoint_is_refused(tmp_path):
    image = tmp_path / "cat.png"
    Image.new("RGB", (32, 32)).save(image)
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    logs = tmp_path / "logs"
    assert_refused(run_predict(f"ckpt={bad}", f"inputs={image}", log_dir=logs), str(bad), "Fix:")
    assert {p.name for p in only_run_dir(logs, job="predict").iterdir()} <= HYDRA_FILES
