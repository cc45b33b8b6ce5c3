"""The OOD runtime of predict.py and serve.py (their `ood` node, conf/ood_runtime/): which detector scores their
images, and the one forward pass that gives both the predictions and the scores.

The detector is fitted now (ood.fit), read from ood.file, or the newest ood_detectors.pt evaluate.py saved for
this very checkpoint under paths.log_dir. When none was saved, a detector named with ood.detector is an error
with the fix, while the default one is only missed, with a warning: whoever names a detector relies on its
verdicts, whoever does not still gets the predictions (a fresh run has no saved detector yet).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from cifar_lightning.config.inference import OODRuntimeSettings
from cifar_lightning.errors import ConfigError
from cifar_lightning.inference import Classifier, Predictions
from cifar_lightning.ood.saved import OODDetector, find_detectors, fit_detector, load_detector

log = logging.getLogger(__name__)
VERDICTS = {False: "in-distribution", True: "out-of-distribution"}


def choose_detector(cfg: DictConfig, classifier: Classifier, entry: str) -> OODDetector | None:
    """The detector `cfg.ood` chooses for the classifier (None: OOD off, or the default one not saved); `entry`
    (predict, serve) names the script in messages. Reads cfg.paths.log_dir, cfg.data and cfg.seed."""
    ood = OODRuntimeSettings.model_validate(OmegaConf.to_container(cfg.ood, resolve=True))
    if not ood.enabled:
        return None
    if ood.fit:
        log.info("fitting an OOD detector on the run's training split in %s (ood.fit=true)...", cfg.data.data_dir)
        detector = fit_detector(
            classifier, cfg.data.data_dir, ood.detector, cfg.data.download, ood.fit_images, seed=cfg.seed
        )
        log.info("fitted the %s OOD detector (threshold %.4g)", detector.name, detector.threshold)
        return detector
    path = Path(ood.file).expanduser() if ood.file is not None else find_detectors(classifier, cfg.paths.log_dir)
    checkpoint, runs = classifier.checkpoint_path, Path(cfg.paths.log_dir) / "evaluate" / "runs"
    if path is None and ood.detector is not None:
        raise ConfigError(
            f"ood.detector={ood.detector} was asked for, but evaluate.py has saved no OOD detectors for {checkpoint} "
            f"under {runs}. Fix: run python evaluate.py ckpt={checkpoint} first, name a saved file with "
            f"ood.file=<ood_detectors.pt>, fit one now with ood.fit=true, or turn OOD off with ood=none; nothing "
            f"was {'predicted' if entry == 'predict' else 'served'}."
        )
    if path is None:
        log.warning(
            f"no OOD detector saved for {checkpoint} under {runs}, so {entry}.py's answers carry no OOD verdict: run "
            f"python evaluate.py ckpt={checkpoint} once (it saves them), or pass ood.fit=true to fit one now, or "
            f"ood=none to silence this"
        )
        return None
    detector = load_detector(path, classifier, ood.detector)
    log.info("OOD detector %s (threshold %.4g) from %s", detector.name, detector.threshold, path)
    return detector


def detector_record(detector: OODDetector | None) -> dict[str, Any] | None:
    """The detector as predictions.json and serve.py's /info name it."""
    if detector is None:
        return None
    return {"detector": detector.name, "threshold": float(detector.threshold), "source": str(detector.source)}


def classify(classifier: Classifier, images: Tensor, detector: OODDetector | None, top_k: int) -> list[dict]:
    """Per uint8 image (N, 3, H, W): its `top_k` classes, most probable first ({class, index, probability}, with
    the classifier's TTA and calibration temperature), and its OOD verdict ({detector, score, threshold, is_ood,
    verdict}; None without a detector; never with TTA, always from the raw logits and features the detector was
    fitted on). Without TTA one forward pass gives both: the detector's features hold the logits."""
    verdicts: list[dict[str, Any] | None] = [None] * len(images)
    if detector is None:
        predictions = classifier.predict(images, batch_size=len(images))
    else:
        features = classifier.features(images, layers=list(detector.layers), batch_size=len(images))
        if classifier.tta == 0:
            predictions = Predictions(features.logits, classifier.probabilities(features.logits))
        else:
            predictions = classifier.predict(images, batch_size=len(images))
        scores = detector.score(features)
        name, threshold = detector.name, float(detector.threshold)
        verdicts = [
            dict(detector=name, score=float(score), threshold=threshold, is_ood=bool(ood), verdict=VERDICTS[bool(ood)])
            for score, ood in zip(scores, detector.is_ood(scores))
        ]
    probabilities, indices = predictions.top_k(top_k)
    return [
        {"top_k": [{"class": classifier.classes[i], "index": i, "probability": p} for p, i in zip(ps, ix)], "ood": v}
        for ps, ix, v in zip(probabilities.tolist(), indices.tolist(), verdicts)
    ]
