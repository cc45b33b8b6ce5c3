"""OOD metrics from outlier scores (higher = more likely OOD), and thresholds chosen on in-distribution validation
scores only. AUROC, AUPR-IN, AUPR-OUT and FPR@95%TPR are pytorch-ood's; FPR@95%TPR takes in-distribution as the
positive class, as the OOD literature does (ODIN, KNN, OpenOOD): the share of OOD images accepted at the threshold
that keeps 95% of the in-distribution images.
"""

import math

import torch
from pytorch_ood.metrics.functional import aupr, auroc, fpr_at_tpr
from torch import Tensor

from cifar_lightning.config.ood import ThresholdSettings


def choose_threshold(val_scores: Tensor, settings: ThresholdSettings) -> float:
    """The threshold of conf/ood's `threshold` rule, on validation scores alone."""
    if settings.method == "histogram":
        return histogram_threshold(val_scores, settings.bins, settings.min_fraction)
    return percentile_threshold(val_scores, settings.id_keep)


def percentile_threshold(val_scores: Tensor, id_keep: float = 0.95) -> float:
    """The smallest threshold that keeps at least `id_keep` of the validation images as in-distribution
    (score <= threshold): the ceil(id_keep * n)-th smallest validation score."""
    ordered = torch.sort(val_scores.double().flatten()).values
    rank = max(1, math.ceil(id_keep * len(ordered) - 1e-9))
    return ordered[rank - 1].item()


def histogram_threshold(val_scores: Tensor, bins: int = 50, min_fraction: float = 0.001) -> float:
    """The report's approach on validation scores alone: walking in from the most OOD-like bin, bins with under
    `min_fraction` of the images are stragglers; the threshold is the outer edge of the first that is not."""
    scores = val_scores.double().flatten()
    low, high = scores.min().item(), scores.max().item()
    if low == high:
        return high
    counts = torch.histc(scores, bins=bins, min=low, max=high)
    edges = torch.linspace(low, high, bins + 1, dtype=torch.float64)
    needed = min_fraction * len(scores)
    for index in range(bins - 1, -1, -1):
        if counts[index] >= needed and counts[index] > 0:
            return edges[index + 1].item()
    return high


def detection_rates(id_scores: Tensor, ood_scores: Tensor, threshold: float) -> dict[str, float]:
    """At a fixed threshold (OOD when score > threshold): the share of ID images kept, of OOD images caught,
    and the detection accuracy, their mean (the pooled accuracy when both sets have the same size)."""
    id_kept = (id_scores <= threshold).double().mean().item()
    ood_caught = (ood_scores > threshold).double().mean().item()
    return {"id_kept": id_kept, "ood_caught": ood_caught, "detection_acc": (id_kept + ood_caught) / 2}


def ood_metrics(id_scores: Tensor, ood_scores: Tensor, threshold: float | None = None) -> dict[str, float]:
    """AUROC, AUPR-IN, AUPR-OUT, FPR@95%TPR (ID positive) and, given a threshold, the detection rates."""
    id_scores, ood_scores = id_scores.double().flatten(), ood_scores.double().flatten()
    scores = torch.cat([id_scores, ood_scores])
    labels = torch.cat([torch.zeros(len(id_scores), dtype=torch.long), -torch.ones(len(ood_scores), dtype=torch.long)])
    # Roles swapped for FPR@95: pytorch-ood's positive class is OOD (labels < 0, high scores).
    id_positive_labels = torch.where(labels < 0, 0, -1)
    metrics = {
        "auroc": auroc(scores, labels).item(),
        "aupr_in": aupr(scores, labels, positive="id").item(),
        "aupr_out": aupr(scores, labels, positive="ood").item(),
        "fpr95": fpr_at_tpr(-scores, id_positive_labels, tpr=0.95).item(),
    }
    if threshold is not None:
        metrics.update(threshold=threshold, **detection_rates(id_scores, ood_scores, threshold))
    return metrics
