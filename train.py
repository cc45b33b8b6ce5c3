"""Train a CIFAR-10 classifier.

    python train.py                                  # the report's improved CNN (experiment=report_improved)
    python train.py experiment=report_base             # the report's base run
    python train.py model.dropout=0.0 seed=1         # change any value
    python train.py -m seed=0,1,2                    # Hydra multirun sweep
    python train.py -m +ablation=all                 # the report's Table 1 over 3 seeds, aggregated
    python train.py resume=logs/train/runs/<date>_<time>   # continue a run from its last checkpoint

Configs live in conf/ (train.yaml is the entry); each run writes its config, checkpoints,
TensorBoard events and metrics.json into its own directory under logs/.
"""

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from cifar_lightning.errors import CifarLightningError, TrialPruned
from cifar_lightning.resume import resume
from cifar_lightning.training import is_trial, train

log = logging.getLogger("train")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    # In a sweep, a failed job is logged and left without metrics.json, and the other jobs go on;
    # the aggregation lists it as missing. A diverged job (exit status 3 alone) has a metrics.json
    # with status: diverged, which the aggregation lists apart.
    hydra_config = HydraConfig.get()
    in_sweep = hydra_config.mode == RunMode.MULTIRUN
    if not in_sweep and is_trial(cfg):
        print(
            "error: hpo.trial is set, but this is no sweep: hpo.study, hpo.storage and hpo.trial are set by the "
            "hyperparameter-search sweeper for its trials. Fix: drop the hpo.* overrides to train the configuration "
            "alone (hpo.md gives the command), or run the search (python train.py -m hparams_search=<name>).",
            file=sys.stderr,
        )
        sys.exit(2)
    try:
        if cfg.get("resume") is not None:
            metrics = resume(cfg.resume, hydra_config.overrides.task, output_dir=cfg.paths.output_dir)
        else:
            metrics = train(cfg)
    except TrialPruned:
        return None  # logged by the run; its metrics.json says status: pruned, which the sweeper reads
    except CifarLightningError as exc:
        if in_sweep:
            log.error("job failed, the sweep goes on: %s", exc)
            return None
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except Exception:
        if in_sweep:
            log.exception("job failed, the sweep goes on")
            return None
        raise
    return metrics["best_val_loss"]  # the objective for Hydra sweepers


if __name__ == "__main__":
    main()
