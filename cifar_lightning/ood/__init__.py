"""Out-of-distribution detection: the report's mean-activation method per activation layer and every post-hoc detector
of pytorch-ood 0.4, thresholds chosen on the validation split alone. evaluate.py runs it; from Python, detect_ood."""

from cifar_lightning.config.ood import OODSettings
from cifar_lightning.ood.detection import OODResult, detect_ood, score_ood
from cifar_lightning.ood.sets import OODSet, load_sets

__all__ = ["OODResult", "OODSet", "OODSettings", "detect_ood", "load_sets", "score_ood"]
