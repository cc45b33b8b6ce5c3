"""The training losses beyond torch's cross-entropy (conf/loss/): LogitNorm (Wei et al., ICML 2022), cross-entropy
of the logits scaled to L2 norm 1/temperature, which keeps the network less confident on unlike images (OOD).
"""

from __future__ import annotations

from typing import Any

import torch
from pytorch_ood.loss import LogitNorm
from torch import Tensor, nn
from torch.nn import functional as F

#: The name evaluation.json gives each loss node's `_target_`.
LOSS_NAMES = {"torch.nn.CrossEntropyLoss": "cross_entropy", "cifar_lightning.losses.logitnorm": "logitnorm"}


class SmoothedLogitNorm(nn.Module):
    """LogitNorm with a recipe's label smoothing (pytorch-ood's has none): its normalization, then smoothed
    cross-entropy."""

    def __init__(self, temperature: float, label_smoothing: float) -> None:
        super().__init__()
        self.t, self.label_smoothing = temperature, label_smoothing

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        norm = torch.norm(logits, p=2, dim=1, keepdim=True) + 1e-7
        return F.cross_entropy(logits / (self.t * norm), target, label_smoothing=self.label_smoothing)


def logitnorm(temperature: float = 0.04, label_smoothing: float = 0.0) -> nn.Module:
    """LogitNorm at temperature tau (the paper's 0.04 for CIFAR-10): pytorch-ood's loss, smoothed if asked."""
    if label_smoothing == 0:
        return LogitNorm(t=float(temperature))
    return SmoothedLogitNorm(float(temperature), float(label_smoothing))


def loss_name(loss_config: Any) -> str:
    """The name of the loss a run config's `loss` node builds (cross_entropy, logitnorm, or its target)."""
    target = (loss_config or {}).get("_target_", "torch.nn.CrossEntropyLoss")
    return LOSS_NAMES.get(target, target)
