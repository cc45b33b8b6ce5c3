"""OOD detection for one classifier: extract features once per data set, fit the detectors on the
training split, choose every threshold on the validation split, and measure each detector and each
activation layer against each OOD set. The CIFAR-10 test set is the in-distribution side.

Usable alone from Python:

    classifier = Classifier.load("logs/train/runs/<date>_<time>/checkpoints/best.ckpt")
    result = detect_ood(classifier, fit_images=..., fit_labels=..., val_images=...,
                        id_images=test_images, ood_sets=load_sets(specs, seed=0))
    result.table("detectors", "auroc")

Thresholds see the validation images and nothing else, so changing the test or OOD sets leaves
them unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from cifar_lightning.inference import Classifier, Features, activation_layers
from cifar_lightning.ood.detectors import (
    DETECTOR_LABELS,
    DIRECTIONS,
    DetectorSettings,
    build_detectors,
    mean_activation_score,
)
from cifar_lightning.ood.metrics import THRESHOLD_METHODS, histogram_threshold, ood_metrics, percentile_threshold
from cifar_lightning.ood.sets import OODSet


@dataclass(frozen=True)
class ThresholdSettings:
    """percentile: keep `id_keep` of the validation images as ID; histogram: the edge of their histogram."""

    method: str = "percentile"
    id_keep: float = 0.95
    bins: int = 50
    min_fraction: float = 0.001

    def choose(self, val_scores: Tensor) -> float:
        if self.method == "percentile":
            return percentile_threshold(val_scores, self.id_keep)
        if self.method == "histogram":
            return histogram_threshold(val_scores, self.bins, self.min_fraction)
        raise ValueError(f"threshold method must be one of {', '.join(THRESHOLD_METHODS)}, got {self.method!r}")


@dataclass(frozen=True)
class OODSettings:
    detectors: tuple[str, ...] = tuple(DETECTOR_LABELS)
    detector: DetectorSettings = field(default_factory=DetectorSettings)
    threshold: ThresholdSettings = field(default_factory=ThresholdSettings)
    #: Activation layers measured by the mean-activation method; None = all of them.
    layers: tuple[str, ...] | None = None
    #: The layer whose mean-activation row joins the detectors' table and the gallery; None = the last.
    layer: str | None = None
    direction: str = "below"


@dataclass
class OODResult:
    """Metrics per detector (and per layer) and OOD set; thresholds; the features behind them."""

    sets: dict[str, dict[str, Any]]  # name -> n, kind, source, skipped
    detectors: dict[str, dict[str, dict[str, float]]]  # detector -> set -> metrics
    layers: dict[str, dict[str, dict[str, float]]]  # activation layer -> set -> metrics
    thresholds: dict[str, dict[str, float]]  # "detectors"/"layers" -> name -> threshold on outlier scores
    layer: str  # the layer of the "mean activation" detector row
    settings: dict[str, Any]
    counts: dict[str, int]  # fit / val / id_test image counts
    val_features: Features
    id_features: Features
    ood_features: dict[str, Features]  # per OOD set
    states: dict[str, dict[str, Any]] = field(default_factory=dict)  # detector -> fitted state, for ood/saved.py
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "in_distribution": "CIFAR-10 test set",
            "counts": self.counts,
            "sets": self.sets,
            "settings": self.settings,
            "mean_activation_layer": self.layer,
            "thresholds": self.thresholds,
            "detectors": self.detectors,
            "layers": self.layers,
            "seconds": round(self.seconds, 3),
        }


def fit_subset(labels: torch.Tensor, count: int | None, seed: int) -> torch.Tensor:
    """Indices of the training images the detectors are fitted on: all, or `count` drawn at random (seeded)."""
    if count is None or count >= len(labels):
        return torch.arange(len(labels))
    generator = torch.Generator().manual_seed(seed)
    return torch.sort(torch.randperm(len(labels), generator=generator)[:count]).values


def mean_activation_name(layer: str) -> str:
    return f"mean activation ({layer})"


def check_layers(model: nn.Module, settings: OODSettings) -> tuple[list[str], str]:
    """The activation layers to measure and the one for the detectors' table; a clear error for a wrong name."""
    available = activation_layers(model)
    if not available:
        raise ValueError(f"{type(model).__name__} has no activation layers (ReLU, GELU, ...) to measure")
    layers = list(settings.layers) if settings.layers is not None else available
    unknown = [name for name in [*layers, settings.layer] if name is not None and name not in available]
    if unknown:
        raise ValueError(f"the model has no activation layer {', '.join(map(repr, unknown))}; "
                         f"its activation layers are {', '.join(available)}")  # fmt: skip
    layer = settings.layer or layers[-1]
    if layer not in layers:
        layers.append(layer)
    return layers, layer


def detect_ood(
    classifier: Classifier,
    *,
    fit_images: Tensor,
    fit_labels: Tensor,
    val_images: Tensor,
    id_images: Tensor,
    ood_sets: Sequence[OODSet],
    settings: OODSettings = OODSettings(),
    batch_size: int = 1000,
    progress: bool = False,
) -> OODResult:
    """Fit on (fit_images, fit_labels), threshold on val_images, measure id_images against every OOD set.

    All images are uint8 (N, 3, 32, 32); the classifier normalizes them and runs on its device.
    """
    start = time.perf_counter()
    layers, _ = check_layers(classifier.model, settings)

    def features(images: Tensor, name: str, with_layers: bool = True) -> Features:
        return classifier.features(images, layers if with_layers else [], batch_size, progress, f"Features: {name}")

    result = score_ood(
        classifier.head,
        fit=features(fit_images, "training split", with_layers=False),
        fit_labels=fit_labels,
        val=features(val_images, "validation split"),
        id_test=features(id_images, "CIFAR-10 test"),
        ood={ood_set.name: features(ood_set.images, ood_set.name) for ood_set in ood_sets},
        sets={ood_set.name: ood_set.describe() for ood_set in ood_sets},
        settings=settings,
    )
    result.seconds = time.perf_counter() - start
    return result


def score_ood(
    head: nn.Linear,
    *,
    fit: Features,
    fit_labels: Tensor,
    val: Features,
    id_test: Features,
    ood: dict[str, Features],
    sets: dict[str, dict[str, Any]],
    settings: OODSettings = OODSettings(),
) -> OODResult:
    """detect_ood on features already extracted: fit on `fit`, threshold on `val`, measure `id_test` against each
    `ood` set. val, id_test and the OOD features must hold the mean activations of settings.layers."""
    start = time.perf_counter()
    if settings.direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {settings.direction!r}")
    available = list(val.layer_means)

    def uses(name: str) -> list[str]:  # a module applied several times is measured as name@1, name@2, ...
        return [key for key in available if key == name or key.startswith(f"{name}@")]

    layers = available if settings.layers is None else [key for name in settings.layers for key in uses(name)]
    layer = uses(settings.layer)[-1] if settings.layer is not None else layers[-1]
    if layer not in layers:
        layers.append(layer)
    detectors = build_detectors(settings.detectors, fit, fit_labels.cpu(), head, settings.detector)
    scorers: dict[str, dict[str, Callable[[Features], Tensor]]] = {
        "detectors": {
            **{name: detectors[name][1] for name in settings.detectors},
            mean_activation_name(layer): lambda f: mean_activation_score(f, layer, settings.direction),
        },
        "layers": {name: (lambda f, n=name: mean_activation_score(f, n, settings.direction)) for name in layers},
    }
    tables: dict[str, dict[str, dict[str, dict[str, float]]]] = {"detectors": {}, "layers": {}}
    thresholds: dict[str, dict[str, float]] = {"detectors": {}, "layers": {}}
    for group, group_scorers in scorers.items():
        for name, score in group_scorers.items():
            threshold = settings.threshold.choose(score(val))  # the validation images alone
            id_scores = score(id_test)
            thresholds[group][name] = threshold
            tables[group][name] = {
                set_name: ood_metrics(id_scores, score(features), threshold) for set_name, features in ood.items()
            }
    return OODResult(
        sets=sets,
        detectors=tables["detectors"],
        layers=tables["layers"],
        thresholds=thresholds,
        layer=layer,
        settings={
            "detectors": list(settings.detectors),
            "knn_k": settings.detector.knn_k,
            "vim_dim": settings.detector.vim_dim or fit.penultimate.shape[1] // 2,
            "threshold": asdict(settings.threshold),
            "direction": settings.direction,
            "layers": layers,
        },
        counts={"fit": len(fit), "val": len(val), "id_test": len(id_test)},
        val_features=val,
        id_features=id_test,
        ood_features=ood,
        states={name: state for name, (state, _) in detectors.items()},
        seconds=time.perf_counter() - start,
    )
