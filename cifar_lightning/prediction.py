"""The prediction job behind predict.py: classify image files with one train.py checkpoint, with an
out-of-distribution score and verdict per file when a detector is at hand.

Every file is read by images.load_image (any size, mode and format -> uint8 RGB 32 x 32, one documented
policy). Files are decoded a batch at a time by a thread pool, stacked, and predicted as one uint8 batch by
Classifier.predict; decoding the next batch overlaps predicting this one. A file that cannot be read is listed
with its reason and the others go on. Inputs, checkpoint and detector are all checked before the first output
is written, so a bad command leaves nothing but Hydra's own files.

Outputs (schema_version 1), in the run directory, one entry per input file in input order:

predictions.csv, columns:
    file            the path as found from `inputs` (relative when `inputs` was relative)
    status          ok | error
    class_1 .. class_k, probability_1 .. probability_k
                    the top_k classes, most probable first, and their softmax probabilities (6 decimals);
                    empty for an error
    ood_score       the detector's outlier score (higher = more unlike CIFAR-10); empty without a detector
                    or for an error
    ood             true (score > the detector's threshold: out of distribution) | false | empty, as ood_score
    error           why the file could not be read (one sentence); empty when status is ok

predictions.json:
    schema_version  1
    checkpoint, checkpoint_epoch (from 1), classes (the class names, in label order), tta, top_k, device
    inputs          the inputs as given
    ood             null (no detector), or {detector, threshold, source (its ood_detectors.pt or "fitted now")}
    counts          {files, predicted, errors, ood (files flagged as OOD; null without a detector)}
    seconds         reading and predicting the files (not loading the model or fitting a detector)
    images_per_second  predicted images / seconds
    predictions     [{file, status, top_k: [{class, index, probability}, ...], ood_score, ood, error}, ...]
                    (probabilities at full precision; top_k is [] and ood_score and ood are null for an error)
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from torch import Tensor

from cifar_lightning.checkpoints import chosen_checkpoint
from cifar_lightning.data import CIFAR10_CLASSES
from cifar_lightning.errors import ConfigError, DataError, invalid_setting, is_int
from cifar_lightning.images import ImageError, load_image
from cifar_lightning.inference import Classifier, Predictions
from cifar_lightning.ood.saved import NAMES, OODDetector, find_detectors, fit_detector, load_detector

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
CSV_DECIMALS = 6
GLOB_CHARACTERS = "*?["
SHOWN_ERRORS = 5  # files not read that the printed summary names


@dataclass
class FilePrediction:
    """One input file's outcome: its top-k classes (class name, class index, probability) or the reason it
    could not be read, and its OOD score and verdict when a detector was used."""

    file: str
    top_k: list[tuple[str, int, float]] = field(default_factory=list)
    ood_score: float | None = None
    ood: bool | None = None
    error: str | None = None

    @property
    def status(self) -> str:
        return "error" if self.error is not None else "ok"

    def as_json(self) -> dict[str, Any]:
        top = [{"class": name, "index": index, "probability": p} for name, index, p in self.top_k]
        return {"file": self.file, "status": self.status, "top_k": top, "ood_score": self.ood_score, "ood": self.ood,
                "error": self.error}  # fmt: skip


def _invalid(key: str, problem: str, example: str) -> ConfigError:
    return invalid_setting("predict", "nothing was predicted", key, problem, example)


def check_settings(cfg: DictConfig, classes: int = len(CIFAR10_CLASSES)) -> None:
    """Refuse a bad setting before anything is loaded or written (device and tta: Classifier.load checks them)."""
    if not is_int(cfg.top_k, 1) or cfg.top_k > classes:
        raise _invalid("top_k", f"must be an integer from 1 to {classes} (the classes), got {cfg.top_k!r}", "top_k=3")
    if not is_int(cfg.batch_size, 1):
        raise _invalid("batch_size", f"must be a positive integer, got {cfg.batch_size!r}", "batch_size=256")
    if not is_int(cfg.workers, 1):
        raise _invalid("workers", f"must be a positive integer (1 = no threads), got {cfg.workers!r}", "workers=4")
    if not is_int(cfg.max_pixels, 1):
        raise _invalid("max_pixels", f"must be a positive integer, got {cfg.max_pixels!r}", "max_pixels=40000000")
    if not is_int(cfg.seed, 0):
        raise _invalid("seed", f"must be a non-negative integer, got {cfg.seed!r}", "seed=0")
    for key in ("progress", "ood.enabled", "ood.fit"):
        value = cfg.progress if key == "progress" else cfg.ood[key.split(".")[1]]
        if not isinstance(value, bool):
            raise _invalid(key, f"must be true or false, got {value!r}", f"{key}=true")
    if cfg.ood.fit_images is not None and not is_int(cfg.ood.fit_images, 1):
        raise _invalid("ood.fit_images", f"must be a positive integer or null, got {cfg.ood.fit_images!r}",
                       "ood.fit_images=5000")  # fmt: skip
    if cfg.ood.detector is not None and cfg.ood.detector not in NAMES:
        raise _invalid("ood.detector", f"must be one of {', '.join(NAMES)} or null (knn), got {cfg.ood.detector!r}",
                       "ood.detector=knn")  # fmt: skip
    if cfg.ood.enabled and cfg.ood.fit and cfg.ood.file is not None:
        raise _invalid("ood.file", "ood.fit=true fits a detector now, so a saved ood.file would go unused; give one "
                       "of them", "ood.fit=true ood.file=null")  # fmt: skip


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def folder_files(folder: Path) -> list[Path]:
    """Every file in a folder and its subfolders, sorted by path; hidden files and folders are skipped."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and not _is_hidden(p, folder))


def _files(count: int) -> str:
    return "no file" if count == 0 else f"{count} file" if count == 1 else f"{count} files"


def gather_inputs(inputs: Any) -> list[Path]:
    """The files named by `inputs`: a file, a folder (recursive, sorted), a glob pattern (sorted; ** spans
    folders), or a list of these, in that order, each file once.

    Raises ConfigError when inputs is missing, DataError for a path that does not exist or when no file is
    found at all.
    """
    if isinstance(inputs, (list, ListConfig)):
        items = [str(item) for item in inputs]
    else:
        items = [] if inputs is None else [str(inputs)]
    if not items:
        raise ConfigError(
            "predict.py needs files to classify, but `inputs` was not given. Fix: pass a file, a folder or a glob "
            "pattern, e.g. python predict.py ckpt=<checkpoint> inputs=photos/ (or inputs='photos/*.jpg', "
            "inputs=[cat.jpg,dog.png])."
        )
    files: dict[Path, Path] = {}  # resolved -> as found, in input order
    found = []
    for item in items:
        text = os.path.expanduser(item)
        if any(char in text for char in GLOB_CHARACTERS):
            matches = [Path(match) for match in sorted(glob.glob(text, recursive=True))]
            paths = [f for m in matches for f in (folder_files(m) if m.is_dir() else [m])]
            found.append(f"the pattern {item!r} matches {_files(len(paths))}")
        elif Path(text).is_dir():
            paths = folder_files(Path(text))
            found.append(f"the folder {item} holds {_files(len(paths))} (hidden files are skipped)")
        elif Path(text).exists():
            paths = [Path(text)]
        else:
            raise DataError(
                f"the input {item} does not exist (no such file or folder, and it is not a glob pattern). Fix the "
                f"path in inputs=..., or quote a pattern for the shell: inputs='photos/*.jpg'; nothing was predicted."
            )
        for path in paths:
            files.setdefault(path.resolve(), path)
    if not files:
        raise DataError(
            f"there are no files to predict: {'; '.join(found)}. Fix: point inputs at image files, a folder that "
            f"holds some, or a pattern that matches them; nothing was predicted."
        )
    return list(files.values())


def resolve_detector(cfg: DictConfig, classifier: Classifier) -> OODDetector | None:
    """The OOD detector to score files with: fitted now (ood.fit), read from ood.file, or the newest one saved by
    evaluate.py for this checkpoint; None when OOD is off or none was saved (with a warning)."""
    ood = cfg.ood
    if not ood.enabled:
        return None
    if ood.fit:
        log.info("fitting an OOD detector on the run's training split in %s", cfg.data.data_dir)
        detector = fit_detector(classifier, cfg.data.data_dir, ood.detector, download=cfg.data.download,
                                fit_images=ood.fit_images, seed=cfg.seed)  # fmt: skip
        log.info("fitted the %s OOD detector (threshold %.4g)", detector.name, detector.threshold)
        return detector
    path = Path(str(ood.file)).expanduser() if ood.file is not None else find_detectors(classifier, cfg.paths.log_dir)
    if path is None:
        if ood.detector is not None:
            raise ConfigError(
                f"ood.detector={ood.detector} was asked for, but evaluate.py has saved no OOD detectors for "
                f"{classifier.checkpoint_path} under {cfg.paths.log_dir}. Fix: run python evaluate.py "
                f"ckpt={classifier.checkpoint_path} first, name a saved file with ood.file=<ood_detectors.pt>, fit "
                f"one now with ood.fit=true, or turn OOD scores off with ood.enabled=false; nothing was predicted."
            )
        log.warning(
            "no OOD detector saved for %s under %s, so predictions carry no OOD score: run python evaluate.py "
            "ckpt=%s once (it saves them), or pass ood.fit=true to fit one now, or ood.enabled=false to silence this",
            classifier.checkpoint_path, cfg.paths.log_dir, classifier.checkpoint_path,
        )  # fmt: skip
        return None
    detector = load_detector(path, classifier, ood.detector)
    log.info("OOD detector %s (threshold %.4g) from %s", detector.name, detector.threshold, path)
    return detector


def _read(path: Path, max_pixels: int) -> Tensor | ImageError:
    """The file's model input, or the ImageError saying why it cannot be read (returned, so the others go on)."""
    try:
        return load_image(path, max_pixels)
    except ImageError as exc:
        return exc


def _decoded_batches(
    files: Sequence[Path], batch_size: int, workers: int, max_pixels: int
) -> Iterator[tuple[Sequence[Path], list[Tensor | ImageError]]]:
    """The files a batch at a time with their decoded images (or errors); the next batch decodes in the
    background while the caller predicts this one."""
    chunks = [files[start : start + batch_size] for start in range(0, len(files), batch_size)]
    with ThreadPoolExecutor(max_workers=workers) as pool:

        def submit(chunk: Sequence[Path]) -> list[Future]:
            return [pool.submit(_read, path, max_pixels) for path in chunk]

        pending = submit(chunks[0])
        for index, chunk in enumerate(chunks):
            decoded = [future.result() for future in pending]
            if index + 1 < len(chunks):
                pending = submit(chunks[index + 1])
            yield chunk, decoded


def _predict_batch(
    classifier: Classifier, images: Tensor, detector: OODDetector | None
) -> tuple[Predictions, Tensor | None, Tensor | None]:
    """Predictions, OOD scores and verdicts of one uint8 batch. Without TTA, the detector's forward pass gives the
    logits too (one pass instead of two)."""
    if detector is None:
        return classifier.predict(images, batch_size=len(images)), None, None
    features = classifier.features(images, layers=list(detector.layers), batch_size=len(images))
    if classifier.tta == 0:
        predictions = Predictions(features.logits, features.logits.softmax(dim=1))
    else:
        predictions = classifier.predict(images, batch_size=len(images))
    scores = detector.score(features)
    return predictions, scores, detector.is_ood(scores)


def predict_files(
    classifier: Classifier,
    files: Sequence[Path],
    detector: OODDetector | None = None,
    top_k: int = 3,
    batch_size: int = 256,
    workers: int = 4,
    max_pixels: int = 40_000_000,
    progress: bool = False,
) -> list[FilePrediction]:
    """Each file's top-k classes (and OOD score and verdict), or why it could not be read, in input order."""
    results: list[FilePrediction] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("files"),
               TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("Predicting", total=len(files))
        for chunk, decoded in _decoded_batches(files, batch_size, workers, max_pixels):
            good = [i for i, item in enumerate(decoded) if isinstance(item, Tensor)]
            batch = [FilePrediction(str(path)) for path in chunk]
            for i, item in enumerate(decoded):
                if isinstance(item, ImageError):
                    batch[i].error = str(item)
            if good:
                images = torch.stack([decoded[i] for i in good])
                predictions, scores, flags = _predict_batch(classifier, images, detector)
                probabilities, indices = predictions.top_k(top_k)
                for row, i in enumerate(good):
                    ranked = zip(indices[row].tolist(), probabilities[row].tolist())
                    batch[i].top_k = [(classifier.classes[c], c, p) for c, p in ranked]
                    if scores is not None and flags is not None:
                        batch[i].ood_score, batch[i].ood = float(scores[row]), bool(flags[row])
            results += batch
            bar.advance(task, len(chunk))
    return results


def _csv_row(result: FilePrediction, top_k: int) -> list[Any]:
    ranked: list[Any] = []
    for rank in range(top_k):
        if rank < len(result.top_k):
            name, _, probability = result.top_k[rank]
            ranked += [name, f"{probability:.{CSV_DECIMALS}f}"]
        else:
            ranked += ["", ""]
    ood = "" if result.ood is None else str(result.ood).lower()
    score = "" if result.ood_score is None else repr(result.ood_score)
    return [result.file, result.status, *ranked, score, ood, result.error or ""]


def csv_header(top_k: int) -> list[str]:
    ranked = [name for rank in range(1, top_k + 1) for name in (f"class_{rank}", f"probability_{rank}")]
    return ["file", "status", *ranked, "ood_score", "ood", "error"]


def write_predictions(output_dir: Path, results: Sequence[FilePrediction], summary: dict[str, Any]) -> list[Path]:
    """predictions.csv and predictions.json (the schemas are in this module's docstring)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = output_dir / "predictions.csv", output_dir / "predictions.json"
    with csv_path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(csv_header(summary["top_k"]))
        writer.writerows(_csv_row(result, summary["top_k"]) for result in results)
    record = {**summary, "predictions": [result.as_json() for result in results]}
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    return [csv_path, json_path]


def summary_table(results: Sequence[FilePrediction], classes: Sequence[str], detector: OODDetector | None) -> Table:
    """Files per predicted class, their mean top probability and (with a detector) how many were flagged OOD."""
    predicted = [r for r in results if r.error is None]
    counts = Counter(r.top_k[0][1] for r in predicted)
    table = Table(title=f"{len(predicted)} of {len(results)} files predicted")
    table.add_column("predicted class")
    table.add_column("files", justify="right")
    table.add_column("mean probability", justify="right")
    if detector is not None:
        table.add_column(f"OOD ({detector.name})", justify="right")
    for index, name in enumerate(classes):
        if counts[index]:
            mine = [r for r in predicted if r.top_k[0][1] == index]
            row = [name, str(counts[index]), f"{sum(r.top_k[0][2] for r in mine) / len(mine):.3f}"]
            table.add_row(*row, *([str(sum(bool(r.ood) for r in mine))] if detector is not None else []))
    errors = len(results) - len(predicted)
    if errors:
        table.add_row("(not read)", str(errors), "", *([""] if detector is not None else []))
    return table


def _detector_record(detector: OODDetector | None) -> dict[str, Any] | None:
    if detector is None:
        return None
    return {"detector": detector.name, "threshold": detector.threshold, "source": detector.source}


def run_prediction(cfg: DictConfig) -> dict[str, Any]:
    """Check everything, predict every input file, write predictions.csv and predictions.json, print a summary;
    returns predictions.json's record without the per-file list."""
    check_settings(cfg)
    path = chosen_checkpoint(cfg.get("ckpt"), cfg.get("run_dir"), "predict.py", " inputs=<files>")
    files = gather_inputs(cfg.inputs)
    classifier = Classifier.load(path, device=cfg.device, tta=cfg.tta)
    detector = resolve_detector(cfg, classifier)

    start = time.perf_counter()
    results = predict_files(classifier, files, detector, cfg.top_k, cfg.batch_size, cfg.workers, cfg.max_pixels,
                            cfg.progress)  # fmt: skip
    seconds = time.perf_counter() - start
    predicted = sum(r.error is None for r in results)
    inputs = cfg.inputs
    summary = {
        "schema_version": SCHEMA_VERSION,
        "checkpoint": str(path),
        "checkpoint_epoch": classifier.checkpoint_epoch,
        "classes": list(classifier.classes),
        "tta": cfg.tta,
        "top_k": cfg.top_k,
        "device": str(classifier.device),
        "inputs": [str(i) for i in inputs] if isinstance(inputs, (list, ListConfig)) else str(inputs),
        "ood": _detector_record(detector),
        "counts": {
            "files": len(results),
            "predicted": predicted,
            "errors": len(results) - predicted,
            "ood": None if detector is None else sum(bool(r.ood) for r in results),
        },
        "seconds": round(seconds, 3),
        "images_per_second": round(predicted / seconds, 1) if seconds > 0 else None,
    }
    written = write_predictions(Path(cfg.paths.output_dir), results, summary)

    console = Console(soft_wrap=True)
    console.print(summary_table(results, classifier.classes, detector))
    unread = [r for r in results if r.error is not None]
    for result in unread[:SHOWN_ERRORS]:
        console.print(f"not read: {result.file}: {result.error}", markup=False)
    if len(unread) > SHOWN_ERRORS:
        console.print(f"... and {len(unread) - SHOWN_ERRORS} more files not read (see predictions.csv)")
    console.print(f"{predicted} images predicted in {seconds:.2f} s ({summary['images_per_second']} images/s); "
                  f"wrote {written[0]} and {written[1].name}", markup=False)  # fmt: skip
    log.info("%d files: %d predicted, %d not read, %.1f images/s; %s", len(results), predicted,
             len(results) - predicted, predicted / seconds if seconds > 0 else 0.0, written[0].parent)  # fmt: skip
    return summary
