"""Evaluate a train.py checkpoint on the 10,000 CIFAR-10 test images.

    python evaluate.py ckpt=logs/train/runs/<date>_<time>/checkpoints/best.ckpt
    python evaluate.py run_dir=logs/train/runs/<date>_<time>      # its checkpoints/best.ckpt
    python evaluate.py run_dir=... gradcam.explain=label device=cpu

Writes evaluation.json, confusion_matrix.csv, the confusion matrix, galleries of the most
confident right and wrong predictions, Grad-CAM overlays, the training curves and report.html
into its own directory under logs/evaluate/runs/ (conf/evaluate.yaml lists every setting).
"""

import sys

import hydra
from omegaconf import DictConfig

from cifar_lightning.errors import CifarLightningError
from cifar_lightning.evaluation import evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> float:
    try:
        summary = evaluate(cfg)
    except CifarLightningError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    return summary["test_acc"]


if __name__ == "__main__":
    main()
