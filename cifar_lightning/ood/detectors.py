"""OOD detectors on extracted features. Every detector maps Features to outlier scores, one per image,
where higher means "more likely out-of-distribution" (pytorch-ood's convention).

The modern detectors are pytorch-ood's (MaxSoftmax, EnergyBased, MaxLogit, Mahalanobis, KNN, ViM),
fitted with `fit_features` on features of the training split, so nothing is extracted twice. The
report's method, a layer's mean activation with "OOD when below a threshold", is a one-liner and
written here: its outlier score is the negated mean (or the mean itself with direction=above).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from pytorch_ood.detector import KNN, EnergyBased, Mahalanobis, MaxLogit, MaxSoftmax, ViM
from torch import Tensor, nn

from cifar_lightning.inference import Features

#: Detector names as configs spell them, and their labels in tables.
DETECTOR_LABELS = {
    "msp": "max softmax probability",
    "energy": "energy",
    "max_logit": "max logit",
    "mahalanobis": "Mahalanobis",
    "knn": "KNN",
    "vim": "ViM",
}
FITTED = ("mahalanobis", "knn", "vim")
DIRECTIONS = ("below", "above")

Scorer = Callable[[Features], Tensor]


@dataclass(frozen=True)
class DetectorSettings:
    """knn_k: the k-th neighbour's distance is the KNN score (50 is the paper's choice for CIFAR-10).
    vim_dim: ViM's principal subspace dimension; None = half the feature dimension."""

    knn_k: int = 50
    vim_dim: int | None = None


def _scores(values: Tensor) -> Tensor:
    return values.detach().double().cpu()


def build_detectors(
    names: Sequence[str], fit: Features, fit_labels: Tensor, head: nn.Linear, settings: DetectorSettings
) -> dict[str, Scorer]:
    """Each named detector as a function of Features; the fitted ones learn from `fit` (training features)."""
    detectors: dict[str, Scorer] = {}
    for name in names:
        if name == "msp":
            detectors[name] = lambda f: _scores(MaxSoftmax.score(f.logits))
        elif name == "energy":
            detectors[name] = lambda f: _scores(EnergyBased.score(f.logits))
        elif name == "max_logit":
            detectors[name] = lambda f: _scores(MaxLogit.score(f.logits))
        elif name == "mahalanobis":
            mahalanobis = Mahalanobis(None)
            mahalanobis.fit_features(fit.penultimate, fit_labels)
            detectors[name] = lambda f, d=mahalanobis: _scores(d.predict_features(f.penultimate))
        elif name == "knn":
            knn = KNN(None, k=settings.knn_k)
            knn.fit_features(fit.penultimate, fit_labels)
            detectors[name] = lambda f, d=knn: _scores(d.predict_features(f.penultimate))
        elif name == "vim":
            dim = settings.vim_dim or fit.penultimate.shape[1] // 2
            vim = ViM(None, d=dim, w=head.weight.detach().cpu(), b=_bias(head))
            vim.fit_features(fit.penultimate, fit_labels)
            detectors[name] = lambda f, d=vim: _scores(d.predict_features(f.penultimate))
        else:
            raise ValueError(f"unknown detector {name!r}; known: {', '.join(DETECTOR_LABELS)}")
    return detectors


def _bias(head: nn.Linear) -> Tensor:
    return head.bias.detach().cpu() if head.bias is not None else torch.zeros(head.out_features)


def mean_activation_score(features: Features, layer: str, direction: str = "below") -> Tensor:
    """The report's method as an outlier score: OOD when the layer's mean activation is below
    (direction=below) or above (direction=above) a threshold."""
    means = features.layer_means[layer].double()
    return -means if direction == "below" else means
