"""OOD detection for one classifier: features extracted once per set, detectors fitted on the training split, every
threshold chosen on the validation split alone, each detector and activation layer measured against the test half of
each OOD set, and the default detector chosen on the validation halves (ood/protocol.py).
Metrics are pytorch-ood's; FPR@95%TPR takes in-distribution as the positive class, as the OOD literature does."""

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from pytorch_ood.metrics.functional import aupr, auroc, fpr_at_tpr
from torch import Tensor, nn

from cifar_lightning.config.data import EVAL_BATCH_SIZE
from cifar_lightning.config.ood import IMAGE_DETECTORS, DetectorHyperparameters, OODSettings, ThresholdSettings
from cifar_lightning.inference import Classifier, Features, activation_layers
from cifar_lightning.ood.detectors import (
    DetectorFitError,
    build_detectors,
    image_state,
    mean_activation_score,
    score_images,
)
from cifar_lightning.ood.protocol import choose_detector, split_halves
from cifar_lightning.ood.sets import OODSet

log = logging.getLogger(__name__)

#: The kinds of OOD set that the summary averages over, as OpenOOD reports them.
SUMMARY_KINDS = ("near", "far")
SUMMARY_METRICS = ("auroc", "fpr95")


@dataclass
class Scores:
    """One detector's outlier scores on the validation split, the test set and each OOD set, and its seconds."""

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
    validation: dict[str, dict[str, dict[str, float]]]  # detector -> set -> metrics on the validation halves
    chosen: str  # the detector row chosen on the validation halves (ood/protocol.py)
    layer: str  # the layer of the "mean activation" detector row
    settings: dict[str, Any]
    counts: dict[str, int]  # fit / val / id_test image counts
    val_features: Features
    id_features: Features
    ood_features: dict[str, Features]  # per OOD set
    states: dict[str, dict[str, Any]] = field(default_factory=dict)  # detector -> fitted state, for ood/saved.py
    scores: dict[str, Scores] = field(default_factory=dict)  # detector row (as in `detectors`) -> its scores
    left_out: dict[str, str] = field(default_factory=dict)  # detector that could not be fitted -> why
    feature_seconds: float = 0.0  # extracting the features every detector but ODIN shares, once per set
    seconds: float = 0.0

    def detector_seconds(self) -> dict[str, dict[str, float]]:
        """Per detector row: the seconds of its fit and of its scoring (validation, test and every OOD set)."""
        return {n: {"fit": round(s.fit_seconds, 3), "score": round(s.score_seconds, 3)} for n, s in self.scores.items()}

    def kind_means(self, part: str = "test") -> dict[str, dict[str, dict[str, float] | None]]:
        """Per detector row and kind (near, far): the mean AUROC and FPR@95 over the sets of that kind, or None; on
        the test halves, or the validation halves (part="validation")."""
        rows = self.detectors if part == "test" else self.validation

        def mean(per_set: dict[str, dict[str, float]], kind: str) -> dict[str, float] | None:
            chosen = [s for s in per_set if self.sets.get(s, {}).get("kind") == kind]
            return {m: sum(per_set[s][m] for s in chosen) / len(chosen) for m in SUMMARY_METRICS} if chosen else None

        return {name: {kind: mean(per_set, kind) for kind in SUMMARY_KINDS} for name, per_set in rows.items()}

    def to_json(self) -> dict[str, Any]:
        """ood.json."""
        summary = {"in_distribution": "CIFAR-10 test set", "counts": self.counts, "sets": self.sets}
        summary.update(settings=self.settings, mean_activation_layer=self.layer, thresholds=self.thresholds)
        summary.update(detectors=self.detectors, near_far=self.kind_means(), detector_seconds=self.detector_seconds())
        split = {key: self.settings[key] for key in ("validation_share", "split_seed")}
        validation = {"detectors": self.validation, "near_far": self.kind_means("validation")}
        summary.update(validation={**split, **validation, "chosen": self.chosen})
        summary.update(left_out=self.left_out, layers=self.layers, feature_seconds=round(self.feature_seconds, 3))
        return {**summary, "seconds": round(self.seconds, 3)}


def choose_threshold(val_scores: Tensor, settings: ThresholdSettings) -> float:
    """The threshold of conf/ood's `threshold` rule, on validation scores alone."""
    if settings.method == "histogram":
        return histogram_threshold(val_scores, settings.bins, settings.min_fraction)
    return percentile_threshold(val_scores, settings.id_keep)


def percentile_threshold(val_scores: Tensor, id_keep: float = 0.95) -> float:
    """The smallest threshold keeping `id_keep` of the validation images (score <= it): the ceil(id_keep n)-th."""
    ordered = torch.sort(val_scores.double().flatten()).values
    rank = max(1, math.ceil(id_keep * len(ordered) - 1e-9))
    return ordered[rank - 1].item()


def histogram_threshold(val_scores: Tensor, bins: int = 50, min_fraction: float = 0.001) -> float:
    """The report's approach on validation scores alone: walking in from the most OOD-like bin, bins with under
    `min_fraction` of the images are stragglers; the threshold is the outer edge of the first that is not."""
    scores = val_scores.double().flatten()
    low, high = scores.min().item(), scores.max().item()
    if low == high:
        return high
    counts = torch.histc(scores, bins=bins, min=low, max=high)
    edges = torch.linspace(low, high, bins + 1, dtype=torch.float64)
    needed = min_fraction * len(scores)
    for index in range(bins - 1, -1, -1):
        if counts[index] >= needed and counts[index] > 0:
            return edges[index + 1].item()
    return high


def detection_rates(id_scores: Tensor, ood_scores: Tensor, threshold: float) -> dict[str, float]:
    """At a threshold (OOD above it): the shares of ID images kept and of OOD images caught, and their mean."""
    id_kept = (id_scores <= threshold).double().mean().item()
    ood_caught = (ood_scores > threshold).double().mean().item()
    return {"id_kept": id_kept, "ood_caught": ood_caught, "detection_acc": (id_kept + ood_caught) / 2}


def ood_metrics(id_scores: Tensor, ood_scores: Tensor, threshold: float | None = None) -> dict[str, float]:
    """AUROC, AUPR-IN, AUPR-OUT, FPR@95%TPR (ID positive) and, given a threshold, the detection rates."""
    id_scores, ood_scores = id_scores.double().flatten(), ood_scores.double().flatten()
    scores = torch.cat([id_scores, ood_scores])
    labels = torch.cat([torch.zeros(len(id_scores), dtype=torch.long), -torch.ones(len(ood_scores), dtype=torch.long)])
    # Roles swapped for FPR@95: pytorch-ood's positive class is OOD (labels < 0, high scores).
    id_positive_labels = torch.where(labels < 0, 0, -1)
    metrics = {
        "auroc": auroc(scores, labels).item(),
        "aupr_in": aupr(scores, labels, positive="id").item(),
        "aupr_out": aupr(scores, labels, positive="ood").item(),
        "fpr95": fpr_at_tpr(-scores, id_positive_labels, tpr=0.95).item(),
    }
    if threshold is not None:
        metrics.update(threshold=threshold, **detection_rates(id_scores, ood_scores, threshold))
    return metrics


def fit_subset(labels: torch.Tensor, count: int | None, seed: int) -> torch.Tensor:
    """Indices of the training images the detectors are fitted on: all, or `count` drawn at random (seeded)."""
    if count is None or count >= len(labels):
        return torch.arange(len(labels))
    generator = torch.Generator().manual_seed(seed)
    return torch.sort(torch.randperm(len(labels), generator=generator)[:count]).values


def mean_activation_name(layer: str) -> str:
    return f"mean activation ({layer})"


def check_layers(model: nn.Module, layers: Sequence[str] | None, layer: str | None = None) -> tuple[list[str], str]:
    """The activation layers to measure and the one for the detectors' table; a clear error for a wrong name."""
    available = activation_layers(model)
    if not available:
        raise ValueError(f"{type(model).__name__} has no activation layers (ReLU, GELU, ...) to measure")
    layers = list(layers) if layers is not None else available
    unknown = [name for name in [*layers, layer] if name is not None and name not in available]
    if unknown:
        names = ", ".join(map(repr, unknown))
        raise ValueError(f"the model has no activation layer {names}; its activation layers are {', '.join(available)}")
    layer = layer or layers[-1]
    if layer not in layers:
        layers.append(layer)
    return layers, layer


VALIDATION, ID_TEST = "validation split", "CIFAR-10 test"  # the in-distribution sets, by the names `known` uses


def measured_layers(model: nn.Module, settings: OODSettings) -> list[str]:
    """The activation layers whose mean activations detect_ood reads (check_layers on the settings)."""
    return check_layers(model, settings.mean_activation.layers, settings.mean_activation.layer)[0]


def detect_ood(
    classifier: Classifier,
    *,
    fit_images: Tensor,
    fit_labels: Tensor,
    val_images: Tensor,
    id_images: Tensor,
    ood_sets: Sequence[OODSet],
    settings: OODSettings = OODSettings(),
    batch_size: int = EVAL_BATCH_SIZE,
    progress: bool = False,
    known: Mapping[str, Features] | None = None,
) -> OODResult:
    """Fit on (fit_images, fit_labels), threshold on val_images, measure id_images against every OOD set. Images
    are uint8 (N, 3, 32, 32); features are extracted once per set and shared; ODIN alone runs on the images.
    `known`: features the caller already extracted with measured_layers, by set (VALIDATION, ID_TEST), not
    extracted again."""
    start = time.perf_counter()
    layers, known = measured_layers(classifier.model, settings), dict(known or {})

    def each(score: Callable[[Tensor, str], Any]) -> tuple[Any, Any, dict[str, Any]]:
        """score(images, name) of the validation split, the test set and each OOD set, in that order."""
        val, id_test = score(val_images, VALIDATION), score(id_images, ID_TEST)
        return val, id_test, {ood_set.name: score(ood_set.images, ood_set.name) for ood_set in ood_sets}

    fit = classifier.features(fit_images, [], batch_size, progress, "Features: training split")
    val, id_test, ood = each(
        lambda images, name: (
            known[name]
            if name in known
            else classifier.features(images, layers, batch_size, progress, f"Features: {name}")
        )
    )
    feature_seconds, image_scores = time.perf_counter() - start, {}
    left_out = {}
    for name in (name for name in settings.detectors if name in IMAGE_DETECTORS):  # through the whole network
        began = time.perf_counter()
        try:
            state = image_state(name, settings, classifier.checkpoint_path)
        except DetectorFitError as exc:
            left_out[name] = str(exc)
            log.warning("OOD detector %s left out: %s", name, exc)
            continue
        scores = Scores(
            *each(
                lambda images, of: score_images(name, state, classifier, images, batch_size, progress, f"{name}: {of}")
            )
        )
        scores.score_seconds = time.perf_counter() - began
        log.info("OOD detector %s: scored every image through the whole network in %.1f s", name, scores.score_seconds)
        image_scores[name] = state, scores
    sets = {ood_set.name: ood_set.describe() for ood_set in ood_sets}
    image_names = [name for name in settings.detectors if name not in left_out]
    measured = settings.model_copy(update={"detectors": image_names})
    result = score_ood(classifier.head, fit, fit_labels, val, id_test, ood, sets, measured, image_scores, progress)
    result.left_out = {**left_out, **result.left_out}
    result.feature_seconds = feature_seconds
    result.seconds = time.perf_counter() - start
    return result


def score_ood(
    head: nn.Linear,
    fit: Features,
    fit_labels: Tensor,
    val: Features,
    id_test: Features,
    ood: dict[str, Features],
    sets: dict[str, dict[str, Any]],
    settings: OODSettings = OODSettings(),
    image_scores: Mapping[str, tuple[dict[str, Any], Scores]] | None = None,
    progress: bool = False,
) -> OODResult:
    """detect_ood on features already extracted (val, id_test and ood with the measured layers' mean activations).
    Image detectors (ODIN) cannot score features: their state and scores come in `image_scores`."""
    start = time.perf_counter()
    image_scores = dict(image_scores or {})
    missing = [name for name in settings.detectors if name in IMAGE_DETECTORS and name not in image_scores]
    if missing:
        raise ValueError(f"{', '.join(missing)} score images: pass their image_detector_scores, or use detect_ood")
    available = list(val.layer_means)

    def uses(name: str) -> list[str]:  # a module applied several times is measured as name@1, name@2, ...
        return [key for key in available if key == name or key.startswith(f"{name}@")]

    chosen, direction = settings.mean_activation, settings.mean_activation.direction
    layers = available if chosen.layers is None else [key for name in chosen.layers for key in uses(name)]
    layer = uses(chosen.layer)[-1] if chosen.layer is not None else layers[-1]
    if layer not in layers:
        layers.append(layer)

    def over_sets(score: Callable[[Features], Tensor], fit_seconds: float = 0.0) -> Scores:
        """A feature detector's scores on every set, with the seconds they took."""
        began = time.perf_counter()
        scores = Scores(score(val), score(id_test), {name: score(features) for name, features in ood.items()})
        scores.fit_seconds, scores.score_seconds = fit_seconds, time.perf_counter() - began
        return scores

    halves = {
        name: split_halves(len(features), settings.validation_share, settings.split_seed)
        for name, features in ood.items()
    }
    sets = {name: {**sets[name], "n_validation": len(part[0]), "n_test": len(part[1])} for name, part in halves.items()}

    def measured(scores: Scores, threshold: float, part: int) -> dict[str, dict[str, float]]:
        """Metrics against each OOD set's validation (part 0, ID: the validation split) or test half (1, ID: test)."""
        id_scores = scores.val if part == 0 else scores.id_test
        return {s: ood_metrics(id_scores, scores.ood[s][halves[s][part]], threshold) for s in ood}

    feature_detectors = [name for name in settings.detectors if name not in IMAGE_DETECTORS]
    fitted, left_out = build_detectors(feature_detectors, fit, fit_labels.cpu(), head, settings, progress)
    states, rows = {}, {}
    for name in settings.detectors:
        if name in image_scores:
            states[name], rows[name] = image_scores[name]
        elif name in fitted:
            states[name] = fitted[name].state
            rows[name] = over_sets(fitted[name].score, fitted[name].fit_seconds)

    def by_layer(name: str) -> Scores:
        return over_sets(lambda f: mean_activation_score(f, name, direction))

    rows[mean_activation_name(layer)] = by_layer(layer)
    layer_rows = {name: by_layer(name) for name in layers}
    tables: dict[str, dict[str, dict[str, dict[str, float]]]] = {"detectors": {}, "layers": {}}
    thresholds: dict[str, dict[str, float]] = {"detectors": {}, "layers": {}}
    for group, group_rows in (("detectors", rows), ("layers", layer_rows)):
        for name, scores in group_rows.items():
            threshold = choose_threshold(scores.val, settings.threshold)  # the validation images alone
            thresholds[group][name] = threshold
            tables[group][name] = measured(scores, threshold, part=1)
    validation = {name: measured(scores, thresholds["detectors"][name], part=0) for name, scores in rows.items()}
    detector_rows = {name: validation[name] for name in states}  # the mean-activation row is not a choice
    record = {
        "detectors": list(settings.detectors),
        **{name: getattr(settings, name) for name in DetectorHyperparameters.model_fields},
        "vim_dim": settings.vim_dim or fit.penultimate.shape[1] // 2,
        "threshold": settings.threshold.model_dump(),
        "direction": direction,
        "layers": layers,
        "gallery_detectors": list(settings.gallery_detectors),
        "validation_share": settings.validation_share,
        "split_seed": settings.split_seed,
    }
    counts = {"fit": len(fit), "val": len(val), "id_test": len(id_test)}
    detector_table, layer_table = tables["detectors"], tables["layers"]
    kinds = {name: info.get("kind") for name, info in sets.items()}
    chosen = choose_detector(detector_rows or validation, kinds)
    result = OODResult(
        sets, detector_table, layer_table, thresholds, validation, chosen, layer, record, counts, val, id_test, ood
    )
    result.states, result.scores, result.left_out = states, rows, left_out
    result.seconds = time.perf_counter() - start
    return result
