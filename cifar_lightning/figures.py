"""Figures as PNG files: confusion matrices, galleries, reliability diagrams and training curves, of one model or
several side by side. Drawn on matplotlib's Figure with the Agg canvas, never pyplot: no display or global state."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cifar_lightning.errors import is_number

GALLERY_COLUMNS = 8
#: Gallery tiles: magnification, frame width, gap between tiles, room above each for its caption, in pixels.
TILE_SCALE, FRAME_PIXELS, TILE_GAP, CAPTION_PIXELS = 4, 3, 8, 30
GRID_COLUMNS = 3  # confusion matrices per row of a grid
#: The panels of training curves: history key suffix, scale, y label (accuracy is stored as a fraction).
CURVE_METRICS = (("loss", 1.0, "loss"), ("acc", 100.0, "accuracy (%)"))
WRONG_COLOR, RIGHT_COLOR = "tab:red", "black"


def new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save(figure: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


def row_percent(counts: np.ndarray) -> np.ndarray:
    """Each row as % of its total (0 for a class with no images), so classes compare whatever their size."""
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(100.0 * counts, totals, out=np.zeros(counts.shape), where=totals > 0)


def draw_matrix(ax, values: np.ndarray, labels: np.ndarray, classes: Sequence[str], vmax: float, title: str) -> None:
    """One heat map with a label in every cell; rows = true class, columns = predicted class."""
    ax.imshow(values, cmap="Blues", vmin=0, vmax=vmax)
    for (true, predicted), label in np.ndenumerate(labels):
        dark = values[true, predicted] > vmax / 2
        ax.text(predicted, true, label, ha="center", va="center", fontsize=6, color="white" if dark else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted class", fontsize=8)
    ax.set_ylabel("true class", fontsize=8)
    ax.set_title(title, fontsize=9)


def plot_confusion_matrix(confusion: np.ndarray, classes: Sequence[str], path: Path) -> Path:
    """Counts (left) and % of each true class (right); rows = true class, columns = predicted class."""
    counts = np.asarray(confusion)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.size == 0:
        raise ValueError(f"the confusion matrix must be square (classes x classes), got shape {counts.shape}")
    if len(classes) != len(counts):
        raise ValueError(f"{len(counts)} classes in the confusion matrix, but {len(classes)} class names")
    classes = [str(name) for name in classes]
    shares = row_percent(counts)
    figure = new_figure(11, 5.4)
    left, right = figure.subplots(1, 2)
    title = f"counts ({int(counts.sum()):,} images)"
    draw_matrix(left, counts, counts.astype(np.int64).astype(str), classes, max(counts.max(), 1), title)
    draw_matrix(right, shares, percent_labels(shares), classes, 100, "% of each true class (rows sum to 100)")
    figure.suptitle("Confusion matrix: rows = true class, columns = predicted class")
    return save(figure, path)


def percent_labels(shares: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda share: f"{share:.0f}")(shares)


@dataclass(frozen=True)
class ConfusionPanel:
    """One matrix of a grid: its title, counts (rows = true class; None: none recorded) and class names."""

    title: str
    counts: np.ndarray | None
    classes: Sequence[str]


def plot_confusion_grid(panels: Sequence[ConfusionPanel], title: str, path: Path) -> Path:
    """Several confusion matrices side by side, each as % of each true class so that models compare."""
    columns = max(1, min(GRID_COLUMNS, len(panels)))
    lines = max(1, math.ceil(len(panels) / columns))
    figure = new_figure(4.3 * columns, 4.3 * lines + 0.6)
    axes = figure.subplots(lines, columns, squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, panel in zip(axes.flat, panels):
        if panel.counts is None:
            ax.set_title(f"{panel.title}\nno confusion matrix recorded", fontsize=9)
            ax.axis("off")
            continue
        shares = row_percent(np.asarray(panel.counts))
        draw_matrix(ax, shares, percent_labels(shares), [str(name) for name in panel.classes], 100, panel.title)
    figure.suptitle(title)
    return save(figure, path)


def tile_canvas(
    tiles: Sequence[np.ndarray | None], frames: Sequence[str | None], columns: int, caption_pixels: int = 0
) -> tuple[np.ndarray, int, int]:
    """Uint8 images (3, H, W) as one RGB picture on white, `columns` a row, each magnified TILE_SCALE times
    (nearest: the pixels the model saw) in a frame of its colour (None: no frame), with `caption_pixels` free above
    each; a None tile leaves its cell empty. Returns the picture and a cell's height and width, for captions.
    One imshow then draws a whole gallery: an axes per image took ten times as long to draw."""
    height, width = next((tile.shape[1:] for tile in tiles if tile is not None), (32, 32))
    tile_h, tile_w = height * TILE_SCALE + 2 * FRAME_PIXELS, width * TILE_SCALE + 2 * FRAME_PIXELS
    cell_h, cell_w = tile_h + caption_pixels + TILE_GAP, tile_w + TILE_GAP
    rows = max(1, math.ceil(len(tiles) / columns))
    canvas = np.full((rows * cell_h, columns * cell_w, 3), 255, dtype=np.uint8)
    for index, (tile, frame) in enumerate(zip(tiles, frames, strict=True)):
        if tile is None:
            continue
        top, left = (index // columns) * cell_h + caption_pixels, (index % columns) * cell_w
        if frame is not None:
            canvas[top : top + tile_h, left : left + tile_w] = np.round(255 * np.array(to_rgb(frame)))
        big = np.transpose(tile, (1, 2, 0)).repeat(TILE_SCALE, axis=0).repeat(TILE_SCALE, axis=1)
        canvas[top + FRAME_PIXELS : top + tile_h - FRAME_PIXELS, left + FRAME_PIXELS : left + tile_w - FRAME_PIXELS] = (
            big
        )
    return canvas, cell_h, cell_w


def show_canvas(figure: Figure, canvas: np.ndarray):
    """One axes showing the whole picture pixel for pixel, without ticks or spines."""
    ax = figure.subplots()
    ax.imshow(canvas, interpolation="nearest")
    ax.set_axis_off()
    return ax


def plot_gallery(
    images: np.ndarray,
    true: Sequence[int],
    predicted: Sequence[int],
    confidence: Sequence[float],
    classes: Sequence[str],
    title: str,
    path: Path,
) -> Path:
    """A grid of uint8 images (N, 3, H, W) captioned "true -> predicted confidence", mistakes framed in red; with
    N = 0 a figure that says so, so a report section never lacks its file."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be uint8 with shape (N, 3, H, W), got shape {images.shape}")
    if not len(true) == len(predicted) == len(confidence) == len(images):
        raise ValueError(
            f"one label, prediction and confidence per image: {len(images)} images, {len(true)} labels, "
            f"{len(predicted)} predictions, {len(confidence)} confidences"
        )
    columns = max(1, min(GALLERY_COLUMNS, len(images)))
    rows = max(1, math.ceil(len(images) / columns))
    figure = new_figure(max(1.5 * columns + 0.4, 5.0), 1.75 * rows + 0.7)  # wide enough for the title
    wrong = [int(label) != int(guess) for label, guess in zip(true, predicted)]
    frames = [WRONG_COLOR if mistake else None for mistake in wrong]
    canvas, cell_h, cell_w = tile_canvas(list(images), frames, columns, caption_pixels=CAPTION_PIXELS)
    ax = show_canvas(figure, canvas)
    for index, (label, guess, score, mistake) in enumerate(zip(true, predicted, confidence, wrong)):
        x, y = (index % columns + 0.5) * cell_w - TILE_GAP / 2, (index // columns) * cell_h + CAPTION_PIXELS - 2
        caption = f"{classes[int(label)]} ->\n{classes[int(guess)]} {float(score):.2f}"
        color = WRONG_COLOR if mistake else RIGHT_COLOR
        ax.text(x, y, caption, ha="center", va="bottom", fontsize=8, color=color)
    if len(images) == 0:
        ax.text(0.5, 0.5, "no images to show", ha="center", va="center", fontsize=9, transform=ax.transAxes)
    figure.suptitle(f"{title}\ncaption: true -> predicted, confidence; red = wrong", fontsize=10)
    return save(figure, path)


def series(history: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    """Epochs and values of one history key, skipping rows that lack it; epochs default to row order (from 1)."""
    epochs, values = [], []
    for index, row in enumerate(history, start=1):
        value = row.get(key) if isinstance(row, dict) else None
        if is_number(value, finite=True):
            epoch = row.get("epoch", index)
            epochs.append(epoch if is_number(epoch) else index)
            values.append(float(value))
    return epochs, values


@dataclass(frozen=True)
class Curve:
    """One line of a metric over epochs; `band` (low, high) shades a range around it, e.g. min-max over seeds."""

    label: str
    epochs: Sequence[float]
    values: Sequence[float]
    band: tuple[Sequence[float], Sequence[float]] | None = None
    color: str | None = None  # default: C0, C1, ... by position, so train and val match across panels


def draw_curves(ax, curves: Sequence[Curve], scale: float, what: str, marker: str | None = None, legend=True) -> None:
    """The curves of one metric on one panel, values times `scale`; an empty panel says `no <what> recorded`."""
    for index, curve in enumerate(curves):
        if not len(curve.epochs):
            continue
        color = curve.color or f"C{index}"
        ax.plot(curve.epochs, np.asarray(curve.values) * scale, color=color, marker=marker, label=curve.label)
        if curve.band is not None:
            low, high = (np.asarray(edge) * scale for edge in curve.band)
            ax.fill_between(curve.epochs, low, high, color=color, alpha=0.2, linewidth=0)
    if not ax.lines:
        ax.text(0.5, 0.5, f"no {what} recorded", ha="center", va="center", transform=ax.transAxes)
    elif legend:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_curves(history: Sequence[dict], path: Path) -> Path:
    """Loss and accuracy per epoch, train vs val, and the learning rate when the history rows have it."""
    lr_epochs, lr_values = series(history, "lr")
    has_lr = bool(lr_epochs)
    figure = new_figure(4.2 * (len(CURVE_METRICS) + has_lr), 3.6)
    axes = figure.subplots(1, len(CURVE_METRICS) + has_lr, squeeze=False)[0]
    for ax, (metric, scale, ylabel) in zip(axes, CURVE_METRICS):
        curves = [Curve(split, *series(history, f"{split}_{metric}")) for split in ("train", "val")]
        draw_curves(ax, curves, scale, ylabel, marker=".")
        ax.set_ylabel(ylabel)
    if has_lr:
        draw_curves(axes[-1], [Curve("lr", lr_epochs, lr_values, color="C2")], 1.0, "learning rate", ".", False)
        if min(lr_values) > 0:
            axes[-1].set_yscale("log")  # step schedules divide the rate: equal steps on a log axis
        axes[-1].set_ylabel("learning rate")
    for ax in axes:
        ax.set_xlabel("epoch")
    figure.suptitle("Training curves")
    return save(figure, path)


def plot_curve_grid(columns: Mapping[str, Mapping[str, Sequence[Curve]]], title: str, path: Path) -> Path:
    """Training curves of several models: a column per title, loss above accuracy, each row on one y axis."""
    figure = new_figure(3.2 * len(columns) + 0.8, 6.2)
    axes = figure.subplots(len(CURVE_METRICS), max(1, len(columns)), sharey="row", squeeze=False)
    for column, (heading, curves) in enumerate(columns.items()):
        for line, (metric, scale, ylabel) in enumerate(CURVE_METRICS):
            ax = axes[line, column]
            draw_curves(ax, curves.get(metric, []), scale, ylabel, marker=".", legend=column == 0)
            if column == 0:
                ax.set_ylabel(ylabel)
        axes[0, column].set_title(heading)
        axes[-1, column].set_xlabel("epoch")
    figure.suptitle(title)
    return save(figure, path)


def reliability_bins(confidences: np.ndarray, correct: np.ndarray, bins: int) -> tuple[np.ndarray, ...]:
    """Per equal-width confidence bin: accuracy, mean confidence, image count, and the ECE of them all. Bins are
    [low, high) as in torchmetrics' MulticlassCalibrationError, whose ECE this equals: a confidence of exactly 1
    has a slot of its own there, drawn in the last bin here."""
    confidences, correct = np.asarray(confidences, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    slots = np.clip(np.searchsorted(np.linspace(0, 1, bins + 1), confidences, side="right") - 1, 0, bins)
    ece = 0.0
    for slot in np.unique(slots):
        mine = slots == slot
        ece += abs(correct[mine].mean() - confidences[mine].mean()) * mine.sum() / max(len(slots), 1)
    drawn = np.minimum(slots, bins - 1)
    counts = np.bincount(drawn, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore"):
        accuracy = np.bincount(drawn, weights=correct, minlength=bins) / counts
        confidence = np.bincount(drawn, weights=confidences, minlength=bins) / counts
    return accuracy, confidence, counts, ece


def draw_reliability(ax, confidences: np.ndarray, correct: np.ndarray, bins: int, heading: str) -> None:
    """One reliability diagram: accuracy per confidence bin as bars, the gap to the bin's mean confidence in red,
    the diagonal a calibrated model follows; the ECE in the title."""
    accuracy, confidence, counts, ece = reliability_bins(confidences, correct, bins)
    left, width, filled = np.arange(bins) / bins, 1 / bins, counts > 0
    ax.bar(left[filled], accuracy[filled], width, align="edge", color="C0", edgecolor="black", label="accuracy")
    gap = confidence[filled] - accuracy[filled]
    ax.bar(left[filled], gap, width, bottom=accuracy[filled], align="edge", color=WRONG_COLOR, alpha=0.3, label="gap")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="calibrated")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top-class probability)", ylabel="accuracy")
    ece_text = f"ECE {100 * ece:.2f}%" if len(confidences) else "no images"
    ax.set_title(f"{heading}\n{ece_text}, {len(confidences):,} images, {bins} bins", fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)


def plot_reliability(
    confidences_before: Sequence[float],
    correct_before: Sequence[bool],
    confidences_after: Sequence[float],
    correct_after: Sequence[bool],
    path: Path,
    bins: int = 15,
    title: str = "Reliability diagram",
) -> Path:
    """Reliability diagrams before (left) and after (right) temperature scaling: per-bin accuracy against
    confidence, so over-confidence shows as bars under the diagonal (Guo et al. 2017, figure 1)."""
    panels = (
        ("before temperature scaling", confidences_before, correct_before),
        ("after temperature scaling", confidences_after, correct_after),
    )
    for heading, confidences, correct in panels:
        values = np.asarray(confidences, dtype=np.float64)
        if len(values) != len(correct):
            raise ValueError(f"{heading}: one correct flag per confidence, got {len(values)} and {len(correct)}")
        if ((values < 0) | (values > 1) | ~np.isfinite(values)).any():
            raise ValueError(f"{heading}: confidences must be probabilities in [0, 1]")
    if bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins}")
    figure = new_figure(10, 4.8)
    for ax, (heading, confidences, correct) in zip(figure.subplots(1, 2), panels):
        draw_reliability(ax, np.asarray(confidences), np.asarray(correct), bins, heading)
    figure.suptitle(title)
    return save(figure, path)
