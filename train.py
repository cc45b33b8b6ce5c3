"""Train a CIFAR-10 classifier.

    python train.py                                  # the report's improved CNN (experiment=seed_improved)
    python train.py experiment=seed_base             # the report's base run
    python train.py model.dropout=0.0 seed=1         # change any value
    python train.py -m seed=0,1,2                    # Hydra multirun sweep

Configs live in conf/ (train.yaml is the entry); each run writes its config, checkpoints,
TensorBoard events and metrics.json into its own directory under logs/.
"""

import sys

import hydra
from omegaconf import DictConfig

from cifar_lightning.errors import CifarLightningError
from cifar_lightning.training import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = train(cfg)
    except CifarLightningError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    return metrics["best_val_loss"]  # the objective for Hydra sweepers


if __name__ == "__main__":
    main()
