"""The honest OOD protocol: each OOD set is split once, by a fixed seed, into a validation half and a test half.
Every choice (the detector predict.py and serve.py use by default, anything a user tunes from ood.json) is made on
the validation halves, scored against the run's validation split; the tables report the test halves against the
CIFAR-10 test set, which no choice has seen. OpenOOD v1.5 chooses on a separate OOD validation set the same way."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from cifar_lightning.errors import CifarLightningError

#: The kind of OOD set whose mean validation AUROC picks the detector (every set when there is none).
CHOSEN_BY = "near"


class TestDataChoiceError(CifarLightningError):
    """A choice was asked of OOD results that hold no validation halves: it could only be made on test data."""


def split_halves(n: int, validation_share: float, seed: int) -> tuple[Tensor, Tensor]:
    """Sorted indices of an n-image set's validation part (round(share * n) images, drawn with `seed`) and the rest."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cut = round(validation_share * n)
    return torch.sort(order[:cut]).values, torch.sort(order[cut:]).values


def choose_detector(validation: Mapping[str, Mapping[str, Mapping[str, float]]], kinds: Mapping[str, str]) -> str:
    """The detector with the highest mean AUROC over the validation halves of the near sets (of every set when none
    is near). validation: detector -> set -> metrics on the validation halves; kinds: set -> kind."""
    if not validation:
        raise TestDataChoiceError(
            "these OOD results hold no validation halves (ood.json from before the split protocol, or every OOD set "
            "too small to split), so a detector could only be chosen on the test sets, which would make the tables "
            "optimistic. Fix: run python evaluate.py again on the checkpoint (it splits each OOD set into a "
            "validation and a test half, ood.validation_share), or choose the detector yourself with ood.detector=..."
        )
    near = [name for name, kind in kinds.items() if kind == CHOSEN_BY]

    def mean_auroc(name: str) -> float:
        per_set = validation[name]
        chosen = [s for s in per_set if s in near] or list(per_set)
        return sum(per_set[s]["auroc"] for s in chosen) / len(chosen)

    return max(validation, key=mean_auroc)
