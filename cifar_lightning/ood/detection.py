"""OOD detection for one classifier: extract features once per data set, fit the detectors on the
training split, choose every threshold on the validation split, and measure each detector and each
activation layer against each OOD set. The CIFAR-10 test set is the in-distribution side.

Usable alone from Python:

    classifier = Classifier.load("logs/train/runs/<date>_<time>/checkpoints/best.ckpt")
    result = detect_ood(classifier, fit_images=..., fit_labels=..., val_images=...,
                        id_images=test_images, ood_sets=load_sets(specs, seed=0))
    result.detectors["knn"]["cifar100"]["auroc"], result.kind_means()["knn"]["near"]

Thresholds see the validation images and nothing else, so changing the test or OOD sets leaves
them unchanged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from cifar_lightning.inference import Classifier, Features, activation_layers
from cifar_lightning.ood.detectors import (
    DETECTOR_LABELS,
    DIRECTIONS,
    IMAGE_DETECTORS,
    MEAN_ACTIVATION,
    DetectorSettings,
    State,
    build_detectors,
    image_state,
    mean_activation_score,
    score_images,
)
from cifar_lightning.ood.metrics import THRESHOLD_METHODS, histogram_threshold, ood_metrics, percentile_threshold
from cifar_lightning.ood.sets import OODSet

log = logging.getLogger(__name__)

#: The kinds of OOD set that the summary averages over, as OpenOOD reports them.
SUMMARY_KINDS = ("near", "far")
SUMMARY_METRICS = ("auroc", "fpr95")


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
    #: Detectors drawn as a score histogram and a gallery (mean_activation: the report's rule); those not
    #: measured are passed over.
    gallery_detectors: tuple[str, ...] = (MEAN_ACTIVATION, "knn")


@dataclass
class Scores:
    """One detector's outlier scores on the validation split, the CIFAR-10 test set and each OOD set, and the
    seconds its fit and its scoring took."""

    val: Tensor
    id_test: Tensor
    ood: dict[str, Tensor]
    fit_seconds: float = 0.0
    score_seconds: float = 0.0


@dataclass
class OODResult:
    """Metrics per detector (and per layer) and OOD set; thresholds; the features and scores behind them."""

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
    scores: dict[str, Scores] = field(default_factory=dict)  # detector row (as in `detectors`) -> its scores
    left_out: dict[str, str] = field(default_factory=dict)  # detector pytorch-ood could not fit -> why
    feature_seconds: float = 0.0  # extracting the features every detector but ODIN shares, once per set
    seconds: float = 0.0

    def detector_seconds(self) -> dict[str, dict[str, float]]:
        """Per detector row: the seconds of its fit and of its scoring (validation, test and every OOD set)."""
        return {name: {"fit": round(scores.fit_seconds, 3), "score": round(scores.score_seconds, 3)}
                for name, scores in self.scores.items()}  # fmt: skip

    def kind_means(self) -> dict[str, dict[str, dict[str, float] | None]]:
        """Per detector row and summary kind (near, far): the mean AUROC and FPR@95 over the OOD sets of that kind,
        as OpenOOD reports them; None for a kind no set has. Synthetic and custom sets are in no mean."""
        means: dict[str, dict[str, dict[str, float] | None]] = {}
        for name, per_set in self.detectors.items():
            means[name] = {}
            for kind in SUMMARY_KINDS:
                chosen = [s for s in per_set if self.sets.get(s, {}).get("kind") == kind]
                means[name][kind] = {
                    metric: sum(per_set[s][metric] for s in chosen) / len(chosen) for metric in SUMMARY_METRICS
                } if chosen else None  # fmt: skip
        return means

    def to_json(self) -> dict[str, Any]:
        return {
            "in_distribution": "CIFAR-10 test set",
            "counts": self.counts,
            "sets": self.sets,
            "settings": self.settings,
            "mean_activation_layer": self.layer,
            "thresholds": self.thresholds,
            "detectors": self.detectors,
            "near_far": self.kind_means(),
            "detector_seconds": self.detector_seconds(),
            "left_out": self.left_out,
            "layers": self.layers,
            "feature_seconds": round(self.feature_seconds, 3),
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

    All images are uint8 (N, 3, 32, 32); the classifier normalizes them and runs on its device. Features are
    extracted once per set and shared by every detector; ODIN alone runs on the images themselves.
    """
    start = time.perf_counter()
    layers, _ = check_layers(classifier.model, settings)

    def features(images: Tensor, name: str, with_layers: bool = True) -> Features:
        return classifier.features(images, layers if with_layers else [], batch_size, progress, f"Features: {name}")

    fit = features(fit_images, "training split", with_layers=False)
    val, id_test = features(val_images, "validation split"), features(id_images, "CIFAR-10 test")
    ood = {ood_set.name: features(ood_set.images, ood_set.name) for ood_set in ood_sets}
    feature_seconds = time.perf_counter() - start
    image_scores = {}
    for name in (name for name in settings.detectors if name in IMAGE_DETECTORS):
        image_scores[name] = image_detector_scores(
            name, classifier, settings.detector, val_images, id_images, ood_sets, batch_size, progress
        )
    result = score_ood(
        classifier.head, fit=fit, fit_labels=fit_labels, val=val, id_test=id_test, ood=ood,
        sets={ood_set.name: ood_set.describe() for ood_set in ood_sets}, settings=settings,
        image_scores=image_scores, progress=progress,
    )  # fmt: skip
    result.feature_seconds = feature_seconds
    result.seconds = time.perf_counter() - start
    return result


def image_detector_scores(
    name: str,
    classifier: Classifier,
    settings: DetectorSettings,
    val_images: Tensor,
    id_images: Tensor,
    ood_sets: Sequence[OODSet],
    batch_size: int = 1000,
    progress: bool = False,
) -> tuple[State, Scores]:
    """An image detector (ODIN) run on the validation, test and OOD images through the whole network, in batches
    with a progress bar; its seconds (forward and backward passes included) are logged and kept."""
    state = image_state(name, settings)
    start = time.perf_counter()

    def score(images: Tensor, set_name: str) -> Tensor:
        return score_images(name, state, classifier, images, batch_size, progress, f"{name}: {set_name}")

    scores = Scores(val=score(val_images, "validation split"), id_test=score(id_images, "CIFAR-10 test"),
                    ood={ood_set.name: score(ood_set.images, ood_set.name) for ood_set in ood_sets})  # fmt: skip
    scores.score_seconds = time.perf_counter() - start
    count = len(val_images) + len(id_images) + sum(len(ood_set.images) for ood_set in ood_sets)
    log.info("OOD detector %s: %d images through the whole network (a gradient step each) in %.1f s", name, count,
             scores.score_seconds)  # fmt: skip
    return state, scores


def _score_sets(score: Callable[[Features], Tensor], val: Features, id_test: Features, ood: Mapping[str, Features],
                fit_seconds: float = 0.0) -> Scores:  # fmt: skip
    """A feature detector's scores on every set, with the seconds they took."""
    start = time.perf_counter()
    scores = Scores(score(val), score(id_test), {name: score(features) for name, features in ood.items()})
    scores.fit_seconds, scores.score_seconds = fit_seconds, time.perf_counter() - start
    return scores


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
    image_scores: Mapping[str, tuple[State, Scores]] | None = None,
    progress: bool = False,
) -> OODResult:
    """detect_ood on features already extracted: fit on `fit`, threshold on `val`, measure `id_test` against each
    `ood` set. val, id_test and the OOD features must hold the mean activations of settings.layers. Image
    detectors (ODIN) cannot score features: their state and scores come in `image_scores`
    (image_detector_scores)."""
    start = time.perf_counter()
    if settings.direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {settings.direction!r}")
    image_scores = dict(image_scores or {})
    missing = [name for name in settings.detectors if name in IMAGE_DETECTORS and name not in image_scores]
    if missing:
        raise ValueError(f"{', '.join(missing)} score images, not features: pass their image_detector_scores in "
                         f"image_scores, or use detect_ood")  # fmt: skip
    available = list(val.layer_means)

    def uses(name: str) -> list[str]:  # a module applied several times is measured as name@1, name@2, ...
        return [key for key in available if key == name or key.startswith(f"{name}@")]

    layers = available if settings.layers is None else [key for name in settings.layers for key in uses(name)]
    layer = uses(settings.layer)[-1] if settings.layer is not None else layers[-1]
    if layer not in layers:
        layers.append(layer)
    feature_detectors = [name for name in settings.detectors if name not in IMAGE_DETECTORS]
    fitted, left_out = build_detectors(feature_detectors, fit, fit_labels.cpu(), head, settings.detector, progress)
    states, rows = {}, {}
    for name in settings.detectors:
        if name in image_scores:
            states[name], rows[name] = image_scores[name]
        elif name in fitted:
            states[name] = fitted[name].state
            rows[name] = _score_sets(fitted[name].score, val, id_test, ood, fitted[name].fit_seconds)
    rows[mean_activation_name(layer)] = _score_sets(lambda f: mean_activation_score(f, layer, settings.direction),
                                                    val, id_test, ood)  # fmt: skip
    layer_rows = {name: _score_sets(lambda f, n=name: mean_activation_score(f, n, settings.direction), val, id_test,
                                    ood) for name in layers}  # fmt: skip
    tables: dict[str, dict[str, dict[str, dict[str, float]]]] = {"detectors": {}, "layers": {}}
    thresholds: dict[str, dict[str, float]] = {"detectors": {}, "layers": {}}
    for group, group_rows in (("detectors", rows), ("layers", layer_rows)):
        for name, scores in group_rows.items():
            threshold = settings.threshold.choose(scores.val)  # the validation images alone
            thresholds[group][name] = threshold
            tables[group][name] = {set_name: ood_metrics(scores.id_test, scores.ood[set_name], threshold)
                                   for set_name in ood}  # fmt: skip
    detector_settings = {key: list(value) if isinstance(value, tuple) else value
                         for key, value in asdict(settings.detector).items()}  # fmt: skip
    return OODResult(
        sets=sets,
        detectors=tables["detectors"],
        layers=tables["layers"],
        thresholds=thresholds,
        layer=layer,
        settings={
            "detectors": list(settings.detectors),
            **detector_settings,
            "vim_dim": settings.detector.vim_dim or fit.penultimate.shape[1] // 2,
            "threshold": asdict(settings.threshold),
            "direction": settings.direction,
            "layers": layers,
            "gallery_detectors": list(settings.gallery_detectors),
        },
        counts={"fit": len(fit), "val": len(val), "id_test": len(id_test)},
        val_features=val,
        id_features=id_test,
        ood_features=ood,
        states=states,
        scores=rows,
        left_out=left_out,
        seconds=time.perf_counter() - start,
    )
