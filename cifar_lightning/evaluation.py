"""The evaluation job behind evaluate.py: load a train.py checkpoint, predict and measure the CIFAR-10 test set,
and write the metrics, figures, Grad-CAM overlays, OOD detection and a one-page report."""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor
from torchmetrics import classification as metrics

from cifar_lightning.checkpoints import chosen_checkpoint
from cifar_lightning.config import check
from cifar_lightning.config.evaluate import EvaluateSettings
from cifar_lightning.data import CIFAR10DataModule
from cifar_lightning.figures import plot_confusion_matrix, plot_curves, plot_gallery
from cifar_lightning.gradcam import EXPLAINED_TEXT, configured_layer, gradcam_overlays
from cifar_lightning.held_out import held_out_split
from cifar_lightning.inference import Classifier, Predictions, pick_device
from cifar_lightning.losses import loss_name
from cifar_lightning.ood.detection import OODSettings, fit_subset
from cifar_lightning.ood.job import check_model_layers, load_ood_sets, ood_settings, run_ood
from cifar_lightning.ood.sets import OODSet
from cifar_lightning.report import SectionItem, write_report
from cifar_lightning.runs import RunDir
from cifar_lightning.runs import history as run_history

log = logging.getLogger(__name__)
Sections = list[tuple[str, list[SectionItem]]]


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


def build_datamodule(data: DictConfig, stats: dict[str, list[float]], run_data: Any = None) -> CIFAR10DataModule:
    """The test data, normalized with the checkpoint's statistics and split as the run was (run_data: its data
    config; datamodule.val_trained_on: whether the held-out images were trained on, see held_out_split)."""
    split, val_trained_on = held_out_split(run_data)
    if val_trained_on:
        note = f"OOD thresholds are set on {100 * split['val_fraction']:.0f}% of its training images"
        log.warning("the run held out no validation split (data.val_fraction=0): %s, which it was trained on", note)
    datamodule = instantiate(data, **split)
    datamodule.prepare_data()  # missing or corrupt data fails here, naming the file and the fix
    datamodule.load_state_dict(stats)
    datamodule.setup("test")
    datamodule.val_trained_on = val_trained_on
    return datamodule


def measure(predictions: Predictions, labels: Tensor) -> dict[str, Any]:
    """Accuracy, mean cross-entropy, per-class accuracy/precision/recall/F1 and the confusion matrix (rows = true)."""
    logits, classes = predictions.logits, predictions.logits.shape[1]

    def per_class(metric: type) -> list[float]:
        return metric(classes, average=None)(logits, labels).tolist()

    return {
        "test_acc": metrics.MulticlassAccuracy(classes, average="micro")(logits, labels).item(),
        "test_loss": F.cross_entropy(logits.double(), labels).item(),
        "per_class_acc": per_class(metrics.MulticlassAccuracy),
        "precision": per_class(metrics.MulticlassPrecision),
        "recall": per_class(metrics.MulticlassRecall),
        "f1": per_class(metrics.MulticlassF1Score),
        "confusion": metrics.MulticlassConfusionMatrix(classes)(logits, labels).tolist(),
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
    """Load, predict and measure; writes evaluation.json and confusion_matrix.csv (no figures). Every input
    (settings, checkpoint, CIFAR-10, the OOD sets) is checked and loaded before the first file is written."""
    start = time.perf_counter()
    check(cfg, "evaluate", "nothing was evaluated", root=EvaluateSettings)
    ood = ood_settings(cfg.ood) if cfg.ood.enabled else None
    L.seed_everything(cfg.seed, verbose=False)
    path = chosen_checkpoint(cfg.ckpt, cfg.run_dir, "evaluate.py")
    classifier = Classifier.load(path, pick_device(cfg.device), cfg.tta)
    layer = configured_layer(classifier.model, cfg.gradcam.layer, "evaluate", "nothing was evaluated")
    if ood is not None:
        check_model_layers(classifier.model, ood)  # a layer the model lacks fails before any work
    datamodule = build_datamodule(cfg.data, classifier.normalization, classifier.config.get("data"))
    ood_sets = load_ood_sets(cfg) if ood is not None else []  # every input is there before any output is written
    images, labels = datamodule.arrays.test_images, datamodule.arrays.test_labels

    predictions = classifier.predict(images, cfg.batch_size, cfg.progress)
    summary, config, device = measure(predictions, labels), classifier.config, classifier.device
    summary.update(
        classes=list(datamodule.classes),
        checkpoint=str(path),
        checkpoint_epoch=classifier.checkpoint_epoch,
        experiment=config.get("experiment_name"),
        loss=loss_name(config.get("loss")),
        model=config["model"],
        normalization=classifier.normalization,
        device=str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        gradcam={"layer": layer, "explain": cfg.gradcam.explain},
        tta=cfg.tta,
        seconds=round(time.perf_counter() - start, 3),
    )
    output_dir = Path(cfg.paths.output_dir)
    write_tables(output_dir, summary)
    numbers = (summary["test_acc"], summary["test_loss"], summary["num_images"])
    log.info("test_acc=%.4f test_loss=%.4f on %d test images of %s", *numbers, path)
    return Evaluation(summary, predictions, images, labels, classifier, output_dir, datamodule, ood, ood_sets)


def gallery_sections(evaluation: Evaluation, cfg: DictConfig, correct: bool) -> Sections:
    """correct.png or wrong.png (most confident first), and captioned Grad-CAM overlays of the first of them."""
    summary, predictions, labels = evaluation.summary, evaluation.predictions, evaluation.labels
    out, classes = evaluation.output_dir, summary["classes"]
    name, heading = ("correct", "Correctly classified") if correct else ("wrong", "Mistakes")

    def shown_as(indices: Tensor) -> tuple[list, list, list]:
        return tuple(t[indices].tolist() for t in (labels, predictions.predicted, predictions.confidence))

    order = ranked(predictions, labels, correct)
    sections: Sections = []
    if cfg.gallery.size > 0:  # drawn even when empty: the figure then says there is nothing to show
        shown = order[: cfg.gallery.size]
        title = f"{heading}: the {len(shown)} most confident of {len(order):,}" if len(order) else f"{heading}: none"
        images = np.ascontiguousarray(evaluation.images[shown].numpy())
        gallery = plot_gallery(images, *shown_as(shown), classes, title, out / f"{name}.png")
        sections.append((f"{heading}, most confident first", [gallery]))
    explained = order[: cfg.gradcam.count]
    if len(explained):
        explain, layer = summary["gradcam"]["explain"], summary["gradcam"]["layer"]
        targets = (predictions.predicted if explain == "predicted" else labels)[explained].tolist()
        captions = [
            f"true: {classes[t]}\npredicted: {classes[p]} ({c:.0%})\nexplains: {classes[e]} ({EXPLAINED_TEXT[explain]})"
            for t, p, c, e in zip(*shown_as(explained), targets)
        ]
        model = evaluation.classifier.model.cpu()  # a few images: the CPU is quick enough, wherever predicting ran
        images, normalize = evaluation.images[explained].contiguous(), evaluation.classifier.normalize
        cams = gradcam_overlays(model, layer, images, normalize, targets, captions, out / "gradcam", name, explain)
        sections.append(
            (f"Grad-CAM: {heading.lower()} ({EXPLAINED_TEXT[explain]}, layer {layer})", [c.path for c in cams])
        )
    return sections


def write_outputs(evaluation: Evaluation, cfg: DictConfig) -> Path:
    """The figures, Grad-CAM overlays, OOD detection and report.html; returns the report's path."""
    out, summary = evaluation.output_dir, evaluation.summary
    confusion = plot_confusion_matrix(np.array(summary["confusion"]), summary["classes"], out / "confusion_matrix.png")
    sections: Sections = [("Confusion matrix", [confusion])]
    sections += gallery_sections(evaluation, cfg, correct=True) + gallery_sections(evaluation, cfg, correct=False)
    history = training_history(evaluation.classifier.checkpoint_path)
    if history:
        sections.append(("Training curves", [plot_curves(history, out / "curves.png")]))
    if evaluation.ood is not None:
        sections += ood_sections(evaluation, cfg)
    return write_report(out, summary, sections)


def ood_sections(evaluation: Evaluation, cfg: DictConfig) -> Sections:
    """OOD detection fitted on the run's training split, thresholded on its validation split, tested on the rest."""
    datamodule, arrays = evaluation.datamodule, evaluation.datamodule.arrays
    fit_idx = datamodule.train_idx[fit_subset(datamodule.train_idx, cfg.ood.fit_images, cfg.seed)]
    subject = f"{evaluation.summary.get('experiment') or 'model'} ({evaluation.classifier.checkpoint_path})"
    return run_ood(
        evaluation.classifier,
        fit_images=arrays.train_images[fit_idx],
        fit_labels=arrays.train_labels[fit_idx],
        val_images=arrays.train_images[datamodule.val_idx],
        id_images=evaluation.images,
        ood_sets=evaluation.ood_sets,
        settings=evaluation.ood,
        output_dir=evaluation.output_dir,
        subject=subject,
        batch_size=cfg.batch_size,
        progress=cfg.progress,
        gallery_size=cfg.ood.gallery_size,
        seed=cfg.seed,
        val_trained_on=getattr(datamodule, "val_trained_on", False),
    )


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate one checkpoint on the test set; write metrics, figures and report.html; return the metrics."""
    start = time.perf_counter()
    evaluation = run_evaluation(cfg)
    report = write_outputs(evaluation, cfg)
    log.info("report: %s (%.1f s in all)", report, time.perf_counter() - start)
    return evaluation.summary
