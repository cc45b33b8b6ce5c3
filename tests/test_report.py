"""report.html from real figures: one self-contained file, headline numbers, every image embedded,
all text escaped, and missing images or summary keys noted rather than fatal.

`sample_report` builds a report like evaluate.py's, from a random ReportCNN and random images; it
is also what benchmarks/report_screenshot.py was checked on:

    python -c "from pathlib import Path; from tests.test_report import sample_report as s; s(Path('/tmp/r'))"
    python benchmarks/report_screenshot.py /tmp/r/report.html
"""

import base64
import re
from html import unescape
from pathlib import Path

import numpy as np
import torch

from cifar_lightning.data import CIFAR10_CLASSES, normalize
from cifar_lightning.figures import plot_confusion_matrix, plot_curves, plot_gallery
from cifar_lightning.gradcam import gradcam_overlays
from cifar_lightning.models import ReportCNN
from cifar_lightning.report import write_report
from tests.helpers import assert_report_shows

CLASSES = ["<b>plane</b>", *CIFAR10_CLASSES[1:]]  # a name that must be escaped


def summary() -> dict:
    """An evaluation.json as evaluation.py writes it."""
    confusion = (np.eye(10, dtype=int) * 600 + 40).tolist()
    return {
        "test_acc": 0.692,
        "test_loss": 0.8914,
        "per_class_acc": [0.6 + 0.02 * i for i in range(10)],
        "precision": [0.7] * 10,
        "recall": [0.6 + 0.02 * i for i in range(10)],
        "f1": [0.65] * 10,
        "confusion": confusion,
        "num_images": 10_000,
        "classes": CLASSES,
        "checkpoint": "logs/train/runs/2026-11-27_10-00-00/checkpoints/best.ckpt",
        "checkpoint_epoch": 20,
        "experiment": "report_improved",
        "model": {"_target_": "cifar_lightning.models.ReportCNN", "batch_norm": "all", "dropout": 0.2},
        "normalization": {"mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]},
        "device": "cpu",
        "gradcam": {"layer": "conv3", "explain": "predicted"},
        "loss": "cross_entropy",
        "tta": 2,
        "seconds": 82.614,
    }


def sample_report(out_dir: Path) -> Path:
    """A full report (confusion matrix, galleries, Grad-CAM overlays, curves) in out_dir/report.html."""
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    figures = out_dir / "figures"
    images = rng.integers(0, 256, size=(12, 3, 32, 32), dtype=np.uint8)
    true, predicted = rng.integers(0, 10, 12).tolist(), rng.integers(0, 10, 12).tolist()
    data = summary()
    confusion = plot_confusion_matrix(np.array(data["confusion"]), data["classes"], figures / "confusion_matrix.png")
    confidence = rng.random(12).tolist()
    gallery = plot_gallery(images, true, predicted, confidence, CIFAR10_CLASSES, "Predictions", figures / "gallery.png")
    mean, std = torch.tensor([0.49, 0.48, 0.45]), torch.tensor([0.25, 0.24, 0.26])
    model, captions = ReportCNN(batch_norm="all"), [f"image {i}" for i in range(3)]
    cams = gradcam_overlays(
        model,
        "conv3",
        torch.from_numpy(images[:3]),
        lambda x: normalize(x, mean, std),
        predicted[:3],
        captions,
        figures / "gradcam",
        "sample",
    )
    history = [
        {"epoch": e, "train_loss": 2 / e, "val_loss": 2.1 / e, "train_acc": 0.03 * e, "val_acc": 0.028 * e, "lr": 0.01}
        for e in range(1, 11)
    ]
    curves = plot_curves(history, figures / "curves.png")
    sections = [
        ("Confusion matrix", [confusion]),
        ("Predictions", [gallery]),
        ("Grad-CAM", [cam.path for cam in cams]),
        ("Training curves", [curves]),
    ]
    return write_report(out_dir, data, sections)


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def test_report_is_one_self_contained_page(tmp_path):
    path = sample_report(tmp_path)
    assert path == tmp_path / "report.html"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures", "report.html"]  # nothing else written
    page = path.read_text(encoding="utf-8")
    pngs = sorted((tmp_path / "figures").rglob("*.png"))
    assert len(pngs) == 6
    assert_report_shows(page, 0.692, pngs)
    lowered = page.lower()
    assert "http://" not in lowered and "https://" not in lowered and "<script" not in lowered


def test_report_shows_the_summary(tmp_path):
    page = sample_report(tmp_path).read_text(encoding="utf-8")
    assert "69.20%" in page and "0.8914" in page and "10,000" in page
    assert "logs/train/runs/2026-11-27_10-00-00/checkpoints/best.ckpt" in page
    assert row("batch_norm", "all") in page and row("class", "ReportCNN (cifar_lightning.models)") in page
    assert "automobile" in page and "62.0%" in page and "1,000" in page  # per-class table, test images per class
    assert "&lt;b&gt;plane&lt;/b&gt;" in page and "<b>" not in page
    assert row("evaluation time", "82.6 s (1 min 23 s)") in page
    assert row("test-time augmentation", "2 (with mirror images and one-pixel shifts)") in page
    assert row("Grad-CAM layer", "conv3") in page and row("Grad-CAM explains", "predicted class") in page


def row(*cells: str) -> str:
    """A table row as html_table writes it."""
    return "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def shown_text(page: str) -> str:
    """The page's text as a reader sees it: tags and the <style> block dropped, entities unescaped."""
    return unescape(re.sub(r"<[^>]+>", " ", re.sub(r"<style>.*?</style>", "", page, flags=re.S)))


def test_no_raw_json_anywhere(tmp_path):
    """Every field is in a labelled table: no <pre> block and no JSON-looking text, nested dicts included."""
    data = summary() | {"ood_extra": {"sets": ["svhn", "textures"], "counts": {"svhn": 10, "nested": [{"a": 1}]}}}
    page = write_report(tmp_path, data, []).read_text(encoding="utf-8")
    text = shown_text(page)
    assert "<pre" not in page
    assert not re.search(r'\{\s*"|"\s*:\s|\[\s*-?[\d.]+\s*,|\{\}', text), "JSON-looking text on the page"
    assert row("ood_extra.sets", "svhn, textures") in page and row("ood_extra.counts.nested.0.a", "1") in page


def test_normalization_is_a_table_by_channel(tmp_path):
    page = write_report(tmp_path, summary(), []).read_text(encoding="utf-8")
    assert "<tr><th></th><th>R</th><th>G</th><th>B</th></tr>" + row("mean", "0.4900", "0.4800", "0.4500") in page
    assert row("std", "0.2500", "0.2400", "0.2600") in page


def test_unknown_fields_are_shown_under_their_key(tmp_path):
    """A field the page has no label for (a newer evaluation.py's) is a row of its own, dotted when nested; a
    normalization of another shape than mean/std per channel is shown as rows too, not dropped."""
    data = {"future": {"flag": True, "empty": {}, "none": None}, "normalization": {"mean": [0.5], "scale": 2.0}}
    page = write_report(tmp_path, data, []).read_text(encoding="utf-8")
    assert row("future.flag", "true") in page and row("future.empty", "(empty)") in page
    assert row("future.none", "n/a") in page
    assert row("normalization.mean", "0.5") in page and row("normalization.scale", "2.0") in page
    assert "<th>R</th>" not in page


def test_missing_image_is_noted_not_fatal(tmp_path):
    present = plot_curves([{"epoch": 1, "train_loss": 1.0}], tmp_path / "curves.png")
    missing = tmp_path / "gone.png"
    path = write_report(tmp_path / "out", {"test_acc": 0.5}, [("Figures", [missing, present]), ("Empty", [])])
    page = path.read_text(encoding="utf-8")
    assert "Missing image" in page and str(missing) in page
    assert data_uri(present) in page
    assert "Nothing to show in this section" in page


def test_empty_summary_still_writes_a_page(tmp_path):
    page = write_report(tmp_path, {}, []).read_text(encoding="utf-8")
    assert "no test accuracy" in page and "no per-class metrics" in page and "No model config" in page


def test_per_class_metrics_present_are_shown(tmp_path):
    data = {"test_acc": 0.25, "classes": ["a", "b"], "per_class_acc": [0.125, 0.375], "f1": [0.5, None]}
    page = write_report(tmp_path, data, []).read_text(encoding="utf-8")
    assert "25.00%" in page and "12.5%" in page and "37.5%" in page and "n/a" in page
    assert "<table><tr><th>class</th><th>accuracy</th><th>F1</th></tr><tr><td>a</td>" in page  # html_table, untitled
    assert "<h3></h3>" not in page
