"""Corruption robustness (cifar_lightning.robustness) with a tiny untrained classifier on a few hundred real test
images: the 15 x 5 accuracy cells, the detectors' false alarms, the files and report sections; CIFAR-10.1 where
present; the official CIFAR-10-C loader's refusals, and an official run on a small fake CIFAR-10-C folder."""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cifar_lightning import robustness
from cifar_lightning.config import check
from cifar_lightning.config.evaluate import EvaluateSettings
from cifar_lightning.corruptions import CORRUPTIONS
from cifar_lightning.data import CIFAR10_CLASSES, load_cifar10
from cifar_lightning.errors import ConfigError, DataError
from cifar_lightning.inference import Classifier
from cifar_lightning.report import Table
from cifar_lightning.robustness import GENERATED_LABEL, OFFICIAL_LABEL, load_official_c, run_robustness
from tests.conftest import compose_evaluate

IMAGES = 200


@dataclass(frozen=True)
class FakeDetector:
    """An outlier score of features: minus the largest logit (higher = more foreign)."""

    name: str
    threshold: float
    layers: tuple[str, ...] = ()
    needs_images: bool = False

    def score(self, features) -> torch.Tensor:
        return -features.logits.max(1).values.double()


@pytest.fixture(scope="module")
def test_set(data_dir) -> tuple[torch.Tensor, torch.Tensor]:
    arrays = load_cifar10(data_dir)
    return arrays.test_images[:IMAGES].contiguous(), arrays.test_labels[:IMAGES]


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10)
    )
    return Classifier(model.eval(), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), CIFAR10_CLASSES, torch.device("cpu"))


def options(tmp_path: Path, **changes):
    settings = dict(source="generated", data_dir=tmp_path / "data", download=False, max_images=None, seed=0)
    return settings | dict(batch_size=100, progress=False, output_dir=tmp_path / "out") | changes


def accuracy(classifier: Classifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    return (classifier.features(images, []).logits.argmax(1) == labels).double().mean().item()


def test_a_generated_run_measures_every_cell_and_writes_its_files(classifier, test_set, tmp_path):
    images, labels = test_set
    clean_scores = -classifier.features(images, []).logits.max(1).values
    median = clean_scores.median().item()
    detectors = [FakeDetector("fake", median), FakeDetector("odin", 0.0, needs_images=True)]
    summary, sections = run_robustness(classifier, images, labels, detectors=detectors, **options(tmp_path))

    assert summary["source"] == GENERATED_LABEL and summary["images"] == IMAGES
    assert list(summary["accuracy"]) == list(CORRUPTIONS)
    assert all(len(cells) == 5 and all(0 <= a <= 1 for a in cells) for cells in summary["accuracy"].values())
    every = [a for cells in summary["accuracy"].values() for a in cells]
    assert summary["mean_corruption_acc"] == pytest.approx(np.mean(every))
    assert summary["clean_acc"] == pytest.approx(accuracy(classifier, images, labels))
    fog = robustness.generated_images(images, "fog", 3, seed=0)  # one cell, measured by hand
    assert summary["accuracy"]["fog"][2] == pytest.approx(accuracy(classifier, fog, labels))
    assert len(set(every)) > 1  # the corruptions change what the model predicts

    alarms = summary["false_alarms"]["fake"]
    assert alarms["clean"] == pytest.approx((clean_scores > median).double().mean().item())
    expected = (-classifier.features(fog, []).logits.max(1).values > median).double().mean().item()
    assert alarms["corrupted"]["fog"][2] == pytest.approx(expected)
    assert set(summary["false_alarms"]) == {"fake"} and summary["skipped_detectors"] == ["odin"]
    assert "cifar10_1" not in summary  # no CIFAR-10.1 files in this data folder

    out = tmp_path / "out"
    assert json.loads((out / "robustness.json").read_text()) == json.loads(json.dumps(summary))
    markdown = (out / "robustness.md").read_text()
    assert all(f"| {name} |" in markdown for name in CORRUPTIONS) and "| corruption | fake |" in markdown
    assert markdown.count("| severity 1 | severity 2 | severity 3 | severity 4 | severity 5 | mean |") == 1
    assert Image.open(out / "robustness.png").size[0] > 400
    (heading, items), *rest = sections
    assert not rest and "Corruption robustness" in heading
    assert out / "robustness.png" in items
    tables = [item for item in items if isinstance(item, Table)]
    assert [len(t.rows) for t in tables] == [len(CORRUPTIONS) + 2, len(CORRUPTIONS) + 2]


def test_generated_images_are_reproducible_per_seed(test_set):
    images = test_set[0][:50]
    first = robustness.generated_images(images, "gaussian_noise", 2, seed=1)
    assert torch.equal(first, robustness.generated_images(images, "gaussian_noise", 2, seed=1))
    assert not torch.equal(first, robustness.generated_images(images, "gaussian_noise", 2, seed=2))


def write_official(folder: Path, images: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
    """A fake CIFAR-10-C: severity s of every corruption holds the images rolled by 7 * (s - 1) places (the labels
    unrolled), so each severity block has its own accuracy; returns the five blocks."""
    folder.mkdir(parents=True, exist_ok=True)
    blocks = [images.roll(7 * s, 0) for s in range(5)]
    array = np.concatenate([block.permute(0, 2, 3, 1).numpy() for block in blocks])
    for name in CORRUPTIONS:
        np.save(folder / f"{name}.npy", array)
    np.save(folder / "labels.npy", np.concatenate([labels.numpy().astype(np.uint8)] * 5))
    return blocks


def test_the_official_loader_refuses_a_missing_folder_with_the_fix(tmp_path):
    with pytest.raises(DataError, match=r"CIFAR-10-C does not exist.*data\.download=true.*robustness=generated"):
        load_official_c(tmp_path, download=False)


def test_the_official_loader_refuses_a_wrong_file_naming_it(test_set, tmp_path, monkeypatch):
    monkeypatch.setattr(robustness, "PER_SEVERITY", 20)
    images, labels = test_set[0][:20], test_set[1][:20]
    write_official(tmp_path / "CIFAR-10-C", images, labels)
    np.save(tmp_path / "CIFAR-10-C" / "fog.npy", np.zeros((100, 32, 32), np.uint8))
    (tmp_path / "CIFAR-10-C" / "snow.npy").unlink()
    with pytest.raises(DataError) as refused:
        load_official_c(tmp_path, download=False)
    message = str(refused.value)
    assert (
        "fog.npy holds uint8 (100, 32, 32), not uint8 (100, 32, 32, 3)" in message and "snow.npy is missing" in message
    )
    assert "data.download=true" in message and "robustness=generated" in message


def test_an_official_run_reads_each_severity_block(classifier, test_set, tmp_path, monkeypatch):
    """Each cell is measured on its own severity block's first max_images images; the download is md5-checked."""
    monkeypatch.setattr(robustness, "PER_SEVERITY", 40)
    images, labels = test_set[0][:40], test_set[1][:40]
    data, fetched, blocks = tmp_path / "data", [], []

    def fake_download(url, root, md5, remove_finished):
        fetched.append((url, md5))
        blocks.extend(write_official(Path(root) / "CIFAR-10-C", images, labels))

    monkeypatch.setattr(robustness, "download_and_extract_archive", fake_download)
    official = load_official_c(data, download=True)
    assert fetched == [(robustness.OFFICIAL_URL, "56bf5dcef84df0e2308c6dcbcbbd8499")]
    summary, _ = run_robustness(classifier, images, labels, **options(tmp_path, source=official, max_images=30))
    expected = [accuracy(classifier, block[:30], labels[:30]) for block in blocks]
    assert len(set(expected)) > 1  # the blocks tell apart
    assert summary["source"] == OFFICIAL_LABEL and summary["images"] == 30 and summary["seed"] is None
    assert all(cells == pytest.approx(expected) for cells in summary["accuracy"].values())


def test_cifar10_1_is_measured_where_present_and_a_wrong_file_refused(classifier, test_set, tmp_path):
    images, labels = test_set[0][:30], test_set[1][:30]
    folder = tmp_path / "data" / "CIFAR-10.1"
    folder.mkdir(parents=True)
    np.save(folder / "cifar10.1_v6_data.npy", images.permute(0, 2, 3, 1).numpy())
    np.save(folder / "cifar10.1_v6_labels.npy", labels.numpy())
    new = robustness.load_cifar101(tmp_path / "data")
    assert torch.equal(new[0], images) and torch.equal(new[1], labels)
    np.save(folder / "cifar10.1_v6_data.npy", images.float().numpy())
    with pytest.raises(DataError, match=r"cifar10\.1_v6_data\.npy holds float32 .* not uint8 \(N, 32, 32, 3\)"):
        run_robustness(classifier, images, labels, **options(tmp_path, max_images=5))
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_the_settings_parse_as_plain_overrides(tmp_path):
    """`robustness=generated` is a value, not a config group (there is no conf/robustness/); a wrong one is refused."""
    cfg = compose_evaluate(["ckpt=x", "robustness=generated", "robustness_images=500"], tmp_path)
    check(cfg, "evaluate", "nothing was evaluated", root=EvaluateSettings)
    assert (cfg.robustness, cfg.robustness_images) == ("generated", 500)
    assert compose_evaluate(["ckpt=x"], tmp_path).robustness == "none"
    with pytest.raises(ConfigError, match="robustness must be one of none, generated, official, got 'rain'"):
        check(compose_evaluate(["ckpt=x", "robustness=rain"], tmp_path), "evaluate", "x", root=EvaluateSettings)
