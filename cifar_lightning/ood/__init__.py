"""Out-of-distribution detection: the course report's mean-activation method for every activation layer, and
every post-hoc detector of pytorch-ood 0.4 (MSP, energy, KNN, ViM, ReAct, ASH, ODIN, ...), on real OOD sets, with
thresholds chosen on the validation split alone. evaluate.py runs it (conf/ood/); from Python, see detect_ood."""

from cifar_lightning.config.ood import OODSettings
from cifar_lightning.ood.detection import OODResult, detect_ood, score_ood
from cifar_lightning.ood.sets import OODSet, load_sets

__all__ = ["OODResult", "OODSet", "OODSettings", "detect_ood", "load_sets", "score_ood"]
