"""Out-of-distribution detection: the course report's mean-activation method for every activation
layer, and every post-hoc detector of pytorch-ood 0.4 (detectors.DETECTOR_LABELS: MSP, energy, KNN, ViM, ReAct,
ASH, ODIN, ...), on real OOD sets, with thresholds chosen on the validation split alone.

evaluate.py runs it (conf/ood/); from Python:

    from cifar_lightning.ood import detect_ood, load_sets
    result = detect_ood(Classifier.load(checkpoint), fit_images=..., fit_labels=..., val_images=..., id_images=...,
                        ood_sets=load_sets({"noise": {"noise": "uniform", "n": 1000}}, seed=0))
    result.detectors["knn"]["noise"]["auroc"]
"""

from cifar_lightning.ood.detection import OODResult, OODSettings, ThresholdSettings, detect_ood, score_ood
from cifar_lightning.ood.sets import OODSet, load_folder, load_npz, load_sets

__all__ = [
    "OODResult",
    "OODSet",
    "OODSettings",
    "ThresholdSettings",
    "detect_ood",
    "load_folder",
    "load_npz",
    "load_sets",
    "score_ood",
]
