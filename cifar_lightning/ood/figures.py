"""Figures of the report's OOD method: per layer, the histogram of in-distribution and OOD mean
activations with the threshold (the report's Figure 8), and a gallery of images detected as ID and
as OOD (its Figure 9)."""

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


def plot_layer_histogram(
    layer: str, id_means: Tensor, ood_means: Mapping[str, Tensor], threshold: float, direction: str, path: Path
) -> Path:
    """Density histograms of the per-image mean activation: CIFAR-10 test (filled) and each OOD set (lines),
    on shared bins, with the threshold chosen on the validation split as a vertical line."""
    values = [id_means.double(), *(m.double() for m in ood_means.values())]
    everything = torch.cat(values)
    low, high = everything.min().item(), everything.max().item()
    low, high = min(low, threshold), max(high, threshold)
    bins = np.linspace(low, high if high > low else low + 1.0, 61)
    figure = new_figure(7.5, 4.2)
    ax = figure.subplots()
    ax.hist(id_means.numpy(), bins=bins, density=True, color="C0", alpha=0.35, label="CIFAR-10 test (ID)")
    for index, (name, means) in enumerate(ood_means.items(), start=1):
        ax.hist(means.numpy(), bins=bins, density=True, histtype="step", linewidth=1.5, color=f"C{index}", label=name)
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4g} (OOD {direction})")
    ax.set_xlabel(f"mean activation of {layer} per image")
    ax.set_ylabel("density")
    ax.set_yscale("log")  # the sets differ by orders of magnitude in spread; tails stay visible
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    figure.suptitle(f"OOD detection by the mean activation of {layer}")
    return save(figure, path)


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
