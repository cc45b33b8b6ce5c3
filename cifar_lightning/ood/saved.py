"""Fitted OOD detectors as a file: evaluate.py saves every detector it measured, with its validation threshold, in
`ood_detectors.pt` (tensors and plain values only, loaded weights-only; refused for another checkpoint); predict.py
and serve.py load one. The default is the detector chosen on the OOD sets' validation halves (ood/protocol.py) when
predict and serve can use it, else KNN, chosen in advance from OpenOOD v1.5's CIFAR-10 benchmark (as for ood.fit)."""

import os
import pickle
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cifar_lightning.checkpoints import file_sha256
from cifar_lightning.config.data import EVAL_BATCH_SIZE
from cifar_lightning.config.ood import DETECTOR_LABELS, DIRECTIONS, IMAGE_DETECTORS, MEAN_ACTIVATION, OODSettings
from cifar_lightning.data import CIFAR10DataModule
from cifar_lightning.errors import CifarLightningError
from cifar_lightning.held_out import held_out_split
from cifar_lightning.inference import Classifier, Features
from cifar_lightning.ood import detectors
from cifar_lightning.ood.detection import OODResult, check_layers, choose_threshold, fit_subset, mean_activation_name

DETECTORS_FILE = "ood_detectors.pt"
DEFAULT_DETECTOR = "knn"
NAMES = (*DETECTOR_LABELS, MEAN_ACTIVATION)
FORMAT, VERSION = "cifar-lightning ood detectors", 1


class DetectorsError(CifarLightningError):
    """A saved detectors file is missing, unreadable, tampered with, or belongs to another checkpoint."""


@dataclass(frozen=True)
class OODDetector:
    """One fitted detector and its threshold; it pickles as its state (serve.py's workers get it that way) and
    rebuilds its scoring function where it is used."""

    name: str
    threshold: float
    layers: tuple[str, ...]  # activation layers whose mean score() reads: pass list(layers) to Classifier.features
    source: str  # the ood_detectors.pt it came from, or "fitted now"
    state: dict[str, Any] = field(repr=False, compare=False)  # fit_state's; mean_activation: layer, direction

    @cached_property
    def _score(self):  # a function of Features
        if self.name == MEAN_ACTIVATION:
            layer, direction = self.state["layer"], self.state["direction"]
            return lambda f: detectors.mean_activation_score(f, layer, direction)
        if self.needs_images:  # it scores images; a damaged state fails here all the same
            detectors.check_image_state(self.name, self.state)
            return lambda features: detectors.scorer(self.name, self.state)(features)  # refused, with the fix
        return detectors.scorer(self.name, self.state)

    def __getstate__(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key != "_score"}

    @property
    def needs_images(self) -> bool:
        """True for ODIN: it scores images through the whole network (score_images), not features."""
        return self.name in IMAGE_DETECTORS

    def score(self, features: Features) -> Tensor:
        """(N,) float64 outlier scores of features (Classifier.features with list(layers)); not for ODIN."""
        return self._score(features)

    def score_images(
        self, classifier: Classifier, images: Tensor, batch_size: int = EVAL_BATCH_SIZE, progress: bool = False
    ):
        """(N,) float64 outlier scores of uint8 images (N, 3, H, W): ODIN's through the whole network."""
        if self.needs_images:
            return detectors.score_images(self.name, self.state, classifier, images, batch_size, progress)
        return self.score(classifier.features(images, list(self.layers), batch_size, progress))

    def is_ood(self, scores: Tensor) -> Tensor:
        return scores > self.threshold


def _refuse_images(name: str, path: str) -> DetectorsError:
    return DetectorsError(
        f"the {name} detector ({path}) perturbs every input through the whole network (a gradient step per image), "
        f"so it scores images, and this command scores the classifier's features only. Fix: choose a detector that "
        f"scores features (ood.detector=knn, or any of {', '.join(n for n in NAMES if n not in IMAGE_DETECTORS)}); "
        f"{name}'s measured results stay in evaluate.py's ood.md."
    )


def save_detectors(path: str | Path, result: OODResult, checkpoint: str | Path) -> Path:
    """Write every detector of an evaluate.py OOD result (and its mean-activation row) to `path`, atomically."""
    thresholds = result.thresholds["detectors"]
    entries = {
        name: {"threshold": float(thresholds[name]), "layers": [], "state": state}
        for name, state in result.states.items()
    }
    entries[MEAN_ACTIVATION] = {
        "threshold": float(thresholds[mean_activation_name(result.layer)]),
        "layers": [result.layer.split("@")[0]],
        "state": {"layer": result.layer, "direction": result.settings["direction"]},
    }
    record = dict(format=FORMAT, version=VERSION, checkpoint=str(checkpoint), checkpoint_sha256=file_sha256(checkpoint))
    usable = [name for name in entries if name not in IMAGE_DETECTORS]  # predict/serve score features
    default = result.chosen if result.chosen in usable else DEFAULT_DETECTOR
    record.update(default=default, settings=result.settings, detectors=entries)
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    torch.save(record, partial)
    os.replace(partial, path)
    return path


FIX = (
    f"Fix: run python evaluate.py ckpt=<this checkpoint> again to write a new {DETECTORS_FILE}, pass the right "
    f"file with ood.file=<path>, fit one now with ood.fit=true, or turn OOD flagging off with ood.enabled=false"
)


def read_detectors(path: str | Path) -> dict[str, Any]:
    """The checked contents of a detectors file (weights-only load); DetectorsError otherwise."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DetectorsError(f"the OOD detectors file {path} does not exist. {FIX}.")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise DetectorsError(
            f"{path} is not a safe OOD detectors file: it holds Python objects beyond tensors and plain values, "
            f"so it was not loaded. {FIX}."
        ) from exc
    except Exception as exc:  # truncated or damaged: torch raises RuntimeError, EOFError, ...
        raise DetectorsError(f"the OOD detectors file {path} is truncated or corrupt ({type(exc).__name__}). {FIX}.")
    if problems := _problems(record):
        raise DetectorsError(f"{path} is not a usable OOD detectors file ({problems}). {FIX}.")
    return record


def _problems(record: Any) -> str:
    """What is wrong with a loaded record, or ''."""
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        return f"it is not a {FORMAT!r} file"
    if record.get("version") != VERSION:
        return f"version {record.get('version')!r}, expected {VERSION}"
    entries = record.get("detectors")
    if not isinstance(record.get("checkpoint_sha256"), str) or not isinstance(entries, dict) or not entries:
        return "it lacks checkpoint_sha256 or detectors"
    for name, entry in entries.items():
        if name not in NAMES:
            return f"unknown detector {name!r}"
        if not isinstance(entry, dict) or not isinstance(entry.get("threshold"), float):
            return f"detector {name!r} has no threshold"
        if not isinstance(entry.get("state"), dict) or not isinstance(entry.get("layers"), list):
            return f"detector {name!r} has no state"
    return ""


def _detector(name: str, entry: dict[str, Any], source: str) -> OODDetector:
    """The detector of a file entry, its state checked by rebuilding its scoring function once."""
    state = entry["state"]
    valid_layer = isinstance(state.get("layer"), str) and state.get("direction") in DIRECTIONS
    if name == MEAN_ACTIVATION and not valid_layer:
        raise DetectorsError(f"{source}: the mean_activation detector has no valid layer and direction. {FIX}.")
    detector = OODDetector(name, entry["threshold"], tuple(entry["layers"]), source, state)
    try:
        detector._score  # noqa: B018 - built now, so that a damaged state fails here, with its file named
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise DetectorsError(f"{source}: the {name} detector's state is damaged ({type(exc).__name__}: {exc}). {FIX}.")
    return detector


def load_detector(
    path: str | Path, classifier: Classifier, name: str | None = None, from_images: bool = False
) -> OODDetector:
    """The named detector (None: the file's default, chosen on validation halves) of a detectors file fitted for the
    classifier's checkpoint; ODIN only when the caller scores images (from_images)."""
    record = read_detectors(path)
    path, checkpoint = Path(path).expanduser(), classifier.checkpoint_path
    if checkpoint is not None and file_sha256(checkpoint) != record["checkpoint_sha256"]:
        raise DetectorsError(
            f"the OOD detectors in {path} were fitted for another checkpoint ({record.get('checkpoint')}), not "
            f"for {checkpoint} (their SHA-256 differ), so their scores would mean nothing for this model. {FIX}."
        )
    name = name or record.get("default") or DEFAULT_DETECTOR
    if name not in record["detectors"]:
        raise DetectorsError(
            f"{path} holds no detector {name!r}; it holds {', '.join(record['detectors'])}. Fix: choose one of them "
            f"with ood.detector=<name>, or fit the one you want now with ood.fit=true ood.detector={name}."
        )
    if name in IMAGE_DETECTORS and not from_images:
        raise _refuse_images(name, str(path))
    detector = _detector(name, record["detectors"][name], str(path))
    try:
        if detector.layers:
            check_layers(classifier.model, detector.layers)
    except ValueError as exc:
        raise DetectorsError(f"{path}: {exc}. {FIX}.") from exc
    return detector


def find_detectors(classifier: Classifier, log_dir: str | Path) -> Path | None:
    """The newest <log_dir>/evaluate/runs/*/ood_detectors.pt fitted for the classifier's very checkpoint, or None."""
    if classifier.checkpoint_path is None:
        return None
    candidates = Path(log_dir).expanduser().glob(f"evaluate/runs/*/{DETECTORS_FILE}")
    candidates = sorted(candidates, key=lambda p: p.stat().st_mtime, reverse=True)
    digest = file_sha256(classifier.checkpoint_path) if candidates else None
    for candidate in candidates:
        try:
            # mmap: only the small header fields are read, not every candidate's fitted tensors
            record = torch.load(candidate, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # an unreadable file is not this checkpoint's: look further
            continue
        if isinstance(record, dict) and record.get("checkpoint_sha256") == digest and not _problems(record):
            return candidate
    return None


def fit_detector(
    classifier: Classifier,
    data_dir: str | Path,
    name: str | None = None,
    download: bool = False,
    fit_images: int | None = None,
    seed: int = 0,
    settings: OODSettings = OODSettings(),
    from_images: bool = False,
) -> OODDetector:
    """Fit the named detector now, as evaluate.py does: on the run's training split (or `fit_images` of it),
    thresholded on its validation split; `name` and `from_images` as for load_detector."""
    name = name or DEFAULT_DETECTOR
    if name not in NAMES:
        raise DetectorsError(f"unknown OOD detector {name!r}. Fix: choose one of {', '.join(NAMES)}.")
    if name in IMAGE_DETECTORS and not from_images:
        raise _refuse_images(name, "fitted now")
    split, _ = held_out_split(classifier.config.get("data"))
    datamodule = CIFAR10DataModule(str(data_dir), download=download, **split)
    datamodule.prepare_data()  # a missing or corrupt data folder fails here, naming the fix
    datamodule.load_state_dict(classifier.normalization)
    datamodule.setup("fit")
    arrays, layers = datamodule.arrays, []
    if name == MEAN_ACTIVATION:
        layers = [check_layers(classifier.model, settings.mean_activation.layers, settings.mean_activation.layer)[1]]
        state: dict[str, Any] = {"layer": layers[0], "direction": settings.mean_activation.direction}
    elif name in IMAGE_DETECTORS:
        try:
            state = detectors.image_state(name, settings, classifier.checkpoint_path)
        except detectors.DetectorFitError as exc:
            raise DetectorsError(
                f"The {name} detector cannot be used with this model: {exc}. Fix: choose another detector "
                f"(ood.detector=knn), or train a model for it."
            ) from exc
    else:
        fit_idx = datamodule.train_idx[fit_subset(datamodule.train_idx, fit_images, seed)]
        fit = classifier.features(arrays.train_images[fit_idx], [], description="Features: training split")
        try:
            state = detectors.fit_state(name, fit, arrays.train_labels[fit_idx], classifier.head, settings)
        except detectors.DetectorFitError as exc:
            raise DetectorsError(
                f"pytorch-ood could not fit the {name} detector on this model's training split ({exc}). Fix: choose "
                f"another detector (ood.detector=knn), or fit it on more images (ood.fit_images=null: all of them)."
            ) from exc
    unthresholded = OODDetector(name, 0.0, tuple(layers), "fitted now", state)
    val_scores = unthresholded.score_images(classifier, arrays.train_images[datamodule.val_idx])
    threshold = choose_threshold(val_scores, settings.threshold)
    return OODDetector(name, float(threshold), tuple(layers), "fitted now", state)
