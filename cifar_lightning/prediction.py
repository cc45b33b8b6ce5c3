"""The prediction job behind predict.py: classify image files with one train.py checkpoint, with an
out-of-distribution score and verdict per file when a detector is at hand (ood/runtime.py), and probabilities
calibrated by the temperature evaluate.py fitted for the checkpoint when one was saved (calibration.py).

Files are read by images.load_image, a batch at a time by a thread pool, while the previous batch is predicted;
a file that cannot be read is listed with its reason and the others go on. Settings, inputs, checkpoint,
detector and calibration file are all checked before the first output is written.

Outputs (schema_version 2), in the run directory, one entry per input file in input order:

predictions.csv: file (as found from `inputs`), status (ok | error), class_1, probability_1 .. class_k,
    probability_k (the top_k classes, most probable first, 6 decimals; calibrated when predictions.json says
    so), ood_score (the detector's outlier score, higher = more unlike CIFAR-10), ood (true when the score is
    over the detector's threshold | false), error (why the file could not be read); cells that do not apply are
    empty.
predictions.json: schema_version, checkpoint, checkpoint_epoch (from 1), classes (in label order), tta, top_k,
    device, inputs (as given), calibrated (true when the probabilities are softmax(logits / temperature)),
    calibration (null, or {temperature, source: the calibration.json}), ood (null, or {detector, threshold,
    source}; its scores always come from the raw logits and features), counts {files, predicted, errors,
    ood (null without a detector)}, seconds (reading and predicting the files), images_per_second, predictions
    [{file, status, top_k: [{class, index, probability}], ood_score, ood, error}] (full precision).
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from torch import Tensor

from cifar_lightning.allocator import keep_heap
from cifar_lightning.calibration import Calibration, choose_calibration
from cifar_lightning.checkpoints import chosen_checkpoint
from cifar_lightning.config import check
from cifar_lightning.config.inference import PredictSettings
from cifar_lightning.errors import ConfigError, DataError
from cifar_lightning.images import ImageError, load_image
from cifar_lightning.inference import Classifier
from cifar_lightning.ood.runtime import choose_detector, classify, detector_record
from cifar_lightning.ood.saved import OODDetector

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: calibrated and calibration
SHOWN_ERRORS = 5  # files not read that the printed summary names


def entry(file: Path, answer: dict[str, Any] | None = None, error: str | None = None) -> dict[str, Any]:
    """A file's predictions.json entry: its ood.runtime.classify answer, or why it could not be read."""
    top_k, verdict = (answer["top_k"], answer["ood"]) if answer is not None else ([], None)
    score, ood = (None, None) if verdict is None else (verdict["score"], verdict["is_ood"])
    status = "ok" if error is None else "error"
    return {"file": str(file), "status": status, "top_k": top_k, "ood_score": score, "ood": ood, "error": error}


def csv_row(entry: dict[str, Any], top_k: int) -> list[Any]:
    ranked = [cell for top in entry["top_k"] for cell in (top["class"], f"{top['probability']:.6f}")]
    ranked += ["", ""] * (top_k - len(entry["top_k"]))
    score = "" if entry["ood_score"] is None else repr(entry["ood_score"])
    ood = "" if entry["ood"] is None else str(entry["ood"]).lower()
    return [entry["file"], entry["status"], *ranked, score, ood, entry["error"] or ""]


def folder_files(folder: Path) -> list[Path]:
    """Every file in a folder and its subfolders, sorted by path; hidden files and folders are skipped."""
    files = (path for path in folder.rglob("*") if path.is_file())
    return sorted(p for p in files if not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _files(count: int) -> str:
    return "no file" if count == 0 else f"{count} file" if count == 1 else f"{count} files"


def gather_inputs(inputs: Any) -> list[Path]:
    """The files named by `inputs` (a file, a folder, a glob pattern where ** spans folders, or a list of these),
    in that order, each file once: ConfigError without inputs, DataError for a missing path or no file at all."""
    items = [str(item) for item in inputs] if isinstance(inputs, (list, ListConfig)) else [str(inputs)]
    items = [] if inputs is None else items
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
        if any(char in text for char in "*?["):
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


def _read(path: Path, max_pixels: int) -> Tensor | ImageError:
    """The file's model input, or the ImageError saying why it cannot be read (returned, so the others go on)."""
    try:
        return load_image(path, max_pixels)
    except ImageError as exc:
        return exc


def _decoded_batches(files: Sequence[Path], batch_size: int, workers: int, max_pixels: int) -> Iterator[tuple]:
    """(files, their images or errors) a batch at a time; the next batch decodes while the caller predicts this."""
    chunks = [files[start : start + batch_size] for start in range(0, len(files), batch_size)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = [pool.submit(_read, path, max_pixels) for path in chunks[0]]
        for index, chunk in enumerate(chunks):
            decoded = [future.result() for future in pending]
            following = chunks[index + 1] if index + 1 < len(chunks) else []
            pending = [pool.submit(_read, path, max_pixels) for path in following]
            yield chunk, decoded


def predict_files(
    classifier: Classifier, files: Sequence[Path], detector: OODDetector | None, cfg: DictConfig
) -> list[dict[str, Any]]:
    """Each file's predictions.json entry, in input order; cfg: top_k, batch_size, workers, max_pixels, progress."""
    results: list[dict[str, Any]] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("files"))
    with Progress(*columns, TimeRemainingColumn(), disable=not cfg.progress) as bar:
        task = bar.add_task("Predicting", total=len(files))
        for chunk, decoded in _decoded_batches(files, cfg.batch_size, cfg.workers, cfg.max_pixels):
            images = [item for item in decoded if isinstance(item, Tensor)]
            answers = iter(classify(classifier, torch.stack(images), detector, cfg.top_k) if images else [])
            for path, item in zip(chunk, decoded):
                unread = isinstance(item, ImageError)
                results.append(entry(path, error=str(item)) if unread else entry(path, next(answers)))
            bar.advance(task, len(chunk))
    return results


def write_predictions(output_dir: Path, results: Sequence[dict[str, Any]], summary: dict[str, Any]) -> list[Path]:
    """predictions.csv and predictions.json (the schemas are in this module's docstring)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = output_dir / "predictions.csv", output_dir / "predictions.json"
    ranked = [name for rank in range(1, summary["top_k"] + 1) for name in (f"class_{rank}", f"probability_{rank}")]
    with csv_path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["file", "status", *ranked, "ood_score", "ood", "error"])
        writer.writerows(csv_row(result, summary["top_k"]) for result in results)
    json_path.write_text(json.dumps({**summary, "predictions": results}, indent=2) + "\n")
    return [csv_path, json_path]


def summary_table(results: Sequence[dict[str, Any]], classes: Sequence[str], detector: OODDetector | None) -> Table:
    """Files per predicted class, their mean top probability and (with a detector) how many were flagged OOD."""
    predicted = [r for r in results if r["error"] is None]
    table = Table(title=f"{len(predicted)} of {len(results)} files predicted")
    table.add_column("predicted class")
    table.add_column("files", justify="right")
    table.add_column("mean probability", justify="right")
    if detector is not None:
        table.add_column(f"OOD ({detector.name})", justify="right")
    for index, name in enumerate(classes):
        mine = [r for r in predicted if r["top_k"][0]["index"] == index]
        if mine:
            flagged = [str(sum(bool(r["ood"]) for r in mine))] if detector is not None else []
            table.add_row(
                name, str(len(mine)), f"{sum(r['top_k'][0]['probability'] for r in mine) / len(mine):.3f}", *flagged
            )
    if len(results) > len(predicted):
        table.add_row("(not read)", str(len(results) - len(predicted)), "", *([""] if detector is not None else []))
    return table


def calibration_line(calibration: Calibration | None) -> str:
    """The printed summary's word on whether the probabilities can be read as frequencies."""
    if calibration is None:
        return "probabilities: not calibrated (raw softmax)"
    return f"probabilities: calibrated (temperature {calibration.temperature:.4g} from {calibration.source})"


def run_prediction(cfg: DictConfig) -> dict[str, Any]:
    """Check everything, predict every input file, write predictions.csv and predictions.json, print a summary;
    returns predictions.json's record without the per-file list."""
    check(cfg, "predict", "nothing was predicted", root=PredictSettings)
    keep_heap(cfg.keep_heap)
    path = chosen_checkpoint(cfg.ckpt, cfg.run_dir, "predict.py", " inputs=<files>")
    files = gather_inputs(cfg.inputs)
    classifier = Classifier.load(path, device=cfg.device, tta=cfg.tta)
    calibration = choose_calibration(cfg.calibration, cfg.calibration_file, path, cfg.paths.log_dir, "predict")
    classifier.temperature = 1.0 if calibration is None else calibration.temperature
    detector = choose_detector(cfg, classifier, "predict")

    start = time.perf_counter()
    results = predict_files(classifier, files, detector, cfg)
    seconds = time.perf_counter() - start
    predicted = sum(r["error"] is None for r in results)
    inputs = [str(i) for i in cfg.inputs] if isinstance(cfg.inputs, ListConfig) else str(cfg.inputs)
    summary = {
        "schema_version": SCHEMA_VERSION,
        "checkpoint": str(path),
        "checkpoint_epoch": classifier.checkpoint_epoch,
        "classes": list(classifier.classes),
        "tta": cfg.tta,
        "top_k": cfg.top_k,
        "device": str(classifier.device),
        "inputs": inputs,
        "calibrated": calibration is not None,
        "calibration": None if calibration is None else calibration.record(),
        "ood": detector_record(detector),
        "counts": {
            "files": len(results),
            "predicted": predicted,
            "errors": len(results) - predicted,
            "ood": None if detector is None else sum(bool(r["ood"]) for r in results),
        },
        "seconds": round(seconds, 3),
        "images_per_second": round(predicted / seconds, 1) if seconds > 0 else None,
    }
    written = write_predictions(Path(cfg.paths.output_dir), results, summary)

    console = Console(soft_wrap=True)
    console.print(summary_table(results, classifier.classes, detector))
    console.print(calibration_line(calibration), markup=False)
    unread = [r for r in results if r["error"] is not None]
    for result in unread[:SHOWN_ERRORS]:
        console.print(f"not read: {result['file']}: {result['error']}", markup=False)
    if len(unread) > SHOWN_ERRORS:
        console.print(f"... and {len(unread) - SHOWN_ERRORS} more files not read (see predictions.csv)")
    rate = summary["images_per_second"]
    console.print(
        f"{predicted} images predicted in {seconds:.2f} s ({rate} images/s); wrote {written[0]} and {written[1].name}",
        markup=False,
    )
    log.info(f"{len(results)} files: {predicted} predicted, {len(unread)} not read; {written[0].parent}")
    return summary
