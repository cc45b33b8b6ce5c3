"""OOD detection as a step of evaluate.py: detect_ood on the run's own training/validation split and the configured
OOD sets (conf/ood/), then ood.json, ood.md, ood_layers.md, the figures and ood_detectors.pt."""

import json
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from cifar_lightning.config import check
from cifar_lightning.config.ood import OODConfig, OODSettings
from cifar_lightning.errors import ConfigError
from cifar_lightning.inference import Classifier
from cifar_lightning.ood.detection import check_layers, detect_ood
from cifar_lightning.ood.figures import write_figures
from cifar_lightning.ood.saved import DETECTORS_FILE, save_detectors
from cifar_lightning.ood.sets import OODSet, prepare_sets
from cifar_lightning.ood.tables import detector_tables, layer_tables, setup_note, write_tables
from cifar_lightning.report import SectionItem

log = logging.getLogger(__name__)


def ood_settings(ood: DictConfig) -> OODConfig:
    """The `ood` node of evaluate.py's config, validated against its schema (ConfigError naming the key and the
    fix otherwise; evaluate.py's own check has refused a bad one already)."""
    node = OmegaConf.to_container(ood, resolve=True)
    check(OmegaConf.create({"ood": node}), "evaluate", "nothing was evaluated")
    return OODConfig.model_validate(node)


def check_model_layers(model: torch.nn.Module, settings: OODSettings) -> None:
    """Refuse layer names the model does not have (ood.mean_activation.layers / .layer) before any work."""
    try:
        check_layers(model, settings.mean_activation)
    except ValueError as exc:
        raise ConfigError(
            f"invalid `ood.mean_activation` config: {exc}. Fix the value on the command line (python evaluate.py "
            f"ood.mean_activation.layer=null) or in conf/ood/default.yaml, or turn OOD detection off with ood=none; "
            f"nothing was evaluated."
        ) from exc


def load_ood_sets(cfg: DictConfig) -> list[OODSet]:
    """The configured OOD sets, loaded (a missing standard set built from torchvision first): evaluate.py's check of
    every OOD input, before anything is written."""
    return prepare_sets(OmegaConf.to_container(cfg.ood.sets, resolve=True), seed=cfg.seed, download=cfg.ood.download)


def run_ood(
    classifier: Classifier,
    *,
    output_dir: Path,
    subject: str,
    gallery_size: int = 8,
    seed: int = 0,
    val_trained_on: bool = False,
    **detect: Any,
) -> list[tuple[str, list[SectionItem]]]:
    """detect_ood (`detect`: its keyword arguments), then ood.json, ood.md, ood_layers.md, the figures and
    ood_detectors.pt in output_dir; returns the report's sections. subject: the model as tables name it.
    val_trained_on: the threshold images are training images of a run that held out no validation split."""
    result = detect_ood(classifier, **detect)
    id_images, ood_sets = detect["id_images"], detect["ood_sets"]
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
    auroc = {
        name: sum(m["auroc"] for m in per_set.values()) / max(1, len(per_set))
        for name, per_set in result.detectors.items()
    }
    best = max(auroc, key=auroc.__getitem__)
    counts = len(ood_sets), len(result.detectors), len(result.layers), result.seconds, best, auroc[best]
    log.info("OOD: %d sets, %d detectors, %d layers in %.1f s; highest mean AUROC: %s (%.4f)", *counts)
    by_layer = "Out-of-distribution detection by mean activation, per layer (the report's method)"
    sections: list[tuple[str, list[SectionItem]]] = [
        ("Out-of-distribution detection: detectors x OOD sets", [setup_note(result), *detector_tables(result)]),
        (by_layer, [*layer_tables(result), *histograms]),
    ]
    if score_histograms:
        sections.append(("Outlier scores of the featured detectors (ood.gallery_detectors)", [*score_histograms]))
    if galleries:
        sections.append(("Images detected as in-distribution and as OOD", [*galleries]))
    return sections
