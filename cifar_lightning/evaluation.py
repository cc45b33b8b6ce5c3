"""The evaluation job behind evaluate.py: load a train.py checkpoint, predict the 10,000 CIFAR-10
test images, measure, and write the metrics, figures, Grad-CAM maps and a one-page report.

Predicting (`predict`) and measuring (`measure`) are separate functions on plain tensors, so
other analyses (e.g. out-of-distribution scores) reuse them on any set of uint8 images.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException
from torch import Tensor, nn
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from cifar_lightning.augment import TTA_LEVELS, is_tta_level
from cifar_lightning.checkpoints import chosen_checkpoint
from cifar_lightning.data import CIFAR10DataModule, held_out_split
from cifar_lightning.errors import ConfigError, invalid_setting, is_int, one_line
from cifar_lightning.figures import plot_confusion_matrix, plot_curves, plot_gallery
from cifar_lightning.gradcam import EXPLAINED, EXPLAINED_TEXT, gradcam_overlays
from cifar_lightning.inference import DEVICES, Classifier, Predictions, pick_device
from cifar_lightning.ood.detection import OODSettings, fit_subset
from cifar_lightning.ood.job import check_model_layers, load_ood_sets, ood_settings, run_ood
from cifar_lightning.ood.sets import OODSet
from cifar_lightning.report import SectionItem, write_report
from cifar_lightning.runs import RunDir
from cifar_lightning.runs import history as run_history

log = logging.getLogger(__name__)



@dataclass
class Evaluation:
    """Everything one evaluation produced and used, for the figures and for callers in Python."""

    summary: dict[str, Any]
    predictions: Predictions
    images: Tensor  # uint8 (N, 3, 32, 32), the test images
    labels: Tensor
    classifier: Classifier  # the checkpoint's model, normalization and device
    output_dir: Path
    datamodule: CIFAR10DataModule  # the run's own split and normalization, for OOD fitting and thresholds
    ood: OODSettings | None  # checked OOD settings; None with ood=none
    ood_sets: list[OODSet] = field(default_factory=list)  # loaded before any output was written; [] with ood=none

    @property
    def model(self) -> nn.Module:
        return self.classifier.model

    @property
    def normalize(self) -> Callable[[Tensor], Tensor]:
        return self.classifier.normalize

    @property
    def checkpoint_path(self) -> Path:
        return self.classifier.checkpoint_path

    @property
    def device(self) -> torch.device:
        return self.classifier.device


def _invalid(key: str, problem: str, example: str) -> ConfigError:
    return invalid_setting("evaluate", "nothing was evaluated", key, problem, example)


def check_settings(cfg: DictConfig) -> OODSettings | None:
    """Refuse a bad evaluation setting before anything is loaded or written; returns the checked OOD
    settings (None with ood=none)."""
    if cfg.device not in DEVICES:
        raise _invalid("device", f"device must be one of {', '.join(DEVICES)}, got {cfg.device!r}", "device=auto")
    if not is_int(cfg.batch_size, 1):
        raise _invalid("batch_size", f"must be a positive integer, got {cfg.batch_size!r}", "batch_size=1000")
    if not is_tta_level(cfg.tta):
        raise _invalid("tta", f"must be one of {', '.join(map(str, TTA_LEVELS))}, got {cfg.tta!r}", "tta=2")
    if not is_int(cfg.seed, 0):
        raise _invalid("seed", f"seed must be a non-negative integer, got {cfg.seed!r}", "seed=0")
    if not is_int(cfg.gallery.size, 0):
        raise _invalid("gallery.size", f"must be an integer >= 0, got {cfg.gallery.size!r}", "gallery.size=32")
    if not is_int(cfg.gradcam.count, 0):
        raise _invalid("gradcam.count", f"must be an integer >= 0, got {cfg.gradcam.count!r}", "gradcam.count=8")
    explain = cfg.gradcam.explain
    if isinstance(explain, bool):  # Hydra and YAML read true/false as booleans, never as a class to explain
        raise _invalid(
            "gradcam.explain", f"{str(explain).lower()} was read as the boolean {explain}, not as a class to explain; "
            f"it must be one of {', '.join(EXPLAINED)} (predicted: the class the model predicted; label: the true "
            f"class, the image's label)", "gradcam.explain=label",
        )  # fmt: skip
    if explain not in EXPLAINED:
        raise _invalid(
            "gradcam.explain", f"must be one of {', '.join(EXPLAINED)} (predicted: the class the model predicted; "
            f"label: the true class), got {explain!r}", "gradcam.explain=label",
        )  # fmt: skip
    return ood_settings(cfg.ood) if cfg.ood.enabled else None


def device_name(device: torch.device) -> str:
    """cpu, or the GPU's name."""
    return str(device) if device.type != "cuda" else torch.cuda.get_device_name(device)


def gradcam_layer(model: nn.Module, name: str | None) -> str:
    """The layer Grad-CAM hooks: the one named, or the model's last Conv2d."""
    layers = dict(model.named_modules())
    if name is not None:
        if name not in layers or name == "":
            raise _invalid(
                "gradcam.layer",
                f"the model has no layer {name!r} (its layers: {', '.join(n for n in layers if n)})",
                "gradcam.layer=conv3, or gradcam.layer=null for the last conv layer",
            )
        return name
    convs = [n for n, module in layers.items() if isinstance(module, nn.Conv2d)]
    if not convs:
        raise _invalid("gradcam.layer", "the model has no Conv2d layer to explain", "gradcam.layer=<layer name>")
    return convs[-1]


def build_datamodule(data: DictConfig, stats: dict[str, list[float]], run_data: Any = None) -> CIFAR10DataModule:
    """The test data, normalized with the checkpoint's training statistics (not recomputed).

    run_data: the run's own data config; its validation split (val_fraction, split_seed) is kept, so that
    OOD detectors are fitted on the run's training split and thresholded on its validation split; a run that
    held out none gets data.FALLBACK_VAL_FRACTION of its training images (datamodule.val_trained_on is then True).
    """
    split, val_trained_on = held_out_split(run_data)
    if val_trained_on:
        log.warning("the run held out no validation split (data.val_fraction=0): OOD thresholds are set on %.0f%% of "
                    "its training images, which it was trained on", 100 * split["val_fraction"])  # fmt: skip
    try:
        datamodule = instantiate(data, **split)
    except (InstantiationException, OmegaConfBaseException, ValueError, TypeError, ImportError) as exc:
        cause: BaseException = exc.__cause__ if isinstance(exc, InstantiationException) and exc.__cause__ else exc
        raise _invalid("data", one_line(cause), "data.<key>=<value>") from exc
    datamodule.prepare_data()  # missing or corrupt data fails here, naming the file and the fix
    datamodule.load_state_dict(stats)
    datamodule.setup("test")
    datamodule.val_trained_on = val_trained_on
    return datamodule


def measure(predictions: Predictions, labels: Tensor) -> dict[str, Any]:
    """Accuracy, mean cross-entropy, per-class accuracy/precision/recall/F1 and the confusion matrix.

    The confusion matrix has rows = true class, columns = predicted class.
    """
    logits, classes = predictions.logits, predictions.logits.shape[1]

    def per_class(metric: type) -> list[float]:
        return metric(classes, average=None)(logits, labels).tolist()

    return {
        "test_acc": MulticlassAccuracy(classes, average="micro")(logits, labels).item(),
        "test_loss": F.cross_entropy(logits.double(), labels).item(),
        "per_class_acc": per_class(MulticlassAccuracy),
        "precision": per_class(MulticlassPrecision),
        "recall": per_class(MulticlassRecall),
        "f1": per_class(MulticlassF1Score),
        "confusion": MulticlassConfusionMatrix(classes)(logits, labels).tolist(),
        "num_images": len(labels),
    }


def ranked(predictions: Predictions, labels: Tensor, correct: bool) -> Tensor:
    """Indices of the correctly (or wrongly) classified images, most confident first (ties: lower index first)."""
    chosen = torch.nonzero((predictions.predicted == labels) == correct).flatten()
    order = torch.sort(predictions.confidence[chosen], descending=True, stable=True).indices
    return chosen[order]


def write_tables(output_dir: Path, summary: dict[str, Any]) -> list[Path]:
    """evaluation.json (the summary) and confusion_matrix.csv (rows = true class, with class names)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = output_dir / "evaluation.json", output_dir / "confusion_matrix.csv"
    json_path.write_text(json.dumps(summary, indent=2) + "\n")
    with csv_path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["true \\ predicted", *summary["classes"]])
        for name, row in zip(summary["classes"], summary["confusion"]):
            writer.writerow([name, *row])
    return [json_path, csv_path]


def training_history(checkpoint: Path) -> list[dict[str, Any]]:
    """The per-epoch history in the metrics.json of the run the checkpoint lies in; [] if there is none."""
    return run_history(RunDir.of_checkpoint(checkpoint))


def run_evaluation(cfg: DictConfig) -> Evaluation:
    """Load, predict and measure; writes evaluation.json and confusion_matrix.csv (no figures).

    Every input (settings, checkpoint, CIFAR-10, the OOD sets) is checked and loaded before the first file is
    written, so bad input never leaves a half-finished output directory.
    """
    start = time.perf_counter()
    ood = check_settings(cfg)
    L.seed_everything(cfg.seed, verbose=False)
    path = chosen_checkpoint(cfg.get("ckpt"), cfg.get("run_dir"), "evaluate.py")
    classifier = Classifier.load(path, pick_device(cfg.device), cfg.tta)
    layer = gradcam_layer(classifier.model, cfg.gradcam.layer)
    config = classifier.config
    if ood is not None:
        check_model_layers(classifier.model, ood)  # a layer the model lacks fails before any work
    datamodule = build_datamodule(cfg.data, classifier.normalization, config.get("data"))
    ood_sets = load_ood_sets(cfg) if ood is not None else []  # every input is there before any output is written
    images, labels, classes = datamodule.arrays.test_images, datamodule.arrays.test_labels, datamodule.classes

    predictions = classifier.predict(images, cfg.batch_size, cfg.progress)
    summary = measure(predictions, labels)
    summary.update(
        classes=list(classes),
        checkpoint=str(path),
        checkpoint_epoch=classifier.checkpoint_epoch,
        experiment=config.get("experiment_name"),
        loss=(config.get("loss") or {}).get("name", "cross_entropy"),  # checkpoints from before conf/loss/: CE
        model=config["model"],
        normalization=classifier.normalization,
        device=device_name(classifier.device),
        gradcam={"layer": layer, "explain": cfg.gradcam.explain},
        tta=cfg.tta,
        seconds=round(time.perf_counter() - start, 3),
    )
    output_dir = Path(cfg.paths.output_dir)
    write_tables(output_dir, summary)
    log.info("test_acc=%.4f test_loss=%.4f on %d test images of %s", summary["test_acc"], summary["test_loss"],
             summary["num_images"], path)  # fmt: skip
    return Evaluation(summary, predictions, images, labels, classifier, output_dir, datamodule, ood, ood_sets)


def _captions(evaluation: Evaluation, indices: Tensor, targets: Sequence[int], explain: str) -> list[str]:
    """Each overlay's caption: true and predicted class, confidence, and the class its map explains."""
    classes, predictions, explained = evaluation.summary["classes"], evaluation.predictions, EXPLAINED_TEXT[explain]
    true, predicted = evaluation.labels[indices].tolist(), predictions.predicted[indices].tolist()
    confidence = predictions.confidence[indices].tolist()
    return [
        f"true: {classes[t]}\npredicted: {classes[p]} ({c:.0%})\nexplains: {classes[target]} ({explained})"
        for t, p, c, target in zip(true, predicted, confidence, targets)
    ]


def gallery_sections(evaluation: Evaluation, cfg: DictConfig, correct: bool) -> list[tuple[str, list[Path]]]:
    """correct.png or wrong.png (most confident first), and Grad-CAM overlays of the first `gradcam.count` of them."""
    summary, predictions, labels = evaluation.summary, evaluation.predictions, evaluation.labels
    name, heading = ("correct", "Correctly classified") if correct else ("wrong", "Mistakes")
    order = ranked(predictions, labels, correct)
    sections: list[tuple[str, list[Path]]] = []
    if cfg.gallery.size > 0:  # drawn even when empty: the figure then says there is nothing to show
        shown = order[: cfg.gallery.size]
        title = f"{heading}: the {len(shown)} most confident of {len(order):,}" if len(order) else f"{heading}: none"
        gallery = plot_gallery(
            np.ascontiguousarray(evaluation.images[shown].numpy()), labels[shown].tolist(),
            predictions.predicted[shown].tolist(), predictions.confidence[shown].tolist(), summary["classes"],
            title, evaluation.output_dir / f"{name}.png",
        )  # fmt: skip
        sections.append((f"{heading}, most confident first", [gallery]))
    explained = order[: cfg.gradcam.count]
    if len(explained):
        explain, layer = summary["gradcam"]["explain"], summary["gradcam"]["layer"]
        targets = (predictions.predicted if explain == "predicted" else labels)[explained].tolist()
        cams = gradcam_overlays(
            evaluation.model.cpu(),  # a few images: the CPU is quick enough, wherever predicting ran
            layer, evaluation.images[explained].contiguous(), evaluation.normalize, targets,
            _captions(evaluation, explained, targets, explain), evaluation.output_dir / "gradcam", name,
            explained=explain,
        )  # fmt: skip
        cam_heading = f"Grad-CAM: {heading.lower()} ({EXPLAINED_TEXT[explain]}, layer {layer})"
        sections.append((cam_heading, [c.path for c in cams]))
    return sections


def write_outputs(evaluation: Evaluation, cfg: DictConfig) -> Path:
    """The figures, Grad-CAM overlays and report.html; returns the report's path."""
    out, summary = evaluation.output_dir, evaluation.summary
    confusion = plot_confusion_matrix(np.array(summary["confusion"]), summary["classes"], out / "confusion_matrix.png")
    sections: list[tuple[str, list[SectionItem]]] = [("Confusion matrix", [confusion])]
    sections += gallery_sections(evaluation, cfg, correct=True)
    sections += gallery_sections(evaluation, cfg, correct=False)
    history = training_history(evaluation.checkpoint_path)
    if history:
        sections.append(("Training curves", [plot_curves(history, out / "curves.png")]))
    if evaluation.ood is not None:
        sections += ood_sections(evaluation, cfg)
    return write_report(out, summary, sections)


def ood_sections(evaluation: Evaluation, cfg: DictConfig) -> list[tuple[str, list[SectionItem]]]:
    """OOD detection on the run's own split: detectors fitted on (a subset of) its training split, thresholded on
    its validation split, measured on the test set against the loaded OOD sets."""
    datamodule = evaluation.datamodule
    arrays = datamodule.arrays
    fit_idx = datamodule.train_idx[fit_subset(datamodule.train_idx, cfg.ood.fit_images, cfg.seed)]
    subject = f"{evaluation.summary.get('experiment') or 'model'} ({evaluation.checkpoint_path})"
    return run_ood(
        evaluation.classifier, fit_images=arrays.train_images[fit_idx], fit_labels=arrays.train_labels[fit_idx],
        val_images=arrays.train_images[datamodule.val_idx], id_images=evaluation.images,
        ood_sets=evaluation.ood_sets, settings=evaluation.ood, output_dir=evaluation.output_dir, subject=subject,
        batch_size=cfg.batch_size, progress=cfg.progress, gallery_size=cfg.ood.gallery_size, seed=cfg.seed,
        val_trained_on=getattr(datamodule, "val_trained_on", False),
    )  # fmt: skip


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate one checkpoint on the test set; write metrics, figures and report.html; return the metrics."""
    start = time.perf_counter()
    evaluation = run_evaluation(cfg)
    report = write_outputs(evaluation, cfg)
    log.info("report: %s (%.1f s in all)", report, time.perf_counter() - start)
    return evaluation.summary
