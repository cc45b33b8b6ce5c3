"""The training losses a config can name (conf/loss/): cross-entropy, and LogitNorm for OOD detection.

LogitNorm (Wei et al., ICML 2022) is cross-entropy of the logits scaled to L2 norm 1/temperature: the
network can no longer lower the loss by growing its logits, so it stays less confident on images unlike
its training set, and confidence-based OOD scores separate better. The loss is pytorch-ood's.
"""

from __future__ import annotations

import torch
from pytorch_ood.loss import LogitNorm
from torch import Tensor, nn
from torch.nn import functional as F

from cifar_lightning.errors import is_fraction, is_number

#: loss.name values.
LOSSES = ("cross_entropy", "logitnorm")


class SmoothedLogitNorm(nn.Module):
    """LogitNorm with a recipe's label smoothing (e.g. fast94's 0.2), so `loss=logitnorm` changes nothing
    else in a recipe. pytorch-ood's loss has no smoothing: this normalizes the logits exactly as it does
    (norm + 1e-7) and passes them to smoothed cross-entropy."""

    def __init__(self, temperature: float, label_smoothing: float) -> None:
        super().__init__()
        self.t, self.label_smoothing = temperature, label_smoothing

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        norm = torch.norm(logits, p=2, dim=1, keepdim=True) + 1e-7
        return F.cross_entropy(logits / (self.t * norm), target, label_smoothing=self.label_smoothing)


def build_loss(name: str = "cross_entropy", label_smoothing: float = 0.0, temperature: float = 0.04) -> nn.Module:
    """The named loss; a ValueError naming the value and an example otherwise.

    label_smoothing: in [0, 1): that share of each target is spread evenly over all classes.
    temperature: LogitNorm's tau (> 0; the paper's 0.04 for CIFAR-10); cross-entropy ignores it.
    """
    if name not in LOSSES:
        raise ValueError(f"loss name must be one of {', '.join(LOSSES)}, got {name!r}, e.g. loss=logitnorm")
    if not is_fraction(label_smoothing, zero=True, one=False):
        raise ValueError(
            f"label_smoothing must be in [0, 1) (the share of each target spread over all classes), "
            f"got {label_smoothing!r}, e.g. loss.label_smoothing=0.1"
        )
    if name == "cross_entropy":
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    if not is_number(temperature, finite=True) or temperature <= 0:
        raise ValueError(
            f"LogitNorm's temperature must be a positive number, got {temperature!r}, e.g. loss.temperature=0.04"
        )
    if label_smoothing == 0:
        return LogitNorm(t=float(temperature))
    return SmoothedLogitNorm(float(temperature), float(label_smoothing))
