"""OOD detectors on extracted features. Every detector maps Features to outlier scores, one per image,
where higher means "more likely out-of-distribution" (pytorch-ood's convention).

The modern detectors are pytorch-ood's (MaxSoftmax, EnergyBased, MaxLogit, Mahalanobis, KNN, ViM),
fitted with `fit_features` on features of the training split, so nothing is extracted twice. A fitted
detector is kept as its state (tensors and numbers), from which `scorer` rebuilds it: evaluate.py saves the
states, and predict.py and serve.py score with the very detectors evaluate.py measured. The
report's method, a layer's mean activation with "OOD when below a threshold", is a one-liner and
written here: its outlier score is the negated mean (or the mean itself with direction=above).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

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
State = dict[str, Any]


@dataclass(frozen=True)
class DetectorSettings:
    """knn_k: the k-th neighbour's distance is the KNN score (50 is the paper's choice for CIFAR-10).
    vim_dim: ViM's principal subspace dimension; None = half the feature dimension."""

    knn_k: int = 50
    vim_dim: int | None = None


def _scores(values: Tensor) -> Tensor:
    return values.detach().double().cpu()


def fit_state(name: str, fit: Features, fit_labels: Tensor, head: nn.Linear, settings: DetectorSettings) -> State:
    """What defines the named detector once fitted on `fit` (training features): tensors and numbers only, so that
    it can be saved (ood/saved.py) and rebuilt by `scorer` without refitting. Empty for the logit-only detectors."""
    if name in ("msp", "energy", "max_logit"):
        return {}
    if name == "mahalanobis":
        mahalanobis = Mahalanobis(None).fit_features(fit.penultimate, fit_labels)
        return {"mu": mahalanobis.mu, "precision": mahalanobis.precision}
    if name == "knn":  # a nearest-neighbour index is its data: the training features themselves
        return {"k": settings.knn_k, "features": fit.penultimate.contiguous()}
    if name == "vim":
        dim = settings.vim_dim or fit.penultimate.shape[1] // 2
        vim = ViM(None, d=dim, w=head.weight.detach().cpu(), b=_bias(head)).fit_features(fit.penultimate, fit_labels)
        return {"d": vim.d, "w": vim.w, "b": vim.b, "principal_subspace": vim.principal_subspace, "alpha": vim.alpha}
    raise ValueError(f"unknown detector {name!r}; known: {', '.join(DETECTOR_LABELS)}")


def scorer(name: str, state: State) -> Scorer:
    """The named detector, rebuilt from its fit_state, as a function of Features."""
    if name == "msp":
        return lambda f: _scores(MaxSoftmax.score(f.logits))
    if name == "energy":
        return lambda f: _scores(EnergyBased.score(f.logits))
    if name == "max_logit":
        return lambda f: _scores(MaxLogit.score(f.logits))
    if name == "mahalanobis":
        mahalanobis = Mahalanobis(None)
        mahalanobis.mu, mahalanobis.precision = state["mu"], state["precision"]
        return lambda f: _scores(mahalanobis.predict_features(f.penultimate))
    if name == "knn":
        features = state["features"]
        knn = KNN(None, k=int(state["k"])).fit_features(features, torch.zeros(len(features), dtype=torch.long))
        return lambda f: _scores(knn.predict_features(f.penultimate))
    if name == "vim":
        vim = ViM(None, d=int(state["d"]), w=state["w"], b=state["b"])
        vim.principal_subspace, vim.alpha = state["principal_subspace"], float(state["alpha"])
        return lambda f: _scores(vim.predict_features(f.penultimate))
    raise ValueError(f"unknown detector {name!r}; known: {', '.join(DETECTOR_LABELS)}")


def build_detectors(
    names: Sequence[str], fit: Features, fit_labels: Tensor, head: nn.Linear, settings: DetectorSettings
) -> dict[str, tuple[State, Scorer]]:
    """Each named detector fitted on `fit` (training features): its state and its scoring function."""
    built = {}
    for name in names:
        state = fit_state(name, fit, fit_labels, head, settings)
        built[name] = (state, scorer(name, state))
    return built


def _bias(head: nn.Linear) -> Tensor:
    return head.bias.detach().cpu() if head.bias is not None else torch.zeros(head.out_features)


def mean_activation_score(features: Features, layer: str, direction: str = "below") -> Tensor:
    """The report's method as an outlier score: OOD when the layer's mean activation is below
    (direction=below) or above (direction=above) a threshold."""
    means = features.layer_means[layer].double()
    return -means if direction == "below" else means
