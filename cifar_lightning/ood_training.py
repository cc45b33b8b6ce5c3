"""Training-time OOD methods that need no outside data, as options any recipe can take (module settings):

- T2FNorm (Regmi et al., 2023): the classifier head trains on penultimate features scaled to norm 1/tau; evaluation
  feeds it the features divided by tau, unnormalized, as OpenOOD's `T2FNormNet.forward_ood_inference` does, so
  their norm (lower on unfamiliar images) reaches the logits. With a bias-free head (FastNet) the predicted class
  is the same either way.
- RotPred (Hendrycks et al., NeurIPS 2019, as OpenOOD v1.5 trains it): an auxiliary linear head predicts each
  image's rotation (0, 90, 180, 270 degrees) from the penultimate features; a step trains on the batch and its three
  rotations (4x the images), the class loss on the unrotated images only. Its detector (ood.detectors: rotpred)
  scores an image by how confidently the network classifies it and how well it tells its rotations apart.

LogitNorm, the third such method, is a loss (conf/loss/logitnorm.yaml).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cifar_lightning.models import classifier_head

#: Rotations RotPred predicts, in quarter turns.
ROTATIONS = 4
#: The state_dict prefix of the rotation head in a checkpoint (beside the model's `model.`).
ROTATION_HEAD = "rotation_head"


class T2FNormHook:
    """A forward pre-hook on the classifier head: normalize/tau while training, divide by tau in evaluation."""

    def __init__(self, tau: float) -> None:
        self.tau = float(tau)

    def __call__(self, head: nn.Module, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        features = inputs[0]
        if head.training:
            features = F.normalize(features, dim=-1)
        return (features / self.tau, *inputs[1:])


def attach_t2fnorm(model: nn.Module, tau: float | None) -> nn.Module:
    """The model with T2FNorm on its classifier head (in place; None: unchanged). Hooks are not saved in a state_dict:
    train.py's module and checkpoints.build_model both attach it from the run config's module.t2fnorm_tau."""
    if tau is not None:
        classifier_head(model).register_forward_pre_hook(T2FNormHook(tau))
    return model


def rotated(images: Tensor) -> tuple[Tensor, Tensor]:
    """The batch and its 90, 180 and 270-degree rotations, stacked in that order, and their rotation labels."""
    stacked = torch.cat([torch.rot90(images, k, dims=(2, 3)) for k in range(ROTATIONS)])
    labels = torch.arange(ROTATIONS, device=images.device).repeat_interleave(len(images))
    return stacked, labels


@contextmanager
def head_inputs(model: nn.Module) -> Iterator[list[Tensor]]:
    """Inside the block, each forward pass appends the classifier head's input (after T2FNorm, as the head sees it)."""
    captured: list[Tensor] = []
    handle = classifier_head(model).register_forward_pre_hook(lambda module, inputs: captured.append(inputs[0]))
    try:
        yield captured
    finally:
        handle.remove()


def rotation_head(model: nn.Module) -> nn.Linear:
    """A fresh rotation classifier on the model's penultimate features."""
    return nn.Linear(classifier_head(model).in_features, ROTATIONS)


def rotpred_forward(model: nn.Module, head: nn.Linear, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Class logits of the 4N rotated images, rotation logits, and rotation labels (one pass through the model)."""
    stacked, labels = rotated(images)
    with head_inputs(model) as captured:
        logits = model(stacked)
    return logits, head(captured[-1].flatten(1)), labels


def rotpred_scores(class_logits: Tensor, rotation_logits: Tensor, rotation_labels: Tensor) -> Tensor:
    """OpenOOD's RotPred outlier score (higher = more OOD) of N images from their 4N rotated passes: the negated
    KL divergence of the unrotated class distribution from uniform, plus the mean rotation cross-entropy."""
    n = len(rotation_labels) // ROTATIONS
    log_probs = F.log_softmax(class_logits[:n].double(), dim=1)
    # KL(uniform || p) summed over classes, as torch's kl_div(log p, uniform) computes it
    classes = log_probs.shape[1]
    uniform = torch.full_like(log_probs, 1.0 / classes)
    confidence = F.kl_div(log_probs, uniform, reduction="none").sum(dim=1)
    rotation_loss = F.cross_entropy(rotation_logits.double(), rotation_labels, reduction="none")
    return -(confidence - rotation_loss.view(ROTATIONS, n).mean(dim=0))
