"""Figures of OOD detection: in-distribution and OOD values with the threshold (the report's Figure 8, per layer;
the same for a detector's outlier scores), and a gallery of images detected as ID and as OOD (its Figure 9)."""

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cifar_lightning.config.ood import DETECTOR_LABELS, MEAN_ACTIVATION
from cifar_lightning.figures import new_figure, save, show_canvas, tile_canvas
from cifar_lightning.ood.detection import OODResult, mean_activation_name

log = logging.getLogger(__name__)


Sets = Mapping[str, Tensor]
ID_FRAME, OOD_FRAME = "tab:green", "tab:red"
TITLE_PIXELS = 22  # room above each gallery row for its half-rows' titles


def plot_value_histogram(
    id_values: Tensor, ood_values: Sets, threshold: float, texts: tuple[str, str, str], path: Path
):
    """Density histograms of one value per image, CIFAR-10 test filled and each OOD set a line, with the threshold.
    texts: where OOD lies ("OOD below"), the x label, the title."""
    rule, xlabel, title = texts
    values = [id_values.double(), *(v.double() for v in ood_values.values())]
    everything = torch.cat(values)
    everything = everything[torch.isfinite(everything)]  # an infinite score (e.g. a log of 0) would have no bin
    low, high = (everything.min().item(), everything.max().item()) if len(everything) else (threshold, threshold)
    low, high = min(low, threshold), max(high, threshold)
    bins = np.linspace(low, high if high > low else low + 1.0, 61)
    figure = new_figure(7.5, 4.2)
    ax = figure.subplots()
    ax.hist(values[0].numpy(), bins=bins, density=True, color="C0", alpha=0.35, label="CIFAR-10 test (ID)")
    for index, (name, set_values) in enumerate(zip(ood_values, values[1:], strict=True), start=1):
        style = {"histtype": "step", "linewidth": 1.5, "color": f"C{index}", "label": name}
        ax.hist(set_values.numpy(), bins=bins, density=True, **style)
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4g} ({rule})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_yscale("log")  # the sets differ by orders of magnitude in spread; tails stay visible
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    figure.suptitle(title)
    return save(figure, path)


def sample(indices: Tensor, count: int, generator: torch.Generator) -> Tensor:
    """Up to `count` of the indices, drawn at random (seeded), in increasing order."""
    if len(indices) <= count:
        return indices
    return torch.sort(indices[torch.randperm(len(indices), generator=generator)[:count]]).values


def plot_ood_gallery(images: Sets, is_ood: Sets, count: int, seed: int, method: str, path: Path) -> Path:
    """One row per set: `count` random images detected as ID (left half) and as OOD (right half)."""
    generator = torch.Generator().manual_seed(seed)
    tiles: list[np.ndarray | None] = []
    frames: list[str | None] = []
    titles: list[tuple[int, str]] = []  # (cell index, title) at the start of each half-row
    for name in images:
        flags = is_ood[name]
        for wanted, label, frame in ((False, "ID", ID_FRAME), (True, "OOD", OOD_FRAME)):
            chosen = sample(torch.nonzero(flags == wanted).flatten(), count, generator).tolist()
            share = (flags == wanted).double().mean().item() if len(flags) else 0.0
            titles.append((len(tiles), f"{name}: {label} ({share:.1%})"))
            tiles += [images[name][index].numpy() for index in chosen] + [None] * (count - len(chosen))
            frames += [frame] * count
    figure = new_figure(1.1 * 2 * count + 1.6, 1.25 * len(images) + 0.9)
    canvas, cell_h, cell_w = tile_canvas(tiles, frames, 2 * count, caption_pixels=TITLE_PIXELS)
    ax = show_canvas(figure, canvas)
    for index, title in titles:
        x, y = (index % (2 * count)) * cell_w, (index // (2 * count)) * cell_h + TITLE_PIXELS - 3
        ax.text(x, y, title, ha="left", va="bottom", fontsize=8)
    figure.suptitle(f"Detected as ID (green, left) and as OOD (red, right) by {method}", fontsize=10)
    return save(figure, path)


def write_figures(result: OODResult, images: Sets, out: Path, gallery_size: int, seed: int) -> tuple[list[Path], ...]:
    """ood_hist_<layer>.png per layer; per gallery detector ood_scores_<name>.png and ood_gallery_<name>.png."""
    direction = result.settings["direction"]
    sign = -1.0 if direction == "below" else 1.0  # outlier score -> mean activation
    histograms = []
    for layer in result.layers:  # the report's Figure 8 per layer
        means = result.id_features.layer_means[layer]
        ood_means = {name: result.ood_features[name].layer_means[layer] for name in result.sets}
        safe_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", layer)  # layer1.0.relu@2 -> layer1.0.relu_2
        threshold, path = sign * result.thresholds["layers"][layer], out / f"ood_hist_{safe_name}.png"
        what = f"mean activation of {layer}"
        texts = f"OOD {direction}", f"{what} per image", f"OOD detection by the {what}"
        histograms.append(plot_value_histogram(means, ood_means, threshold, texts, path))
    score_histograms, galleries = [], []
    for name in result.settings["gallery_detectors"]:
        row = mean_activation_name(result.layer) if name == MEAN_ACTIVATION else name
        if row not in result.scores:
            log.info("OOD figures: %s was not measured (not in ood.detectors, or left out), so it has no gallery", name)
            continue
        scores, threshold = result.scores[row], result.thresholds["detectors"][row]
        if name != MEAN_ACTIVATION:
            label = DETECTOR_LABELS[name]
            texts = "OOD above", f"{label} outlier score per image", f"OOD detection by {label}"
            path = out / f"ood_scores_{name}.png"
            score_histograms.append(plot_value_histogram(scores.id_test, scores.ood, threshold, texts, path))
        if gallery_size > 0:
            is_ood = {"CIFAR-10 test": scores.id_test > threshold}
            is_ood.update({set_name: scores.ood[set_name] > threshold for set_name in result.sets})
            method = f"the mean activation of {result.layer}" if name == MEAN_ACTIVATION else DETECTOR_LABELS[name]
            path = out / ("ood_gallery.png" if name == MEAN_ACTIVATION else f"ood_gallery_{name}.png")
            galleries.append(plot_ood_gallery(images, is_ood, gallery_size, seed, method, path))
    return histograms, score_histograms, galleries
