"""OOD detection as a step of evaluate.py: read and check the `ood` config (conf/ood/), run
detect_ood on the run's own training/validation split and the configured OOD sets, and write
ood.json, ood.md, ood_layers.md, the per-layer histograms, the featured detectors' score histograms and
galleries, and ood_detectors.pt."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from cifar_lightning.data import CIFAR10_CLASSES
from cifar_lightning.errors import ConfigError, is_fraction, is_int, is_number
from cifar_lightning.inference import Classifier
from cifar_lightning.ood.detection import (
    OODResult,
    OODSettings,
    ThresholdSettings,
    check_layers,
    detect_ood,
    mean_activation_name,
)
from cifar_lightning.ood.detectors import (
    ASH_VARIANTS,
    DETECTOR_LABELS,
    DIRECTIONS,
    MEAN_ACTIVATION,
    DetectorSettings,
)
from cifar_lightning.ood.figures import plot_layer_histogram, plot_ood_gallery, plot_score_histogram, safe_name
from cifar_lightning.ood.metrics import THRESHOLD_METHODS
from cifar_lightning.ood.saved import DETECTORS_FILE, save_detectors
from cifar_lightning.ood.sets import OODSet, check_set_spec, prepare_sets
from cifar_lightning.ood.tables import detector_tables, layer_tables, setup_note, write_tables
from cifar_lightning.report import SectionItem

log = logging.getLogger(__name__)


def _invalid(key: str, problem: str, example: str) -> ConfigError:
    return ConfigError(
        f"invalid `ood.{key}` config: {problem}. Fix the value on the command line (python evaluate.py {example}) "
        f"or in conf/ood/default.yaml, or turn OOD detection off with ood=none; nothing was evaluated."
    )


def ood_settings(ood: DictConfig) -> OODSettings:
    """The checked settings of an enabled `ood` config; a ConfigError naming the key and the fix otherwise."""
    detectors = list(ood.detectors or [])
    unknown = [name for name in detectors if name not in DETECTOR_LABELS]
    if unknown or len(set(detectors)) != len(detectors):
        problem = f"unknown detector(s) {', '.join(map(str, unknown))}" if unknown else "a detector is listed twice"
        raise _invalid("detectors", f"{problem} (known: {', '.join(DETECTOR_LABELS)})", "ood.detectors=[msp,knn]")
    detector = detector_settings(ood)
    if ood.fit_images is not None and not is_int(ood.fit_images, max(ood.knn_k, ood.nnguide_k, 10)):
        raise _invalid("fit_images", f"must be null or an integer >= max(knn_k, nnguide_k, 10), got "
                       f"{ood.fit_images!r}", "ood.fit_images=null")  # fmt: skip
    gallery = list(ood.gallery_detectors or [])
    unknown = [name for name in gallery if name not in (*DETECTOR_LABELS, MEAN_ACTIVATION)]
    if unknown:
        raise _invalid("gallery_detectors", f"unknown detector(s) {', '.join(map(str, unknown))} (known: "
                       f"{MEAN_ACTIVATION}, {', '.join(DETECTOR_LABELS)})",
                       f"ood.gallery_detectors=[{MEAN_ACTIVATION},knn]")  # fmt: skip
    threshold = ood.threshold
    if threshold.method not in THRESHOLD_METHODS:
        raise _invalid("threshold.method", f"must be one of {', '.join(THRESHOLD_METHODS)}, got {threshold.method!r}",
                       "ood.threshold.method=percentile")  # fmt: skip
    if not is_fraction(threshold.id_keep):
        raise _invalid("threshold.id_keep", f"must be a fraction in (0, 1], got {threshold.id_keep!r}",
                       "ood.threshold.id_keep=0.95")  # fmt: skip
    if not is_int(threshold.bins, 1):
        raise _invalid("threshold.bins", f"must be a positive integer, got {threshold.bins!r}", "ood.threshold.bins=50")
    if not is_fraction(threshold.min_fraction, zero=True, one=False):
        raise _invalid("threshold.min_fraction", f"must be a fraction in [0, 1), got {threshold.min_fraction!r}",
                       "ood.threshold.min_fraction=0.001")  # fmt: skip
    mean_activation = ood.mean_activation
    if mean_activation.direction not in DIRECTIONS:
        raise _invalid("mean_activation.direction",
                       f"must be one of {', '.join(DIRECTIONS)}, got {mean_activation.direction!r}",
                       "ood.mean_activation.direction=below")  # fmt: skip
    if not isinstance(ood.get("download", False), bool):
        raise _invalid("download", f"must be true or false, got {ood.download!r}", "ood.download=false")
    if not is_int(ood.gallery_size, 0):
        raise _invalid("gallery_size", f"must be an integer >= 0, got {ood.gallery_size!r}", "ood.gallery_size=8")
    sets = ood.sets or {}
    for name, spec in sets.items():
        check_set_spec(str(name), OmegaConf.to_container(spec, resolve=True) if spec is not None else spec)
    layers = mean_activation.layers
    return OODSettings(
        detectors=tuple(detectors),
        detector=detector,
        threshold=ThresholdSettings(
            threshold.method, float(threshold.id_keep), threshold.bins, float(threshold.min_fraction)
        ),
        layers=None if layers is None else tuple(str(name) for name in layers),
        layer=None if mean_activation.layer is None else str(mean_activation.layer),
        direction=mean_activation.direction,
        gallery_detectors=tuple(str(name) for name in gallery),
    )


#: Hyperparameters that are a share in [0, 1) (1 would prune, mask or clip away everything) or in (0, 1].
_SHARES = {"react_percentile": (False, True), "ash_percentile": (True, False), "scale_percentile": (True, False),
           "dice_p": (True, False), "nnguide_bank": (False, True)}  # fmt: skip
#: Hyperparameters that are a positive number, and those that are a positive integer.
_POSITIVE = ("gen_gamma", "gradnorm_temperature", "odin_temperature")
_COUNTS = ("knn_k", "nnguide_k")


def detector_settings(ood: DictConfig) -> DetectorSettings:
    """The detectors' checked hyperparameters (conf/ood/default.yaml documents each); a ConfigError otherwise."""
    defaults = DetectorSettings()
    for key in _COUNTS:
        if not is_int(ood[key], 1):
            raise _invalid(key, f"must be a positive integer, got {ood[key]!r}", f"ood.{key}={getattr(defaults, key)}")
    for key in ("vim_dim", "gen_m"):
        if ood[key] is not None and not is_int(ood[key], 1):
            raise _invalid(key, f"must be a positive integer or null, got {ood[key]!r}", f"ood.{key}=null")
    for key in _POSITIVE:
        if not is_number(ood[key], finite=True) or ood[key] <= 0:
            raise _invalid(key, f"must be a positive number, got {ood[key]!r}", f"ood.{key}={getattr(defaults, key)}")
    for key, (zero, one) in _SHARES.items():
        if not is_fraction(ood[key], zero=zero, one=one):
            interval = f"{'[' if zero else '('}0, 1{']' if one else ')'}"
            raise _invalid(key, f"must be a fraction in {interval}, got {ood[key]!r}",
                           f"ood.{key}={getattr(defaults, key)}")  # fmt: skip
    if not is_number(ood.odin_eps, finite=True) or ood.odin_eps < 0:
        raise _invalid("odin_eps", f"must be a number >= 0, got {ood.odin_eps!r}", "ood.odin_eps=0.0014")
    if ood.ash_variant not in ASH_VARIANTS:
        raise _invalid("ash_variant", f"must be one of {', '.join(ASH_VARIANTS)}, got {ood.ash_variant!r}",
                       "ood.ash_variant=ash-b")  # fmt: skip
    weights = ood.weighted_ebo_weights
    if weights is not None:
        weights = list(weights) if isinstance(weights, ListConfig | list | tuple) else weights
        good = isinstance(weights, list) and len(weights) == len(CIFAR10_CLASSES) and all(
            is_number(w, finite=True) and w >= 0 for w in weights) and any(w > 0 for w in weights)  # fmt: skip
        if not good:
            raise _invalid("weighted_ebo_weights", f"must be null or {len(CIFAR10_CLASSES)} numbers >= 0 (one per "
                           f"class, not all 0), got {weights!r}", "ood.weighted_ebo_weights=null")  # fmt: skip
    return DetectorSettings(
        knn_k=ood.knn_k, vim_dim=ood.vim_dim, gen_gamma=float(ood.gen_gamma), gen_m=ood.gen_m,
        weighted_ebo_weights=None if weights is None else tuple(float(w) for w in weights),
        react_percentile=float(ood.react_percentile), ash_variant=str(ood.ash_variant),
        ash_percentile=float(ood.ash_percentile), scale_percentile=float(ood.scale_percentile),
        dice_p=float(ood.dice_p), nnguide_k=ood.nnguide_k, nnguide_bank=float(ood.nnguide_bank),
        gradnorm_temperature=float(ood.gradnorm_temperature), odin_temperature=float(ood.odin_temperature),
        odin_eps=float(ood.odin_eps),
    )  # fmt: skip


def write_figures(result: OODResult, images: Mapping[str, torch.Tensor], out: Path, gallery_size: int,
                  seed: int) -> tuple[list[Path], list[Path], list[Path]]:  # fmt: skip
    """ood_hist_<layer>.png for every measured layer; for each of ood.gallery_detectors that was measured,
    ood_scores_<detector>.png (its outlier scores) and ood_gallery_<detector>.png (ood_gallery.png for the report's
    rule, on the table's layer, whose histogram is its layer's). Returns (layer histograms, score histograms,
    galleries)."""
    direction = result.settings["direction"]
    sign = -1.0 if direction == "below" else 1.0  # outlier score -> mean activation
    histograms = [
        plot_layer_histogram(
            layer, result.id_features.layer_means[layer],
            {name: result.ood_features[name].layer_means[layer] for name in result.sets},
            sign * result.thresholds["layers"][layer], direction, out / f"ood_hist_{safe_name(layer)}.png",
        )
        for layer in result.layers
    ]  # fmt: skip
    score_histograms, galleries = [], []
    for name in result.settings["gallery_detectors"]:
        row = mean_activation_name(result.layer) if name == MEAN_ACTIVATION else name
        if row not in result.scores:
            log.info("OOD figures: %s was not measured (not in ood.detectors, or left out), so it has no gallery", name)
            continue
        scores, threshold = result.scores[row], result.thresholds["detectors"][row]
        if name != MEAN_ACTIVATION:
            score_histograms.append(plot_score_histogram(DETECTOR_LABELS[name], scores.id_test, scores.ood, threshold,
                                                         out / f"ood_scores_{name}.png"))  # fmt: skip
        if gallery_size > 0:
            is_ood = {"CIFAR-10 test": scores.id_test > threshold}
            is_ood.update({set_name: scores.ood[set_name] > threshold for set_name in result.sets})
            method = f"the mean activation of {result.layer}" if name == MEAN_ACTIVATION else DETECTOR_LABELS[name]
            path = out / ("ood_gallery.png" if name == MEAN_ACTIVATION else f"ood_gallery_{name}.png")
            galleries.append(plot_ood_gallery(images, is_ood, gallery_size, seed, method, path))
    return histograms, score_histograms, galleries


def check_model_layers(model: torch.nn.Module, settings: OODSettings) -> None:
    """Refuse layer names the model does not have (ood.mean_activation.layers / .layer) before any work."""
    try:
        check_layers(model, settings)
    except ValueError as exc:
        raise _invalid("mean_activation", str(exc), "ood.mean_activation.layer=null") from exc


def load_ood_sets(cfg: DictConfig) -> list[OODSet]:
    """The configured OOD sets, loaded (a missing standard set built from torchvision first, downloaded when
    ood.download): run_evaluation's check of every OOD input, before anything is written."""
    specs = OmegaConf.to_container(cfg.ood.sets, resolve=True) or {}
    return prepare_sets(specs, seed=cfg.seed, download=bool(cfg.ood.get("download", False)))


def run_ood(
    classifier: Classifier,
    *,
    fit_images: torch.Tensor,
    fit_labels: torch.Tensor,
    val_images: torch.Tensor,
    id_images: torch.Tensor,
    ood_sets: list[OODSet],
    settings: OODSettings,
    output_dir: Path,
    subject: str,
    batch_size: int = 1000,
    progress: bool = False,
    gallery_size: int = 8,
    seed: int = 0,
    val_trained_on: bool = False,
) -> list[tuple[str, list[SectionItem]]]:
    """OOD detection for a classifier with checked settings and loaded sets: fit on (fit_images, fit_labels),
    threshold on val_images, measure id_images (the CIFAR-10 test set) against each OOD set. Writes ood.json,
    ood.md, ood_layers.md, the figures and ood_detectors.pt (the fitted detectors, for predict.py and serve.py)
    into output_dir; returns the report's sections. subject: the model as tables name it. val_trained_on: the
    threshold images are training images of a run that held out no validation split (the tables say so)."""
    result = detect_ood(
        classifier, fit_images=fit_images, fit_labels=fit_labels, val_images=val_images, id_images=id_images,
        ood_sets=ood_sets, settings=settings, batch_size=batch_size, progress=progress,
    )  # fmt: skip
    result.settings["val_trained_on"] = val_trained_on
    out = Path(output_dir)
    summary = result.to_json()
    summary.update(checkpoint=str(classifier.checkpoint_path), experiment=classifier.config.get("experiment_name"))
    (out / "ood.json").write_text(json.dumps(summary, indent=2) + "\n")
    if classifier.checkpoint_path is not None:
        save_detectors(out / DETECTORS_FILE, result, classifier.checkpoint_path)
    write_tables(result, out, subject)
    images = {"CIFAR-10 test": id_images, **{s.name: s.images for s in ood_sets}}
    histograms, score_histograms, galleries = write_figures(result, images, out, gallery_size, seed)
    for name, seconds in result.detector_seconds().items():
        log.info("OOD detector %s: fit %.2f s, scoring %.2f s", name, seconds["fit"], seconds["score"])
    best = max(result.detectors, key=lambda name: _mean(result.detectors[name], "auroc"))
    counts = len(ood_sets), len(result.detectors), len(result.layers)
    log.info("OOD: %d sets, %d detectors, %d layers in %.1f s; highest mean AUROC: %s (%.4f)", *counts,
             result.seconds, best, _mean(result.detectors[best], "auroc"))  # fmt: skip
    note = setup_note(result)
    sections: list[tuple[str, list[SectionItem]]] = [
        ("Out-of-distribution detection: detectors x OOD sets", [note, *detector_tables(result)]),
        ("Out-of-distribution detection by mean activation, per layer (the report's method)",
         [*layer_tables(result), *histograms]),
    ]  # fmt: skip
    if score_histograms:
        sections.append(("Outlier scores of the featured detectors (ood.gallery_detectors)", [*score_histograms]))
    if galleries:
        sections.append(("Images detected as in-distribution and as OOD", [*galleries]))
    return sections


def _mean(per_set: Mapping[str, Mapping[str, float]], metric: str) -> float:
    return sum(metrics[metric] for metrics in per_set.values()) / max(1, len(per_set))
