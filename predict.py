"""Classify image files with a train.py checkpoint: top-k classes, and an out-of-distribution score and verdict
per file.

    python predict.py ckpt=logs/train/runs/<date>_<time>/checkpoints/best.ckpt inputs=photos/
    python predict.py run_dir=logs/train/runs/<date>_<time> inputs='photos/**/*.jpg' top_k=5 tta=1
    python predict.py run_dir=... inputs=cat.png ood.fit=true      # fit an OOD detector now

Any image file (size, mode, format) is read by one policy (cifar_lightning/images.py); a file that cannot
be read is listed with its reason. Writes predictions.csv and predictions.json (schemas in
cifar_lightning/prediction.py) into its own directory under logs/predict/runs/ and prints a summary
(cifar_lightning/config/inference.py declares every setting).
"""

import sys

import hydra
from omegaconf import DictConfig

from cifar_lightning.errors import CifarLightningError
from cifar_lightning.prediction import run_prediction


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    try:
        run_prediction(cfg)
    except CifarLightningError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
