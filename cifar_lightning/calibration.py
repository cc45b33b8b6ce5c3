"""Are the probabilities honest? Calibration metrics and temperature scaling (Guo et al. 2017, "On Calibration
of Modern Neural Networks"): one scalar T > 0 divides the logits before the softmax, fitted by minimizing the
negative log-likelihood on held-out images. T leaves the argmax (the accuracy) unchanged and only makes the
confidences match how often the model is right.

evaluate.py fits T and saves it as `calibration.json` in its run directory, tied to the checkpoint by its
SHA-256; predict.py and serve.py find the newest one for their very checkpoint (as they find the OOD detectors,
ood/saved.py) and divide their logits by it, unless `calibration=false`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.classification import multiclass_calibration_error

from cifar_lightning.checkpoints import file_sha256
from cifar_lightning.errors import CifarLightningError, is_number

log = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"
ECE_BINS = 15  # Guo et al.'s and torchmetrics' usual choice: the figures compare with published ECEs
FORMAT, VERSION = "cifar-lightning calibration", 1
METRICS = ("ece", "mce", "nll", "brier")
#: The range T is kept in: a perfectly separated fit set would drive T to 0 (NLL keeps falling), which no
#: unseen image deserves; real fits land near 1-3.
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-2, 1e2


class CalibrationFileError(CifarLightningError):
    """A calibration.json is missing, unreadable, damaged, or belongs to another checkpoint."""


def calibrated_probabilities(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """softmax(logits / T): the probabilities temperature scaling reports (T = 1: the raw softmax)."""
    return (logits / temperature).softmax(dim=1)


def calibration_metrics(
    logits: Tensor, labels: Tensor, temperature: float = 1.0, bins: int = ECE_BINS
) -> dict[str, float]:
    """ECE and MCE (confidence of the top class vs its accuracy, in `bins` equal-width bins: the mean gap weighted
    by the bin's share of images, and the largest gap), NLL (mean cross-entropy) and Brier score of the logits
    divided by `temperature`; all in float64, so that before/after differences are not rounding."""
    scaled = logits.double() / temperature
    probabilities = scaled.softmax(dim=1)
    classes = probabilities.shape[1]
    ece = multiclass_calibration_error(probabilities, labels, classes, n_bins=bins, norm="l1")
    mce = multiclass_calibration_error(probabilities, labels, classes, n_bins=bins, norm="max")
    # torchmetrics (1.9) has no multiclass Brier score (only CRPS for regression), so it is computed here:
    # the mean over images of the squared distance between the probability vector and the one-hot label.
    brier = (probabilities - F.one_hot(labels, classes).double()).pow(2).sum(dim=1).mean()
    nll = F.cross_entropy(scaled, labels)
    return {"ece": float(ece), "mce": float(mce), "nll": float(nll), "brier": float(brier)}


def fit_temperature(logits: Tensor, labels: Tensor) -> float:
    """The T > 0 minimizing the NLL of softmax(logits / T): L-BFGS with a strong-Wolfe line search on log T
    (positive without a constraint, and the NLL is smooth and unimodal in it), in float64 from T = 1, so the
    same logits always give the same T; kept in [MIN_TEMPERATURE, MAX_TEMPERATURE]."""
    if len(logits) == 0 or len(logits) != len(labels):
        raise ValueError(f"temperature scaling needs one label per logit row, got {len(logits)} and {len(labels)}")
    with torch.inference_mode(False), torch.enable_grad():  # callers may run under inference_mode or no_grad
        logits, labels = logits.detach().double().clone(), labels.detach().clone()  # clones: no inference tensors
        log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS(
            [log_t], lr=1.0, max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14, line_search_fn="strong_wolfe"
        )

        def closure() -> Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(logits / log_t.exp(), labels)
            loss.backward()
            return loss

        optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    if not math.isfinite(temperature):
        return MAX_TEMPERATURE if log_t.item() > 0 else MIN_TEMPERATURE
    return min(max(temperature, MIN_TEMPERATURE), MAX_TEMPERATURE)


def save_calibration(
    path: str | Path, temperature: float, checkpoint: Path, fitted_on: str, before: dict, after: dict
) -> Path:
    """Write calibration.json (the fitted T, what it was fitted on, the metrics before and after, and the
    checkpoint's SHA-256 that ties it to that model) atomically: a crash leaves the old file or none."""
    if not valid_temperature(temperature):
        raise ValueError(f"a temperature must be a finite number > 0, got {temperature!r}")
    record = {
        "format": FORMAT,
        "version": VERSION,
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": file_sha256(checkpoint),
        "temperature": float(temperature),
        "fitted_on": fitted_on,
        "bins": ECE_BINS,
        "before": {key: float(value) for key, value in before.items()},
        "after": {key: float(value) for key, value in after.items()},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(partial, path)
    return path


def valid_temperature(value: Any) -> bool:
    return is_number(value, finite=True) and value > 0


def _problems(record: Any) -> str:
    """What is wrong with a parsed calibration.json, or ''."""
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        return f"it is not a {FORMAT!r} file"
    if record.get("version") != VERSION:
        return f"version {record.get('version')!r}, expected {VERSION}"
    if not isinstance(record.get("checkpoint_sha256"), str):
        return "it lacks checkpoint_sha256"
    if not valid_temperature(record.get("temperature")):
        return f"its temperature {record.get('temperature')!r} is not a finite number > 0"
    return ""


def _load(path: Path) -> Any:
    """The parsed JSON of a file, or None when it cannot be read or parsed."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None


FIX = (
    "Fix: run python evaluate.py ckpt=<this checkpoint> to fit and save its temperature, name that run's file "
    "with calibration_file=<path>, or report raw softmax probabilities with calibration=false"
)


def read_calibration(path: str | Path, checkpoint: str | Path) -> float:
    """The temperature a calibration.json holds for `checkpoint`, checked; CalibrationFileError for a missing,
    corrupt or damaged file, or one fitted for another checkpoint (its T would mean nothing for this model)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CalibrationFileError(f"the calibration file {path} does not exist. {FIX}.")
    record = _load(path)
    if record is None:
        raise CalibrationFileError(f"the calibration file {path} is not readable JSON (truncated or corrupt). {FIX}.")
    if problems := _problems(record):
        raise CalibrationFileError(f"{path} is not a usable calibration file ({problems}). {FIX}.")
    if file_sha256(checkpoint) != record["checkpoint_sha256"]:
        raise CalibrationFileError(
            f"the temperature in {path} was fitted for another checkpoint ({record.get('checkpoint')}), not for "
            f"{checkpoint} (their SHA-256 differ), so it would mis-scale this model's probabilities. {FIX}."
        )
    return float(record["temperature"])


def find_calibration(checkpoint: str | Path, log_dir: str | Path) -> Path | None:
    """The newest <log_dir>/evaluate/runs/*/calibration.json fitted for this very checkpoint (same SHA-256), or
    None; unreadable or damaged candidates are passed over."""
    candidates = Path(log_dir).expanduser().glob(f"evaluate/runs/*/{CALIBRATION_FILE}")
    candidates = sorted(candidates, key=lambda p: p.stat().st_mtime, reverse=True)
    digest = file_sha256(checkpoint) if candidates else None
    for candidate in candidates:
        record = _load(candidate)
        if not _problems(record) and record["checkpoint_sha256"] == digest:
            return candidate
    return None


@dataclass(frozen=True)
class Calibration:
    """The temperature predict.py and serve.py divide their logits by, and the file it came from."""

    temperature: float
    source: str

    def record(self) -> dict[str, Any]:
        """As predictions.json and serve.py's /info name it."""
        return {"temperature": self.temperature, "source": self.source}


def choose_calibration(
    enabled: bool, file: str | None, checkpoint: Path, log_dir: str | Path, entry: str
) -> Calibration | None:
    """The calibration predict.py or serve.py (`entry`) applies: None when turned off, or when none was saved for
    the checkpoint (a warning with the fix: a fresh run has none yet, and its raw probabilities are still useful);
    a named `file` must be usable, or CalibrationFileError before anything is predicted or served."""
    if not enabled:
        return None
    path = Path(file).expanduser() if file is not None else find_calibration(checkpoint, log_dir)
    if path is None:
        runs = Path(log_dir) / "evaluate" / "runs"
        log.warning(
            f"no {CALIBRATION_FILE} saved for {checkpoint} under {runs}, so {entry}.py reports uncalibrated "
            f"probabilities (raw softmax): run python evaluate.py ckpt={checkpoint} once (it fits and saves the "
            f"temperature), name a file with calibration_file=<path>, or pass calibration=false to silence this"
        )
        return None
    temperature = read_calibration(path, checkpoint)
    log.info("calibrated probabilities: temperature %.4g from %s", temperature, path)
    return Calibration(temperature, str(path))
