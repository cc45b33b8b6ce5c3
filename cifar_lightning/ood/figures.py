"""Figures of OOD detection: the histogram of in-distribution and OOD values with the threshold (the report's
Figure 8: per layer, its mean activation; the same for any detector's outlier scores), and a gallery of images
detected as ID and as OOD (its Figure 9), for the report's rule or any detector."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cifar_lightning.figures import draw_tile, new_figure, save


def safe_name(layer: str) -> str:
    """A layer name as a file-name part (e.g. layer1.0.relu@2 -> layer1.0.relu_2)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", layer)


def plot_value_histogram(
    id_values: Tensor, ood_values: Mapping[str, Tensor], threshold: float, rule: str, xlabel: str, title: str,
    path: Path,
) -> Path:  # fmt: skip
    """Density histograms of one value per image: CIFAR-10 test (filled) and each OOD set (lines), on shared bins,
    with the threshold chosen on the validation split as a vertical line. rule: where OOD lies ("OOD below")."""
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
        ax.hist(set_values.numpy(), bins=bins, density=True, histtype="step", linewidth=1.5, color=f"C{index}",
                label=name)  # fmt: skip
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4g} ({rule})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_yscale("log")  # the sets differ by orders of magnitude in spread; tails stay visible
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    figure.suptitle(title)
    return save(figure, path)


def plot_layer_histogram(
    layer: str, id_means: Tensor, ood_means: Mapping[str, Tensor], threshold: float, direction: str, path: Path
) -> Path:
    """The report's Figure 8 for one layer: per-image mean activations, OOD `direction` (below/above) the
    threshold."""
    return plot_value_histogram(id_means, ood_means, threshold, f"OOD {direction}",
                                f"mean activation of {layer} per image",
                                f"OOD detection by the mean activation of {layer}", path)  # fmt: skip


def plot_score_histogram(
    detector: str, id_scores: Tensor, ood_scores: Mapping[str, Tensor], threshold: float, path: Path
) -> Path:
    """A detector's outlier scores (higher = more likely OOD), CIFAR-10 test against each OOD set."""
    return plot_value_histogram(id_scores, ood_scores, threshold, "OOD above", f"{detector} outlier score per image",
                                f"OOD detection by {detector}", path)  # fmt: skip


def sample(indices: Tensor, count: int, generator: torch.Generator) -> Tensor:
    """Up to `count` of the indices, drawn at random (seeded), in increasing order."""
    if len(indices) <= count:
        return indices
    return torch.sort(indices[torch.randperm(len(indices), generator=generator)[:count]]).values


def plot_ood_gallery(
    images: Mapping[str, Tensor], is_ood: Mapping[str, Tensor], count: int, seed: int, method: str, path: Path
) -> Path:
    """One row per set: `count` random images detected as ID (left half) and as OOD (right half)."""
    generator = torch.Generator().manual_seed(seed)
    names = list(images)
    figure = new_figure(1.1 * 2 * count + 1.6, 1.25 * len(names) + 0.9)
    axes = figure.subplots(len(names), 2 * count, squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.axis("off")
    for row, name in enumerate(names):
        flags = is_ood[name]
        for half, (wanted, label) in enumerate(((False, "ID"), (True, "OOD"))):
            chosen = sample(torch.nonzero(flags == wanted).flatten(), count, generator)
            share = (flags == wanted).double().mean().item() if len(flags) else 0.0
            for column, index in enumerate(chosen.tolist()):
                ax = axes[row, half * count + column]
                ax.axis("on")
                draw_tile(ax, images[name][index].numpy(), "tab:red" if wanted else "tab:green", 2)
            axes[row, half * count].set_title(f"{name}: {label} ({share:.1%})", fontsize=8, loc="left")
    figure.suptitle(f"Detected as ID (green, left) and as OOD (red, right) by {method}", fontsize=10)
    return save(figure, path)
