"""OOD detection as a step of evaluate.py: read and check the `ood` config (conf/ood/), run
detect_ood on the run's own training/validation split and the configured OOD sets, and write
ood.json, ood.md, ood_layers.md, the per-layer histograms, the gallery and ood_detectors.pt."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from cifar_lightning.errors import ConfigError, is_fraction, is_int
from cifar_lightning.inference import Classifier
from cifar_lightning.ood.detection import OODResult, OODSettings, ThresholdSettings, check_layers, detect_ood
from cifar_lightning.ood.detectors import DETECTOR_LABELS, DIRECTIONS, DetectorSettings
from cifar_lightning.ood.figures import plot_layer_histogram, plot_ood_gallery, safe_name
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
    if not is_int(ood.knn_k, 1):
        raise _invalid("knn_k", f"must be a positive integer, got {ood.knn_k!r}", "ood.knn_k=50")
    if ood.vim_dim is not None and not is_int(ood.vim_dim, 1):
        raise _invalid("vim_dim", f"must be a positive integer or null, got {ood.vim_dim!r}", "ood.vim_dim=32")
    if ood.fit_images is not None and not is_int(ood.fit_images, max(ood.knn_k, 10)):
        raise _invalid("fit_images", f"must be null or an integer >= max(knn_k, 10), got {ood.fit_images!r}",
                       "ood.fit_images=null")  # fmt: skip
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
        detector=DetectorSettings(knn_k=ood.knn_k, vim_dim=ood.vim_dim),
        threshold=ThresholdSettings(threshold.method, float(threshold.id_keep), threshold.bins,
                                    float(threshold.min_fraction)),  # fmt: skip
        layers=None if layers is None else tuple(str(name) for name in layers),
        layer=None if mean_activation.layer is None else str(mean_activation.layer),
        direction=mean_activation.direction,
    )


def write_figures(result: OODResult, images: Mapping[str, torch.Tensor], out: Path, gallery_size: int,
                  seed: int) -> tuple[list[Path], Path | None]:  # fmt: skip
    """ood_hist_<layer>.png for every measured layer, and ood_gallery.png for the table's layer."""
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
    gallery = None
    if gallery_size > 0:
        layer, threshold = result.layer, result.thresholds["layers"][result.layer]
        is_ood = {"CIFAR-10 test": sign * result.id_features.layer_means[layer] > threshold}
        is_ood.update({name: sign * result.ood_features[name].layer_means[layer] > threshold for name in result.sets})
        gallery = plot_ood_gallery(images, is_ood, gallery_size, seed, f"the mean activation of {layer}",
                                   out / "ood_gallery.png")  # fmt: skip
    return histograms, gallery


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
    histograms, gallery = write_figures(result, images, out, gallery_size, seed)
    best = max(result.detectors, key=lambda name: _mean(result.detectors[name], "auroc"))
    log.info("OOD: %d sets, %d detectors, %d layers in %.1f s; highest mean AUROC: %s (%.4f)", len(ood_sets),
             len(result.detectors), len(result.layers), result.seconds, best, _mean(result.detectors[best], "auroc"))
    note = setup_note(result)
    sections: list[tuple[str, list[SectionItem]]] = [
        ("Out-of-distribution detection: detectors x OOD sets", [note, *detector_tables(result)]),
        ("Out-of-distribution detection by mean activation, per layer (the report's method)",
         [*layer_tables(result), *histograms]),
    ]  # fmt: skip
    if gallery is not None:
        sections.append(("Images detected as in-distribution and as OOD", [gallery]))
    return sections


def _mean(per_set: Mapping[str, Mapping[str, float]], metric: str) -> float:
    return sum(metrics[metric] for metrics in per_set.values()) / max(1, len(per_set))
