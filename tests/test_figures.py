"""The evaluation figures on synthetic data: valid PNGs of a sensible size, bad input refused,
galleries of any size, mistakes marked in red, partial training histories, reliability diagrams whose bins and
ECE are the hand-computed ones and torchmetrics'."""

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from cifar_lightning import figures
from cifar_lightning.calibration import calibration_metrics
from cifar_lightning.data import CIFAR10_CLASSES
from cifar_lightning.figures import plot_confusion_matrix, plot_curves, plot_gallery, plot_reliability

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG, after checking its magic bytes."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def red_pixels(path: Path) -> int:
    """Pixels of the caption/frame red (tab:red), absent from gray images and black text."""
    rgb = imread(path)[..., :3]
    return int(((rgb[..., 0] > 0.7) & (rgb[..., 1] < 0.35) & (rgb[..., 2] < 0.35)).sum())


def gray_images(n: int) -> np.ndarray:
    return np.full((n, 3, 32, 32), 128, dtype=np.uint8)


def test_confusion_matrix_png(tmp_path):
    counts = np.random.default_rng(0).integers(0, 100, size=(10, 10))
    path = plot_confusion_matrix(counts, CIFAR10_CLASSES, tmp_path / "confusion.png")
    width, height = png_size(path)
    assert path == tmp_path / "confusion.png"
    assert width >= 800 and height >= 400


def test_confusion_matrix_with_an_empty_class(tmp_path, monkeypatch):
    counts = np.eye(3, dtype=int) * 5
    counts[1] = 0  # no test image of class 1: its row percentages are 0, not NaN
    drawn = []  # the values and cell labels of both panels, as plot_confusion_matrix draws them
    real_draw = figures.draw_matrix
    monkeypatch.setattr(
        figures,
        "draw_matrix",
        lambda ax, values, labels, *rest: (
            drawn.append((np.array(values, dtype=float), labels)),
            real_draw(ax, values, labels, *rest),
        )[1],
    )
    assert png_size(plot_confusion_matrix(counts, ["a", "b", "c"], tmp_path / "c.png"))[0] > 0
    (count_values, count_labels), (share_values, share_labels) = drawn
    assert np.isfinite(share_values).all() and share_values[1].tolist() == [0.0, 0.0, 0.0]
    assert share_labels[1].tolist() == ["0", "0", "0"] and share_labels[0].tolist() == ["100", "0", "0"]
    assert count_labels[1].tolist() == ["0", "0", "0"]


@pytest.mark.parametrize("shape", [(10, 9), (10,), (0, 0)])
def test_confusion_matrix_must_be_square(tmp_path, shape):
    with pytest.raises(ValueError, match="square"):
        plot_confusion_matrix(np.zeros(shape, dtype=int), CIFAR10_CLASSES, tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()


def test_confusion_matrix_needs_one_name_per_class(tmp_path):
    with pytest.raises(ValueError, match="3 class names"):
        plot_confusion_matrix(np.zeros((10, 10), dtype=int), ["a", "b", "c"], tmp_path / "c.png")


@pytest.mark.parametrize("n", [20, 3, 1])
def test_gallery_of_any_size(tmp_path, n):
    rng = np.random.default_rng(n)
    images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    true, predicted = rng.integers(0, 10, n).tolist(), rng.integers(0, 10, n).tolist()
    path = plot_gallery(images, true, predicted, rng.random(n).tolist(), CIFAR10_CLASSES, "t", tmp_path / "g.png")
    width, height = png_size(path)
    assert width >= 150 * min(n, 8) and height >= 200
    if n == 20:  # three rows of eight
        assert (
            height
            > png_size(
                plot_gallery(
                    images[:8], true[:8], predicted[:8], [0.5] * 8, CIFAR10_CLASSES, "t", tmp_path / "one_row.png"
                )
            )[1]
        )


def test_empty_gallery_is_a_note_not_an_error(tmp_path):
    path = plot_gallery(gray_images(0), [], [], [], CIFAR10_CLASSES, "nothing wrong", tmp_path / "g.png")
    assert png_size(path)[0] > 0


def test_mistakes_are_marked_red(tmp_path):
    all_right = plot_gallery(
        gray_images(4), [0, 1, 2, 3], [0, 1, 2, 3], [0.9] * 4, CIFAR10_CLASSES, "right", tmp_path / "right.png"
    )
    one_wrong = plot_gallery(
        gray_images(4), [0, 1, 2, 3], [0, 1, 2, 5], [0.9] * 4, CIFAR10_CLASSES, "wrong", tmp_path / "wrong.png"
    )
    assert red_pixels(all_right) == 0
    assert red_pixels(one_wrong) > 100


def test_gallery_needs_one_label_per_image(tmp_path):
    with pytest.raises(ValueError, match="one label"):
        plot_gallery(gray_images(3), [0, 1], [0, 1, 2], [0.5] * 3, CIFAR10_CLASSES, "t", tmp_path / "g.png")
    with pytest.raises(ValueError, match="shape"):
        plot_gallery(
            np.zeros((3, 32, 32), np.uint8), [0] * 3, [0] * 3, [0.5] * 3, CIFAR10_CLASSES, "t", tmp_path / "g.png"
        )


def history(epochs: int) -> list[dict]:
    return [
        {
            "epoch": e,
            "train_loss": 2.0 / e,
            "train_acc": 0.3 + 0.03 * e,
            "val_loss": 2.1 / e,
            "val_acc": 0.28 + 0.03 * e,
            "lr": 0.01 * 0.5 ** (e // 5),
        }
        for e in range(1, epochs + 1)
    ]


def test_curves_png(tmp_path):
    width, height = png_size(plot_curves(history(12), tmp_path / "sub" / "curves.png"))
    assert width >= 800 and height >= 300


@pytest.mark.parametrize(
    "rows",
    [
        [{"train_loss": 2.0}, {"train_loss": 1.5, "val_acc": 0.4}],  # no epoch, most keys missing
        [{"epoch": 1, "train_loss": None, "val_loss": float("nan"), "lr": 0.0}],  # unusable values
        [],
    ],
)
def test_curves_tolerate_missing_keys(tmp_path, rows):
    assert png_size(plot_curves(rows, tmp_path / "curves.png"))[0] > 0


def test_confusion_grid_row_normalizes_every_panel(tmp_path, monkeypatch):
    drawn = []  # the values and labels each panel is drawn with, through the one matrix drawer
    real_draw = figures.draw_matrix
    monkeypatch.setattr(
        figures,
        "draw_matrix",
        lambda ax, values, labels, *rest: (
            drawn.append((np.array(values, dtype=float), labels)),
            real_draw(ax, values, labels, *rest),
        )[1],
    )
    panels = [
        figures.ConfusionPanel("a", np.array([[3, 1], [0, 0]]), ["x", "y"]),
        figures.ConfusionPanel("no counts", None, []),
        *(figures.ConfusionPanel(str(i), np.eye(10, dtype=int) * 7, CIFAR10_CLASSES) for i in range(2)),
    ]
    width, height = png_size(figures.plot_confusion_grid(panels, "title", tmp_path / "grid.png"))
    assert width >= 3 * 400 and height >= 2 * 400  # 4 panels: two rows of up to 3
    assert len(drawn) == 3  # the panel without counts is a note, not a matrix
    (values, labels), *_ = drawn
    assert values.tolist() == [[75.0, 25.0], [0.0, 0.0]] and labels.tolist() == [["75", "25"], ["0", "0"]]


def test_curve_grid_draws_mean_lines_with_bands(tmp_path):
    band = figures.Curve("train (mean)", [1, 2, 3], [1.0, 0.8, 0.6], ([0.9, 0.7, 0.5], [1.1, 0.9, 0.7]))
    columns = {"A (n=3)": {"loss": [band], "acc": []}, "B (n=0)": {}}
    width, height = png_size(figures.plot_curve_grid(columns, "title", tmp_path / "grid.png"))
    assert width >= 500 and height >= 500


def test_draw_curves_shades_the_band_and_notes_an_empty_panel():
    figure = figures.new_figure(4, 3)
    full, empty = figure.subplots(1, 2)
    curve = figures.Curve("val", [1, 2], [0.5, 0.6], ([0.4, 0.5], [0.6, 0.7]))
    figures.draw_curves(full, [curve], 100.0, "accuracy")
    assert full.lines[0].get_ydata().tolist() == pytest.approx([50.0, 60.0]) and len(full.collections) == 1
    figures.draw_curves(empty, [figures.Curve("train", [], [])], 1.0, "loss")
    assert not empty.lines and empty.texts[0].get_text() == "no loss recorded"


#: Six top-class confidences and whether each was right (tests/test_calibration.py's hand example).
CONFIDENCES, CORRECT = [0.50, 0.55, 0.70, 0.90, 0.95, 0.85], [True, False, True, True, False, True]


def test_reliability_bins_by_hand():
    """Five bins: [.4, .6) holds 0.50 (right) and 0.55 (wrong), [.6, .8) 0.70 (right), [.8, 1] the other three."""
    accuracy, confidence, counts, ece = figures.reliability_bins(np.array(CONFIDENCES), np.array(CORRECT), 5)
    assert counts.tolist() == [0, 0, 2, 1, 3]
    np.testing.assert_allclose(accuracy[2:], [1 / 2, 1, 2 / 3])
    np.testing.assert_allclose(confidence[2:], [0.525, 0.70, 0.90])
    assert np.isnan(accuracy[:2]).all()  # empty bins: no bar
    assert ece == pytest.approx((2 * 0.025 + 0.30 + 3 * (0.90 - 2 / 3)) / 6)


def test_reliability_ece_is_torchmetrics_one():
    """Also with confidences of exactly 1 (torchmetrics' own slot), so the figure and the tables agree: here 20
    of them, all wrong, beside 40 right ones at 0.95 in the same drawn bin (gaps of opposite signs)."""
    logits = torch.randn(500, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # mostly under 0.9
    labels = torch.randint(0, 10, (500,), generator=torch.Generator().manual_seed(1))
    logits[:20, 0], labels[:20] = 1000.0, 1  # softmax exactly 1, wrong
    logits[20:60] = torch.tensor([0.95] + [0.05 / 9] * 9, dtype=torch.float64).log()
    labels[20:60] = 0  # right at 0.95
    confidence, predicted = logits.softmax(dim=1).max(dim=1)
    assert (confidence == 1).sum() == 20
    ece = figures.reliability_bins(confidence.numpy(), (predicted == labels).numpy(), 15)[3]
    assert ece == pytest.approx(calibration_metrics(logits, labels)["ece"], abs=1e-6)


def test_reliability_png_shows_both_eces(tmp_path, monkeypatch):
    titles = []
    real_save = figures.save
    monkeypatch.setattr(
        figures,
        "save",
        lambda figure, path: (titles.extend(ax.get_title() for ax in figure.axes), real_save(figure, path))[1],
    )
    after = [0.6, 0.45, 0.6, 0.75, 0.8, 0.7]
    path = plot_reliability(CONFIDENCES, CORRECT, after, CORRECT, tmp_path / "reliability.png", bins=5, title="T")
    width, height = png_size(path)
    assert path == tmp_path / "reliability.png" and width >= 800 and height >= 400
    assert titles[0].startswith("before temperature scaling") and "ECE 17.50%, 6 images, 5 bins" in titles[0]
    assert titles[1].startswith("after temperature scaling") and "ECE 17.50%" not in titles[1]


@pytest.mark.parametrize(
    ("confidences", "correct", "problem"),
    [([0.5, 0.6], [True], "one correct flag per confidence"), ([0.5, 1.2], [True, False], r"in \[0, 1\]")],
)
def test_reliability_refuses_bad_input(tmp_path, confidences, correct, problem):
    with pytest.raises(ValueError, match=problem):
        plot_reliability([0.5], [True], confidences, correct, tmp_path / "r.png")
    assert not (tmp_path / "r.png").exists()
