"""OOD detectors on extracted features. Every detector maps Features to outlier scores, one per image,
where higher means "more likely out-of-distribution" (pytorch-ood's convention).

Every modern detector is pytorch-ood's own class, fitted with its `fit_features`/`fit_logits` on features of the
training split, so nothing is extracted twice. Those that act on the penultimate features through the
classifier head (ReAct, ASH, SCALE, DICE, GradNorm on the last layer as in its paper, SHE, NNGuide, fDBD, ViM)
get the head as an nn.Linear rebuilt from the weight and bias kept in their state. A fitted detector is kept as
that state (tensors and numbers), from which `scorer` rebuilds it: evaluate.py saves the states, and predict.py
and serve.py score with the very detectors evaluate.py measured.

ODIN alone cannot work on features: it perturbs each input image along the gradient of the whole network. It
is an image detector: `score_images` runs it on the classifier, in batches, with a progress bar.

The report's method, a layer's mean activation with "OOD when below a threshold", is a one-liner and written
here: its outlier score is the negated mean (or the mean itself with direction=above).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pytorch_ood.detector import (
    ASH,
    DICE,
    GEN,
    KNN,
    ODIN,
    RMD,
    SCALE,
    SHE,
    EnergyBased,
    Entropy,
    GradNorm,
    KLMatching,
    Mahalanobis,
    MaxLogit,
    MaxSoftmax,
    NNGuide,
    ReAct,
    ViM,
    WeightedEBO,
    fDBD,
)
from rich.progress import track
from torch import Tensor, nn

from cifar_lightning.inference import Classifier, Features, batches

log = logging.getLogger(__name__)

#: Detector names as configs spell them, and the pytorch-ood class behind each.
DETECTOR_LABELS = {
    "msp": "max softmax probability (MaxSoftmax)",
    "energy": "energy (EnergyBased)",
    "max_logit": "max logit (MaxLogit)",
    "entropy": "entropy (Entropy)",
    "gen": "generalized entropy (GEN)",
    "weighted_ebo": "weighted energy (WeightedEBO)",
    "kl_matching": "KL matching (KLMatching)",
    "mahalanobis": "Mahalanobis",
    "rmd": "relative Mahalanobis (RMD)",
    "knn": "KNN",
    "vim": "ViM",
    "she": "simplified Hopfield energy (SHE)",
    "nnguide": "nearest-neighbour guidance (NNGuide)",
    "fdbd": "decision boundary distance (fDBD)",
    "react": "rectified activations (ReAct)",
    "ash": "activation shaping (ASH)",
    "scale": "activation scaling (SCALE)",
    "dice": "sparsified head (DICE)",
    "gradnorm": "gradient norm (GradNorm)",
    "odin": "ODIN",
}
#: Detectors that learn from the training split (the others only read their hyperparameters).
FITTED = ("kl_matching", "mahalanobis", "rmd", "knn", "vim", "she", "nnguide", "fdbd", "react", "dice")
#: Detectors that score images through the whole network (score_images), not features.
IMAGE_DETECTORS = ("odin",)
DIRECTIONS = ("below", "above")
#: The report's method by name, beside the detectors (ood_detectors.pt, ood.gallery_detectors).
MEAN_ACTIVATION = "mean_activation"
ASH_VARIANTS = tuple(ASH.variants)  # ash-s, ash-p, ash-b
GRADNORM_BATCH = 1000  # features per GradNorm step: one progress-bar tick, one vmap of per-sample gradients

Scorer = Callable[[Features], Tensor]
State = dict[str, Any]


@dataclass(frozen=True)
class DetectorSettings:
    """Every detector's hyperparameters; defaults are the papers' (or OpenOOD's) for CIFAR-10, as conf/ood/ says.

    knn_k: the k-th neighbour's distance is the KNN score. vim_dim: ViM's principal subspace; None = half the
    feature dimension. gen_gamma, gen_m: GEN's exponent and top-M classes (None = all). weighted_ebo_weights: one
    non-negative weight per class (None = 1 each, which is the energy score). react_percentile: ReAct clips at
    this percentile of the training activations. ash_variant, ash_percentile: ASH's variant and the share of
    activations it prunes. scale_percentile: the share SCALE treats as pruned to compute its factor. dice_p: the
    share of head weights DICE masks. nnguide_k, nnguide_bank: NNGuide's neighbours and the share of the training
    features in its bank (at least k of them). gradnorm_temperature, odin_temperature, odin_eps: softmax
    temperatures, and ODIN's step on the [0, 1] pixel scale."""

    knn_k: int = 50
    vim_dim: int | None = None
    gen_gamma: float = 0.1
    gen_m: int | None = None
    weighted_ebo_weights: tuple[float, ...] | None = None
    react_percentile: float = 0.9
    ash_variant: str = "ash-b"
    ash_percentile: float = 0.9
    scale_percentile: float = 0.85
    dice_p: float = 0.9
    nnguide_k: int = 100
    nnguide_bank: float = 0.01
    gradnorm_temperature: float = 1.0
    odin_temperature: float = 1000.0
    odin_eps: float = 0.0014


class DetectorFitError(ValueError):
    """pytorch-ood refused to fit a detector on this model's training features (e.g. SHE when the model gets no
    training image of some class right): the detector is left out of the tables, with this reason."""


@dataclass(frozen=True)
class Fitted:
    """A detector fitted on training features: its state, its scoring function and the seconds its fit took."""

    state: State
    score: Scorer
    fit_seconds: float


def _scores(values: Tensor) -> Tensor:
    return values.detach().double().cpu()


def _head_state(head: nn.Linear) -> State:
    bias = head.bias.detach().cpu() if head.bias is not None else torch.zeros(head.out_features)
    return {"w": head.weight.detach().cpu().clone(), "b": bias.clone()}


def _linear(state: State) -> nn.Linear:
    """The classifier head rebuilt from a state's weight and bias. Its parameters need no gradient, so it records
    no autograd graph: the features it reads come from inference mode (Classifier.features), which autograd may
    not save (SHE calls it outside no_grad). GradNorm still differentiates its weight: torch.func ignores
    requires_grad."""
    weight, bias = state["w"], state["b"]
    head = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    return head.requires_grad_(False).eval()


def _on_maps(head: nn.Linear) -> Callable[[Tensor], Tensor]:
    """The head as ASH and SCALE call it: on (N, D, 1, 1) feature maps, the shape they shape activations in."""
    return lambda maps: head(maps.flatten(1))


def _maps(features: Tensor) -> Tensor:
    return features[:, :, None, None]


def _kept(dimension: int, percentile: float) -> int:
    """Activations ASH and SCALE keep of `dimension` at `percentile` (their own rounding)."""
    return dimension - round(dimension * percentile)


def _unlabelled(count: int) -> Tensor:
    return torch.zeros(count, dtype=torch.long)


def fit_state(name: str, fit: Features, fit_labels: Tensor, head: nn.Linear, settings: DetectorSettings) -> State:
    """What defines the named detector once fitted on `fit` (training features): tensors and numbers only, so that
    it can be saved (ood/saved.py) and rebuilt by `scorer` without refitting. DetectorFitError when pytorch-ood
    refuses to fit it on these features."""
    if name not in DETECTOR_LABELS:
        raise ValueError(f"unknown detector {name!r}; known: {', '.join(DETECTOR_LABELS)}")
    try:
        return _fit_state(name, fit, fit_labels, head, settings)
    except (ValueError, AssertionError) as exc:  # pytorch-ood's own checks, e.g. SHE's "No correct predictions"
        raise DetectorFitError(f"{name}: {exc or type(exc).__name__}") from exc


def _fit_state(name: str, fit: Features, fit_labels: Tensor, head: nn.Linear, settings: DetectorSettings) -> State:
    features = fit.penultimate
    if name in ("msp", "energy", "max_logit", "entropy"):
        return {}
    if name == "gen":
        return {"gamma": float(settings.gen_gamma), "m": settings.gen_m}
    if name == "weighted_ebo":
        weights = settings.weighted_ebo_weights or (1.0,) * head.out_features
        return {"weights": torch.tensor(weights, dtype=torch.float32)}
    if name == "kl_matching":
        klm = KLMatching(None).fit_logits(fit.logits, fit_labels)
        return {"classes": torch.tensor([int(k) for k in klm.dists]),
                "dists": torch.stack([d.detach() for d in klm.dists.values()])}  # fmt: skip
    if name == "mahalanobis":
        mahalanobis = Mahalanobis(None).fit_features(features, fit_labels)
        return {"mu": mahalanobis.mu, "precision": mahalanobis.precision}
    if name == "rmd":
        rmd = RMD(None).fit_features(features, fit_labels)
        return {"mu": rmd.mu, "precision": rmd.precision, "background_mu": rmd.background_mu,
                "background_precision": rmd.background_precision}  # fmt: skip
    if name == "knn":  # a nearest-neighbour index is its data: the training features themselves
        return {"k": settings.knn_k, "features": features.contiguous()}
    if name == "vim":
        dim = settings.vim_dim or features.shape[1] // 2
        weights = _head_state(head)
        vim = ViM(None, d=dim, w=weights["w"], b=weights["b"]).fit_features(features, fit_labels)
        return {"d": vim.d, "w": vim.w, "b": vim.b, "principal_subspace": vim.principal_subspace, "alpha": vim.alpha}
    weights = _head_state(head)
    if name == "she":
        return {**weights, "patterns": SHE(None, _linear(weights)).fit_features(features, fit_labels).patterns}
    if name == "nnguide":  # its bank: a share of the training features (seeded draw), at least k of them
        count = min(len(features), max(settings.nnguide_k, round(settings.nnguide_bank * len(features))))
        bank = features[torch.randperm(len(features), generator=torch.Generator().manual_seed(0))[:count]]
        NNGuide(None, _linear(weights), k=settings.nnguide_k).fit_features(bank, _unlabelled(len(bank)))  # checks k
        return {**weights, "k": settings.nnguide_k, "features": bank.contiguous()}
    if name == "fdbd":
        return {**weights, "train_mean": fDBD(None, _linear(weights)).fit_features(features).train_mean}
    if name == "react":
        react = ReAct(None, _linear(weights), percentile=settings.react_percentile)
        return {**weights, "threshold": react.fit_feature_maps(features, fit_labels).threshold}
    if name == "dice":
        dice = DICE(None, weights["w"], weights["b"], p=settings.dice_p).fit_features(features, fit_labels)
        return {**weights, "p": float(settings.dice_p), "mean_activation": dice.mean_activation}
    if name in ("ash", "scale"):
        percentile = settings.ash_percentile if name == "ash" else settings.scale_percentile
        if _kept(features.shape[1], percentile) < 1:
            raise ValueError(f"percentile {percentile} keeps none of the {features.shape[1]} penultimate features")
        variant = {"variant": settings.ash_variant} if name == "ash" else {}
        return {**weights, **variant, "percentile": float(percentile)}
    if name == "gradnorm":
        return {**weights, "temperature": float(settings.gradnorm_temperature)}
    return image_state(name, settings)


def image_state(name: str, settings: DetectorSettings) -> State:
    """An image detector's state: its hyperparameters alone (ODIN learns nothing from the training split)."""
    if name != "odin":
        raise ValueError(f"{name} is not an image detector; image detectors: {', '.join(IMAGE_DETECTORS)}")
    return {"temperature": float(settings.odin_temperature), "eps": float(settings.odin_eps)}


def scorer(name: str, state: State, progress: bool = False) -> Scorer:
    """The named detector, rebuilt from its fit_state, as a function of Features (progress: GradNorm's bar).

    Detectors whose fitted statistic is a mean of training features (DICE, fDBD) are rebuilt by fitting them on
    that mean as a single row, which reproduces it exactly; NNGuide refits on its saved bank."""
    if name in IMAGE_DETECTORS:
        raise ValueError(f"{name} scores images, not features: use score_images")
    if name in ("msp", "energy", "max_logit", "entropy"):
        score = {"msp": MaxSoftmax.score, "energy": EnergyBased.score, "max_logit": MaxLogit.score,
                 "entropy": Entropy.score}[name]  # fmt: skip
        return lambda f: _scores(score(f.logits))
    if name == "gen":
        gen = GEN(None, gamma=float(state["gamma"]), M=None if state["m"] is None else int(state["m"]))
        return lambda f: _scores(gen.predict_logits(f.logits))
    if name == "weighted_ebo":
        weighted = WeightedEBO(None, state["weights"])
        return lambda f: _scores(weighted.predict_logits(f.logits))
    if name == "kl_matching":
        klm = KLMatching(None)
        klm.dists = nn.ParameterDict({str(int(k)): nn.Parameter(d, requires_grad=False)
                                      for k, d in zip(state["classes"], state["dists"], strict=True)})  # fmt: skip
        return lambda f: _scores(klm.predict_logits(f.logits))
    if name == "mahalanobis":
        mahalanobis = Mahalanobis(None)
        mahalanobis.mu, mahalanobis.precision = state["mu"], state["precision"]
        return lambda f: _scores(mahalanobis.predict_features(f.penultimate))
    if name == "rmd":
        rmd = RMD(None)
        rmd.mu, rmd.precision = state["mu"], state["precision"]
        rmd.background_mu, rmd.background_precision = state["background_mu"], state["background_precision"]
        return lambda f: _scores(rmd.predict_features(f.penultimate))
    if name == "knn":
        features = state["features"]
        knn = KNN(None, k=int(state["k"])).fit_features(features, _unlabelled(len(features)))
        return lambda f: _scores(knn.predict_features(f.penultimate))
    if name == "vim":
        vim = ViM(None, d=int(state["d"]), w=state["w"], b=state["b"])
        vim.principal_subspace, vim.alpha = state["principal_subspace"], float(state["alpha"])
        return lambda f: _scores(vim.predict_features(f.penultimate))
    if name == "she":
        she = SHE(None, _linear(state))
        she.patterns = state["patterns"]
        return lambda f: _scores(she.predict_features(f.penultimate))
    if name == "nnguide":
        bank = state["features"]
        nnguide = NNGuide(None, _linear(state), k=int(state["k"])).fit_features(bank, _unlabelled(len(bank)))
        return lambda f: _scores(nnguide.predict_features(f.penultimate))
    if name == "fdbd":
        fdbd = fDBD(None, _linear(state)).fit_features(state["train_mean"][None])
        return lambda f: _scores(fdbd.predict_features(f.penultimate))
    if name == "react":
        react = ReAct(None, _linear(state), threshold=float(state["threshold"]))
        return lambda f: _scores(react.predict_feature_maps(f.penultimate))
    if name == "dice":
        dice = DICE(None, state["w"], state["b"], p=float(state["p"]))
        dice.fit_features(state["mean_activation"][None], _unlabelled(1))
        return lambda f: _scores(dice.predict_features(f.penultimate))
    if name == "ash":
        ash = ASH(None, _on_maps(_linear(state)), variant=str(state["variant"]), percentile=float(state["percentile"]))
        return lambda f: _scores(ash.predict_feature_maps(_maps(f.penultimate)))
    if name == "scale":
        scale = SCALE(None, _on_maps(_linear(state)), percentile=float(state["percentile"]))
        return lambda f: _scores(scale.predict_feature_maps(_maps(f.penultimate.contiguous())))
    if name == "gradnorm":
        gradnorm = GradNorm(_linear(state), param_filter=lambda parameter: parameter == "weight",
                            micro_batch_size=GRADNORM_BATCH, temperature=float(state["temperature"]))  # fmt: skip
        return lambda f: _gradnorm_scores(gradnorm, f.penultimate, progress)
    raise ValueError(f"unknown detector {name!r}; known: {', '.join(DETECTOR_LABELS)}")


def _gradnorm_scores(gradnorm: GradNorm, features: Tensor, progress: bool) -> Tensor:
    """GradNorm on the head's weight, in batches with a progress bar. The features may come from inference mode
    (Classifier.features): cloned outside it, they can be differentiated through."""
    starts = range(0, len(features), GRADNORM_BATCH)
    scores = []
    with torch.inference_mode(False):
        for start in track(starts, description="GradNorm", total=len(starts), disable=not progress):
            scores.append(gradnorm.predict(features[start : start + GRADNORM_BATCH].clone()))
    return _scores(torch.cat(scores)) if scores else torch.empty(0, dtype=torch.float64)


def score_images(
    name: str,
    state: State,
    classifier: Classifier,
    images: Tensor,
    batch_size: int = 1000,
    progress: bool = False,
    description: str = "ODIN",
) -> Tensor:
    """An image detector's (ODIN's) outlier scores of uint8 images (N, 3, H, W), through the classifier's whole
    network in batches of `batch_size` (inference.batches, with its progress bar). ODIN's step `eps` is on the
    [0, 1] pixel scale: its gradient sign is divided by the classifier's normalization std, as in the paper."""
    if name not in IMAGE_DETECTORS:
        raise ValueError(f"{name} scores features, not images: use scorer")
    odin = ODIN(classifier.model, eps=float(state["eps"]), temperature=float(state["temperature"]),
                norm_std=list(classifier.std))  # fmt: skip
    scores = [odin.predict(classifier.normalize(batch))
              for batch in batches(images, batch_size, classifier.device, progress, description)]  # fmt: skip
    return _scores(torch.cat(scores)) if scores else torch.empty(0, dtype=torch.float64)


def build_detectors(
    names: Sequence[str],
    fit: Features,
    fit_labels: Tensor,
    head: nn.Linear,
    settings: DetectorSettings,
    progress: bool = False,
) -> tuple[dict[str, Fitted], dict[str, str]]:
    """Each named detector fitted on `fit` (training features): its state, scoring function and fit seconds; and
    the detectors pytorch-ood refused to fit on these features, with the reason (logged as a warning)."""
    built, refused = {}, {}
    for name in names:
        start = time.perf_counter()
        try:
            state = fit_state(name, fit, fit_labels, head, settings)
        except DetectorFitError as exc:
            refused[name] = str(exc)
            log.warning("OOD detector %s left out: pytorch-ood could not fit it on the training split (%s)", name, exc)
            continue
        built[name] = Fitted(state, scorer(name, state, progress), time.perf_counter() - start)
    return built, refused


def mean_activation_score(features: Features, layer: str, direction: str = "below") -> Tensor:
    """The report's method as an outlier score: OOD when the layer's mean activation is below
    (direction=below) or above (direction=above) a threshold."""
    means = features.layer_means[layer].double()
    return -means if direction == "below" else means
