"""The trial side of a search: a train.py job that is trial `hpo.trial` of study `hpo.study` reports its
validation metric every epoch and may be pruned; the metric and pruner are read from the study."""

from __future__ import annotations

from typing import Any

import lightning as L
import optuna
from omegaconf import DictConfig
from optuna_integration import PyTorchLightningPruningCallback

from cifar_lightning.credentials import refuse_password
from cifar_lightning.errors import TrialPruned
from cifar_lightning.hpo.study import OBJECTIVE, load_study, shown_url, trial_id


class PruneUnpromisingTrial(PyTorchLightningPruningCallback):
    """Optuna's pruning callback, raising cifar_lightning's TrialPruned so training.py records the run as pruned."""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        try:
            super().on_validation_end(trainer, pl_module)
        except optuna.TrialPruned as exc:
            raise self._pruned(pl_module.current_epoch) from exc

    def check_pruned(self) -> None:
        """After a DDP fit: raise TrialPruned if the pruner stopped it."""
        try:
            super().check_pruned()
        except optuna.TrialPruned as exc:
            epoch = self._trial.storage.get_trial_system_attrs(self._trial._trial_id).get("ddp_pl:epoch", 0)
            raise self._pruned(int(epoch)) from exc

    def _pruned(self, epoch: int) -> TrialPruned:
        values = self._trial.storage.get_trial(self._trial._trial_id).intermediate_values
        value = values.get(epoch, float("nan"))
        return TrialPruned(
            f"trial {self._trial.number} of study {self._trial.study.study_name!r} was pruned after epoch {epoch + 1}: "
            f"its {self.monitor} ({value:.4g}) was not promising next to the other trials'",
            epoch=epoch + 1,
            value=value,
        )


def pruning_callback(cfg: DictConfig) -> PruneUnpromisingTrial:
    """The callback that reports this trial's validation metric to its study every epoch and prunes it."""
    hpo = cfg.hpo  # all three set: checked by cifar_lightning/config/train.py (HpoSettings)
    refuse_password(hpo.storage, "hpo.storage", stopped="The run stopped before training")  # see credentials.py
    study = load_study(hpo.storage, hpo.study)
    trial = optuna.trial.Trial(study, trial_id(study, int(hpo.trial)))
    return PruneUnpromisingTrial(trial, monitor=study.user_attrs[OBJECTIVE])


def trial_record(cfg: DictConfig) -> dict[str, Any]:
    """metrics.json's `hpo` of a trial: the study and trial this run was (password-free storage URL)."""
    return {"study": cfg.hpo.study, "trial": int(cfg.hpo.trial), "storage": shown_url(str(cfg.hpo.storage))}
