"""The Optuna sweeper as a Hydra plugin; its work is cifar_lightning.hpo.sweeper's.

Hydra imports every hydra_plugins module on each start, so this one imports Optuna only when a search runs.
"""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class OptunaSweeper(Sweeper):
    """python train.py -m hparams_search=<name> (conf/hydra/sweeper/optuna.yaml)."""

    def __init__(self, **settings: Any) -> None:
        from cifar_lightning.hpo.sweeper import OptunaSearch

        self.search = OptunaSearch(**settings)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.search.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        return self.search.sweep(arguments)
