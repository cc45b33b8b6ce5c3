"""The evaluation job behind evaluate.py: load a train.py checkpoint, predict and measure the CIFAR-10 test set, fit
and measure temperature scaling, and write the metrics, figures, Grad-CAM overlays, OOD detection, corruption
robustness (robustness=...) and a one-page report."""

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

from cifar_lightning.allocator import keep_heap
from cifar_lightning.calibration import (
    CALIBRATION_FILE,
    ECE_BINS,
    calibrated_probabilities,
    calibration_metrics,
    fit_temperature,
    save_calibration,
)
from cifar_lightning.checkpoints import chosen_checkpoint
from cifar_lightning.config import check
from cifar_lightning.config.evaluate import EvaluateSettings
from cifar_lightning.config.ood import MEAN_ACTIVATION
from cifar_lightning.data import CIFAR10DataModule
from cifar_lightning.figures import plot_confusion_matrix, plot_curves, plot_gallery, plot_reliability
from cifar_lightning.gradcam import EXPLAINED_TEXT, configured_layer, gradcam_overlays
from cifar_lightning.held_out import held_out_split
from cifar_lightning.inference import Classifier, Features, Predictions, pick_device
from cifar_lightning.losses import loss_name
from cifar_lightning.ood.detection import ID_TEST, VALIDATION, OODSettings, fit_subset, measured_layers
from cifar_lightning.ood.job import check_model_layers, load_ood_sets, ood_settings, run_ood
from cifar_lightning.ood.saved import DETECTORS_FILE, load_detector, read_detectors
from cifar_lightning.ood.sets import OODSet
from cifar_lightning.report import SectionItem, Table, write_report
from cifar_lightning.robustness import OfficialC, load_official_c, run_robustness
from cifar_lightning.runs import RunDir
from cifar_lightning.runs import history as run_history
from cifar_lightning.tables import markdown_table

log = logging.getLogger(__name__)
Sections = list[tuple[str, list[SectionItem]]]


class Stages:
    """Seconds per stage of one evaluation, in order (evaluation.json's stage_seconds, and the last log line): where
    the time goes, so a slow default shows which part to look at."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.start = self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self.last, 3)
        self.last = now

    def line(self) -> str:
        parts = ", ".join(f"{name} {seconds:.1f}" for name, seconds in self.seconds.items())
        return f"{time.perf_counter() - self.start:.1f} s in all: {parts}"


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
    corruptions: str | OfficialC = "none"  # robustness=...: "generated", the official files (loaded early), or "none"
    stages: Stages = field(default_factory=Stages)
    features: dict[str, Features] = field(default_factory=dict)  # shared_features': reused by the OOD detection


def shared_features(
    classifier: Classifier, datamodule: CIFAR10DataModule, images: Tensor, ood: OODSettings | None, cfg: DictConfig
) -> dict[str, Features]:
    """With OOD detection on and no test-time augmentation, one pass per in-distribution set gives both the logits
    (predictions, calibration) and the OOD features: the validation split's and the test set's, by detect_ood's
    names. {} otherwise (TTA logits are not the features' logits)."""
    if ood is None or cfg.tta != 0:
        return {}
    layers, val_images = measured_layers(classifier.model, ood), datamodule.arrays.train_images[datamodule.val_idx]
    sets = {VALIDATION: val_images, ID_TEST: images}
    progress, size = cfg.progress, cfg.batch_size
    return {name: classifier.features(part, layers, size, progress, f"Features: {name}") for name, part in sets.items()}


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


def calibrate(
    classifier: Classifier,
    datamodule: CIFAR10DataModule,
    logits: Tensor,
    labels: Tensor,
    batch_size: int,
    held_out_logits: Tensor | None = None,
):
    """Temperature scaling (Guo et al. 2017) fitted on the run's held-out images (its validation split, or the
    held-out training slice of a run without one; their logits predicted here unless given), with the test set's
    ECE, MCE, NLL and Brier before and after."""
    held_labels = datamodule.arrays.train_labels[datamodule.val_idx]
    if held_out_logits is None:
        held_out_logits = classifier.predict(datamodule.arrays.train_images[datamodule.val_idx], batch_size).logits
    temperature = fit_temperature(held_out_logits, held_labels)
    which = "held-out training images, trained on: the run held out no validation split"
    fitted_on = f"{len(held_labels):,} " + (
        which if datamodule.val_trained_on else "images of the run's validation split"
    )
    before, after = calibration_metrics(logits, labels), calibration_metrics(logits, labels, temperature)
    return {"temperature": temperature, "fitted_on": fitted_on, "bins": ECE_BINS, "before": before, "after": after}


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


def run_evaluation(cfg: DictConfig, stages: Stages | None = None) -> Evaluation:
    """Load, predict and measure; writes evaluation.json and confusion_matrix.csv (no figures). Every input
    (settings, checkpoint, CIFAR-10, the OOD sets) is checked and loaded before the first file is written."""
    start, stages = time.perf_counter(), stages or Stages()
    check(cfg, "evaluate", "nothing was evaluated", root=EvaluateSettings)
    keep_heap(cfg.keep_heap)
    ood = ood_settings(cfg.ood) if cfg.ood.enabled else None
    L.seed_everything(cfg.seed, verbose=False)
    path = chosen_checkpoint(cfg.ckpt, cfg.run_dir, "evaluate.py")
    classifier = Classifier.load(path, pick_device(cfg.device), cfg.tta)
    layer = configured_layer(classifier.model, cfg.gradcam.layer, "evaluate", "nothing was evaluated")
    if ood is not None:
        check_model_layers(classifier.model, ood)  # a layer the model lacks fails before any work
    datamodule = build_datamodule(cfg.data, classifier.normalization, classifier.config.get("data"))
    ood_sets = load_ood_sets(cfg) if ood is not None else []  # every input is there before any output is written
    official = cfg.robustness == "official"
    corruptions = load_official_c(cfg.data.data_dir, cfg.data.download) if official else cfg.robustness
    images, labels = datamodule.arrays.test_images, datamodule.arrays.test_labels
    stages.lap("loading")

    features = shared_features(classifier, datamodule, images, ood, cfg)
    if features:
        predictions = Predictions.of(features[ID_TEST].logits)
    else:
        predictions = classifier.predict(images, cfg.batch_size, cfg.progress)
    stages.lap("predicting")
    held_out_logits = features[VALIDATION].logits if features else None
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
        calibration=calibrate(classifier, datamodule, predictions.logits, labels, cfg.batch_size, held_out_logits),
        seconds=round(time.perf_counter() - start, 3),
    )
    stages.lap("calibration")
    output_dir = Path(cfg.paths.output_dir)
    write_tables(output_dir, summary)
    numbers = (summary["test_acc"], summary["test_loss"], summary["num_images"])
    log.info("test_acc=%.4f test_loss=%.4f on %d test images of %s", *numbers, path)
    parts = summary, predictions, images, labels, classifier, output_dir, datamodule, ood, ood_sets, corruptions
    return Evaluation(*parts, stages=stages, features=features)


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


def calibration_section(evaluation: Evaluation) -> Sections:
    """calibration.json (the temperature predict.py and serve.py apply), calibration.md and the reliability diagram."""
    out, calibration = evaluation.output_dir, evaluation.summary["calibration"]
    temperature, checkpoint = calibration["temperature"], evaluation.classifier.checkpoint_path
    if checkpoint is not None:
        saved = calibration["fitted_on"], calibration["before"], calibration["after"]
        save_calibration(out / CALIBRATION_FILE, temperature, checkpoint, *saved)
    logits, labels = evaluation.predictions.logits, evaluation.labels
    panels = []
    for t in (1.0, temperature):
        confidence, predicted = calibrated_probabilities(logits, t).max(dim=1)
        panels += [confidence.tolist(), (predicted == labels).tolist()]
    title = f"Reliability on the {len(labels):,} test images (T = {temperature:.3g})"
    figure = plot_reliability(*panels, out / "reliability.png", bins=calibration["bins"], title=title)
    rows = [
        [when, *(f"{100 * values[k]:.2f}" for k in ("ece", "mce")), *(f"{values[k]:.4f}" for k in ("nll", "brier"))]
        for when, values in (("raw softmax", calibration["before"]), (f"T = {temperature:.4g}", calibration["after"]))
    ]
    table = Table("Calibration on the test set", ["probabilities", "ECE (%)", "MCE (%)", "NLL", "Brier"], rows)
    note = (
        f"Temperature scaling (Guo et al. 2017): the logits are divided by T = {temperature:.4g}, fitted to the lowest "
        f"NLL on {calibration['fitted_on']}, never on test images; ECE and MCE over {calibration['bins']} equal-width "
        f"confidence bins (torchmetrics). predict.py and serve.py apply this T by default ({CALIBRATION_FILE})."
    )
    markdown = f"# Calibration\n\n{note}\n\n## {table.title}\n\n{markdown_table(table.header, table.rows)}"
    (out / "calibration.md").write_text(markdown)
    return [("Calibration: temperature scaling", [note, figure, table])]


def robustness_detector_names(record: dict, wanted: list[str] | None) -> list[str]:
    """The saved detectors whose false alarms on corrupted images are measured: those asked for, else the default
    (chosen on the validation halves), MSP (the baseline) and the report's mean activation; once each."""
    wanted = [record["default"], "msp", MEAN_ACTIVATION] if wanted is None else wanted
    return [name for name in dict.fromkeys(wanted) if name in record["detectors"]]


def robustness_section(evaluation: Evaluation, cfg: DictConfig) -> Sections:
    """Accuracy and the saved OOD detectors' false alarms on corrupted test images (robustness.json/.md/.png); the
    summary goes into evaluation.json too."""
    out, detectors, saved = evaluation.output_dir, [], evaluation.output_dir / DETECTORS_FILE
    if saved.is_file():  # the detectors evaluate.py just fitted and thresholded
        names = robustness_detector_names(read_detectors(saved), cfg.robustness_detectors)
        detectors = [load_detector(saved, evaluation.classifier, name, from_images=True) for name in names]
    summary, sections = run_robustness(
        evaluation.classifier,
        evaluation.images,
        evaluation.labels,
        source=evaluation.corruptions,
        data_dir=cfg.data.data_dir,
        download=cfg.data.download,
        max_images=cfg.robustness_images,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        progress=cfg.progress,
        detectors=detectors,
        output_dir=out,
    )
    evaluation.summary["robustness"] = summary
    write_tables(out, evaluation.summary)
    return sections


def write_outputs(evaluation: Evaluation, cfg: DictConfig) -> Path:
    """The figures, calibration, Grad-CAM overlays, OOD detection, robustness and report.html; returns the report."""
    out, summary, stages = evaluation.output_dir, evaluation.summary, evaluation.stages
    confusion = plot_confusion_matrix(np.array(summary["confusion"]), summary["classes"], out / "confusion_matrix.png")
    sections: Sections = [("Confusion matrix", [confusion]), *calibration_section(evaluation)]
    sections += gallery_sections(evaluation, cfg, correct=True) + gallery_sections(evaluation, cfg, correct=False)
    history = training_history(evaluation.classifier.checkpoint_path)
    if history:
        sections.append(("Training curves", [plot_curves(history, out / "curves.png")]))
    stages.lap("figures and Grad-CAM")
    if evaluation.ood is not None:
        sections += ood_sections(evaluation, cfg)
        stages.lap("OOD")
    if evaluation.corruptions != "none":
        sections += robustness_section(evaluation, cfg)
        stages.lap("robustness")
    report = write_report(out, summary, sections)
    stages.lap("report")
    return report


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
        known=evaluation.features,
    )


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate one checkpoint on the test set; write metrics, figures and report.html; return the metrics."""
    evaluation = run_evaluation(cfg)
    report = write_outputs(evaluation, cfg)
    evaluation.summary["stage_seconds"] = evaluation.stages.seconds
    write_tables(evaluation.output_dir, evaluation.summary)
    log.info("report: %s", report)
    log.info("evaluate.py took %s", evaluation.stages.line())
    return evaluation.summary
