"""The prediction job in-process: which files `inputs` names, settings refused before any work, and CIFAR-10
test images exported as PNG predicted exactly as the Classifier predicts the test tensors, in both output files
and their documented schemas; the temperature evaluate.py saved for the checkpoint calibrates the probabilities
by default, calibration=false turns it off, and a named calibration file of another checkpoint is refused."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict
from PIL import Image

from cifar_lightning.calibration import CALIBRATION_FILE, CalibrationFileError, save_calibration
from cifar_lightning.checkpoints import file_sha256
from cifar_lightning.data import load_cifar10
from cifar_lightning.errors import ConfigError, DataError
from cifar_lightning.inference import Classifier
from cifar_lightning.ood.runtime import choose_detector
from cifar_lightning.ood.saved import DETECTORS_FILE, FORMAT, VERSION, DetectorsError
from cifar_lightning.prediction import gather_inputs, run_prediction
from tests.conftest import CONF_DIR

CSV_COLUMNS = [
    "file",
    "status",
    "class_1",
    "probability_1",
    "class_2",
    "probability_2",
    "class_3",
    "probability_3",
    "class_4",
    "probability_4",
    "ood_score",
    "ood",
    "error",
]
JSON_KEYS = {
    "schema_version",
    "checkpoint",
    "checkpoint_epoch",
    "classes",
    "tta",
    "top_k",
    "device",
    "inputs",
    "calibrated",
    "calibration",
    "ood",
    "counts",
    "seconds",
    "images_per_second",
    "predictions",
}
ENTRY_KEYS = {"file", "status", "top_k", "ood_score", "ood", "error"}


def compose_predict(overrides: list[str], output_dir: Path) -> DictConfig:
    """The predict.py config with these overrides, as Hydra would compose it, writing into output_dir."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose(config_name="predict", overrides=["progress=false", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def touch(*paths: Path) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_a_folder_is_read_recursively_sorted_without_hidden_files(tmp_path):
    root = tmp_path / "photos"
    touch(root / "b.png", root / "a" / "z.jpg", root / "c.txt", root / ".hidden.png", root / ".cache" / "d.png")
    assert gather_inputs(str(root)) == [root / "a" / "z.jpg", root / "b.png", root / "c.txt"]


def test_globs_and_lists_keep_input_order_and_each_file_once(tmp_path):
    touch(tmp_path / "x" / "2.png", tmp_path / "x" / "1.png", tmp_path / "x" / "deep" / "3.png", tmp_path / "y.jpg")
    assert gather_inputs(f"{tmp_path}/x/*.png") == [tmp_path / "x" / "1.png", tmp_path / "x" / "2.png"]
    assert gather_inputs(f"{tmp_path}/x/**/*.png") == [tmp_path / "x" / p for p in ("1.png", "2.png", "deep/3.png")]
    listed = gather_inputs([str(tmp_path / "y.jpg"), f"{tmp_path}/x/2.png", str(tmp_path / "x")])
    assert listed == [
        tmp_path / "y.jpg",
        tmp_path / "x" / "2.png",
        tmp_path / "x" / "1.png",
        tmp_path / "x" / "deep" / "3.png",
    ]


def test_no_files_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    touch(tmp_path / "hidden_only" / ".DS_Store")
    with pytest.raises(DataError, match="the folder .*empty holds no file"):
        gather_inputs(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="holds no file .hidden files are skipped"):
        gather_inputs(str(tmp_path / "hidden_only"))
    with pytest.raises(DataError, match="matches no file"):
        gather_inputs(f"{tmp_path}/*.png")
    with pytest.raises(DataError, match="does not exist"):
        gather_inputs(str(tmp_path / "typo.png"))
    with pytest.raises(ConfigError, match="`inputs` was not given"):
        gather_inputs(None)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("top_k=0", "top_k"),
        ("top_k=11", "top_k"),
        ("batch_size=0", "batch_size"),
        ("workers=0", "workers"),
        ("max_pixels=-1", "max_pixels"),
        ("ood.fit=yes", "ood"),
        ("ood.file=saved.pt", "ood"),
        ("ood.detector=mystery", "ood"),
        ("tta=3", "tta"),
        ("device=tpu", "device"),
        ("calibration=yes", "calibration"),
        ("calibration_file=[a.json]", "calibration_file"),
    ],
)
def test_bad_settings_are_refused_before_any_work(tmp_path, override, key):
    cfg = compose_predict(["ckpt=any.ckpt", "inputs=any.png", "ood.fit=true", override], tmp_path / "out")
    with pytest.raises(ConfigError, match=f"invalid `{key}` config: .*python predict.py.*nothing was predicted"):
        run_prediction(cfg)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("override", ["ood=none", "ood.enabled=false"])
def test_ood_can_be_turned_off(tmp_path, override):
    cfg = compose_predict(["ckpt=any.ckpt", "inputs=any.png", override], tmp_path / "out")
    assert cfg.ood.enabled is False and choose_detector(cfg, classifier=None, entry="predict") is None


@pytest.fixture(scope="module")
def cifar_pngs(tmp_path_factory, data_dir) -> tuple[Path, torch.Tensor]:
    """The first 200 CIFAR-10 test images as PNG files 000.png ... 199.png, and the same images as a tensor."""
    images = load_cifar10(data_dir).test_images[:200]
    folder = tmp_path_factory.mktemp("cifar_png")
    for index, image in enumerate(images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{index:03d}.png")
    return folder, images


def test_cifar_pngs_are_predicted_as_the_test_tensors(tiny_run, cifar_pngs, tmp_path):
    """tta=1 and top_k=4; batches of 64 (four batches, the last one short) on both sides."""
    folder, images = cifar_pngs
    checkpoint = tiny_run[0] / "checkpoints" / "best.ckpt"
    out = tmp_path / "out"
    cfg = compose_predict(
        [
            f"ckpt={checkpoint}",
            f"inputs={folder}",
            "tta=1",
            "top_k=4",
            "batch_size=64",
            "workers=2",
            "device=cpu",
            "ood.enabled=false",
        ],
        out,
    )
    summary = run_prediction(cfg)
    reference = Classifier.load(checkpoint, device="cpu", tta=1).predict(images, batch_size=64)
    probabilities, indices = reference.top_k(4)

    record = json.loads((out / "predictions.json").read_text())
    assert set(record) == JSON_KEYS and record["schema_version"] == 2
    assert record["calibrated"] is False and record["calibration"] is None  # none saved for this checkpoint
    assert {key: record[key] for key in summary} == summary
    assert record["tta"] == 1 and record["top_k"] == 4 and record["ood"] is None and record["device"] == "cpu"
    assert record["counts"] == {"files": 200, "predicted": 200, "errors": 0, "ood": None}
    assert record["images_per_second"] > 0 and record["classes"][3] == "cat"
    entries = record["predictions"]
    assert [entry["file"] for entry in entries] == [str(folder / f"{i:03d}.png") for i in range(200)]
    for entry, expected_p, expected_c in zip(entries, probabilities.tolist(), indices.tolist()):
        assert set(entry) == ENTRY_KEYS and entry["status"] == "ok" and entry["error"] is None
        assert entry["ood_score"] is None and entry["ood"] is None
        assert [top["index"] for top in entry["top_k"]] == expected_c
        assert [top["class"] for top in entry["top_k"]] == [record["classes"][c] for c in expected_c]
        np.testing.assert_allclose([top["probability"] for top in entry["top_k"]], expected_p, rtol=0, atol=1e-6)

    with (out / "predictions.csv").open(newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == CSV_COLUMNS and len(rows) == 201
    for row, entry in zip(rows[1:], entries):
        assert row[:2] == [entry["file"], "ok"] and row[-3:] == ["", "", ""]
        assert row[2:10:2] == [top["class"] for top in entry["top_k"]]
        assert [float(p) for p in row[3:11:2]] == [round(top["probability"], 6) for top in entry["top_k"]]


@pytest.fixture(scope="module")
def digits(tmp_path_factory, data_dir) -> Path:
    """Five MNIST test digits as 28 x 28 grayscale PNG files."""
    folder = tmp_path_factory.mktemp("digits")
    for index, digit in enumerate(np.load(data_dir / "ood" / "mnist_test.npz")["images"][:5]):
        Image.fromarray(digit).save(folder / f"digit_{index}.png")
    return folder


def read_outputs(out: Path) -> tuple[dict, list[dict]]:
    with (out / "predictions.csv").open(newline="") as file:
        return json.loads((out / "predictions.json").read_text()), list(csv.DictReader(file))


def assert_verdicts(record: dict, rows: list[dict], files: int) -> list[float]:
    """Every file has a float score and the verdict score > threshold, the same in both files; returns the scores."""
    threshold, entries = record["ood"]["threshold"], record["predictions"]
    assert len(entries) == len(rows) == files and all(entry["status"] == "ok" for entry in entries)
    for entry, row in zip(entries, rows):
        assert isinstance(entry["ood_score"], float) and entry["ood"] == (entry["ood_score"] > threshold), entry
        assert float(row["ood_score"]) == entry["ood_score"] and row["ood"] == str(entry["ood"]).lower()
    assert record["counts"]["ood"] == sum(entry["ood"] for entry in entries)
    return [entry["ood_score"] for entry in entries]


def test_saved_detectors_are_found_for_this_checkpoint(tiny_run, cifar_pngs, digits, tmp_path):
    """A detectors file as evaluate.py lays it out (msp and the mean activation of relu4, with thresholds chosen
    here so that both verdicts occur): found under paths.log_dir by the checkpoint's SHA-256, or named by ood.file;
    the scores are the detectors' own, recomputed here."""
    folder, images = cifar_pngs
    checkpoint = tiny_run[0] / "checkpoints" / "best.ckpt"
    classifier = Classifier.load(checkpoint, device="cpu")
    features = classifier.features(images, layers=["relu4"])
    msp = -features.logits.softmax(dim=1).max(dim=1).values.double()
    relu4 = -features.layer_means["relu4"].double()  # "below": a low mean activation is OOD
    saved = tmp_path / "logs" / "evaluate" / "runs" / "earlier" / DETECTORS_FILE
    saved.parent.mkdir(parents=True)
    detectors = {
        "msp": {"threshold": float(msp.median()), "layers": [], "state": {}},
        "mean_activation": {
            "threshold": float(relu4.median()),
            "layers": ["relu4"],
            "state": {"layer": "relu4", "direction": "below"},
        },
    }
    record = {
        "format": FORMAT,
        "version": VERSION,
        "checkpoint": str(checkpoint),
        "default": "knn",
        "checkpoint_sha256": file_sha256(checkpoint),
        "settings": {},
        "detectors": detectors,
    }
    torch.save(record, saved)
    common = [f"ckpt={checkpoint}", f"inputs={folder}", "device=cpu", f"paths.log_dir={tmp_path / 'logs'}"]

    run_prediction(compose_predict([*common, "ood.detector=mean_activation"], tmp_path / "found"))
    record, rows = read_outputs(tmp_path / "found")
    assert record["ood"] == {"detector": "mean_activation", "threshold": float(relu4.median()), "source": str(saved)}
    np.testing.assert_allclose(assert_verdicts(record, rows, 200), relu4.numpy(), rtol=1e-6)
    assert 0 < record["counts"]["ood"] < 200
    reference = classifier.predict(images)  # the detector's forward pass gave the predictions too (tta=0)
    np.testing.assert_allclose(
        [e["top_k"][0]["probability"] for e in record["predictions"]], reference.confidence.numpy(), rtol=0, atol=1e-6
    )

    run_prediction(compose_predict([*common, f"ood.file={saved}", "ood.detector=msp", "tta=1"], tmp_path / "named"))
    record, rows = read_outputs(tmp_path / "named")
    assert record["ood"]["detector"] == "msp" and record["tta"] == 1
    np.testing.assert_allclose(assert_verdicts(record, rows, 200), msp.numpy(), rtol=1e-6)  # OOD scores: no TTA

    with pytest.raises(DetectorsError, match="holds no detector 'knn'; it holds msp, mean_activation"):
        run_prediction(compose_predict(common, tmp_path / "default"))  # knn, the default, was not saved
    assert not (tmp_path / "default").exists()


def test_a_detector_fitted_now(tiny_run, cifar_pngs, digits, data_dir, tmp_path):
    """ood.fit=true: KNN fitted on 1,000 training-split images; CIFAR-10 test images and MNIST digits all get
    scores and the verdict score > threshold (which set scores higher is not assertable for a tiny model)."""
    out = tmp_path / "out"
    cfg = compose_predict(
        [
            f"run_dir={tiny_run[0]}",
            f"inputs=[{cifar_pngs[0]},{digits}]",
            "device=cpu",
            f"data.data_dir={data_dir}",
            "data.download=false",
            "ood.fit=true",
            "ood.fit_images=1000",
            f"paths.log_dir={tmp_path / 'logs'}",
        ],
        out,
    )
    run_prediction(cfg)
    record, rows = read_outputs(out)
    assert record["ood"]["detector"] == "knn" and record["ood"]["source"] == "fitted now"
    assert np.isfinite(assert_verdicts(record, rows, 205)).all()
    assert [Path(row["file"]).name for row in rows[-5:]] == [f"digit_{i}.png" for i in range(5)]


def test_a_saved_temperature_calibrates_the_probabilities(tiny_run, cifar_pngs, tmp_path):
    """A calibration.json for this very checkpoint (T = 2.5), found under paths.log_dir: the probabilities are
    softmax(logits / 2.5), the classes unchanged; calibration=false gives the raw softmax; a calibration_file of
    another checkpoint stops the job before any output."""
    folder, images = cifar_pngs
    checkpoint = tiny_run[0] / "checkpoints" / "best.ckpt"
    metrics = {"ece": 0.2, "mce": 0.4, "nll": 2.0, "brier": 0.8}
    saved = tmp_path / "logs" / "evaluate" / "runs" / "earlier" / CALIBRATION_FILE
    save_calibration(saved, 2.5, checkpoint, "validation split (5,000 images)", metrics, metrics)
    common = [f"ckpt={checkpoint}", f"inputs={folder}/00*.png", "device=cpu", "ood.enabled=false", "top_k=10"]
    common.append(f"paths.log_dir={tmp_path / 'logs'}")
    logits = Classifier.load(checkpoint, device="cpu").predict(images[:10]).logits

    run_prediction(compose_predict(common, tmp_path / "calibrated"))
    calibrated, _ = read_outputs(tmp_path / "calibrated")
    run_prediction(compose_predict([*common, "calibration=false"], tmp_path / "raw"))
    raw, _ = read_outputs(tmp_path / "raw")

    assert calibrated["calibrated"] is True and calibrated["calibration"] == {"temperature": 2.5, "source": str(saved)}
    assert raw["calibrated"] is False and raw["calibration"] is None
    for record, temperature in ((calibrated, 2.5), (raw, 1.0)):
        probabilities, indices = (logits / temperature).softmax(dim=1).topk(10, dim=1)
        for entry, expected_p, expected_c in zip(record["predictions"], probabilities, indices):
            assert [top["index"] for top in entry["top_k"]] == expected_c.tolist()
            np.testing.assert_allclose([top["probability"] for top in entry["top_k"]], expected_p, rtol=0, atol=1e-6)
    top = [[entry["top_k"][0] for entry in record["predictions"]] for record in (calibrated, raw)]
    assert [t["index"] for t in top[0]] == [t["index"] for t in top[1]]  # the same classes
    assert all(c["probability"] < r["probability"] for c, r in zip(*top))  # T > 1: less confident

    other = tmp_path / "other.ckpt"
    other.write_bytes(b"another model")
    theirs = save_calibration(tmp_path / "theirs.json", 1.5, other, "validation split", metrics, metrics)
    with pytest.raises(CalibrationFileError, match="fitted for another checkpoint"):
        run_prediction(compose_predict([*common, f"calibration_file={theirs}"], tmp_path / "refused"))
    assert not (tmp_path / "refused").exists()
