"""OOD detectors, each pytorch-ood's own class fitted on training features: Features -> outlier scores, higher
meaning more likely OOD. A fitted detector is kept as its state (tensors and numbers) that `scorer` rebuilds it
from, so predict.py and serve.py score with the very detectors evaluate.py measured and saved. ODIN alone perturbs
each image through the whole network, and RotPred scores its four rotations with the model's rotation head
(`score_images`)."""

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytorch_ood.detector as pod
import torch
from rich.progress import track
from torch import Tensor, nn

from cifar_lightning.checkpoints import load_checkpoint
from cifar_lightning.config.data import EVAL_BATCH_SIZE
from cifar_lightning.config.ood import DETECTOR_LABELS, IMAGE_DETECTORS, DetectorHyperparameters
from cifar_lightning.config.ood import MEAN_ACTIVATION as MEAN_ACTIVATION  # the report's method, by name
from cifar_lightning.inference import Classifier, Features, batches
from cifar_lightning.ood_training import ROTATION_HEAD, rotpred_forward, rotpred_scores

log = logging.getLogger(__name__)

#: Detectors that learn from the training split (the others only read their hyperparameters).
FITTED = ("kl_matching", "mahalanobis", "rmd", "knn", "vim", "she", "nnguide", "fdbd", "react", "dice")
#: The class-conditional Gaussians' fitted statistics.
GAUSSIANS = {"mahalanobis": ("mu", "precision"), "rmd": ("mu", "precision", "background_mu", "background_precision")}
GRADNORM_BATCH = 1000  # features per GradNorm step: one progress-bar tick, one vmap of per-sample gradients

Scorer = Callable[[Features], Tensor]
State = dict[str, Any]
Hyper = DetectorHyperparameters


class DetectorFitError(ValueError):
    """A detector cannot be fitted for this model or these training features (SHE: a class with no correctly
    classified image; RotPred: a model trained without a rotation head)."""


@dataclass(frozen=True)
class Fitted:
    """A detector fitted on training features: its state, its scoring function and the seconds its fit took."""

    state: State
    score: Scorer
    fit_seconds: float


def _scores(values: Tensor) -> Tensor:
    return values.detach().double().cpu()


def _joined(parts: list[Tensor]) -> Tensor:
    return _scores(torch.cat(parts)) if parts else torch.empty(0, dtype=torch.float64)


def _head_state(head: nn.Linear) -> State:
    bias = head.bias.detach().cpu() if head.bias is not None else torch.zeros(head.out_features)
    return {"w": head.weight.detach().cpu().clone(), "b": bias.clone()}


def _linear(state: State) -> nn.Linear:
    """The classifier head from a state's weight and bias, without autograd (its features come from inference mode);
    GradNorm still differentiates it: torch.func ignores that."""
    weight, bias = state["w"], state["b"]
    head = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    return head.requires_grad_(False).eval()


def _on_maps(head: nn.Linear) -> Callable[[Tensor], Tensor]:
    """The head as ASH and SCALE call it: on (N, D, 1, 1) feature maps, the shape they shape activations in."""
    return lambda maps: head(maps.flatten(1))


def _unlabelled(count: int) -> Tensor:
    return torch.zeros(count, dtype=torch.long)


def fit_state(name: str, fit: Features, fit_labels: Tensor, head: nn.Linear, settings: Hyper) -> State:
    """The named detector fitted on training features, as its state; DetectorFitError when pytorch-ood refuses."""
    if name not in DETECTOR_LABELS:
        raise ValueError(f"unknown detector {name!r}; known: {', '.join(DETECTOR_LABELS)}")
    try:
        return _fit_state(name, fit, fit_labels, head, settings)
    except (ValueError, AssertionError) as exc:  # pytorch-ood's own checks, e.g. SHE's "No correct predictions"
        raise DetectorFitError(f"{name}: {exc or type(exc).__name__}") from exc


def _fit_state(name: str, fit: Features, fit_labels: Tensor, head: nn.Linear, settings: Hyper) -> State:
    features = fit.penultimate
    if name in ("msp", "energy", "max_logit", "entropy"):
        return {}
    if name == "gen":
        return {"gamma": float(settings.gen_gamma), "m": settings.gen_m}
    if name == "weighted_ebo":
        weights = settings.weighted_ebo_weights or (1.0,) * head.out_features
        return {"weights": torch.tensor(weights, dtype=torch.float32)}
    if name == "kl_matching":
        dists = pod.KLMatching(None).fit_logits(fit.logits, fit_labels).dists
        return {
            "classes": torch.tensor([int(k) for k in dists]),
            "dists": torch.stack([d.detach() for d in dists.values()]),
        }
    if name in GAUSSIANS:
        detector = (pod.Mahalanobis if name == "mahalanobis" else pod.RMD)(None).fit_features(features, fit_labels)
        return {key: getattr(detector, key) for key in GAUSSIANS[name]}
    if name == "knn":  # a nearest-neighbour index is its data: the training features themselves
        return {"k": settings.knn_k, "features": features.contiguous()}
    if name == "vim":
        dim = settings.vim_dim or features.shape[1] // 2
        weights = _head_state(head)
        vim = pod.ViM(None, d=dim, w=weights["w"], b=weights["b"]).fit_features(features, fit_labels)
        return {"d": vim.d, "w": vim.w, "b": vim.b, "principal_subspace": vim.principal_subspace, "alpha": vim.alpha}
    weights = _head_state(head)
    if name == "she":
        return {**weights, "patterns": pod.SHE(None, _linear(weights)).fit_features(features, fit_labels).patterns}
    if name == "nnguide":  # its bank: a share of the training features (seeded draw), at least k of them
        count = min(len(features), max(settings.nnguide_k, round(settings.nnguide_bank * len(features))))
        bank = features[torch.randperm(len(features), generator=torch.Generator().manual_seed(0))[:count]]
        pod.NNGuide(None, _linear(weights), k=settings.nnguide_k).fit_features(bank, _unlabelled(len(bank)))  # checks k
        return {**weights, "k": settings.nnguide_k, "features": bank.contiguous()}
    if name == "fdbd":
        return {**weights, "train_mean": pod.fDBD(None, _linear(weights)).fit_features(features).train_mean}
    if name == "react":
        react = pod.ReAct(None, _linear(weights), percentile=settings.react_percentile)
        return {**weights, "threshold": react.fit_feature_maps(features, fit_labels).threshold}
    if name == "dice":
        dice = pod.DICE(None, weights["w"], weights["b"], p=settings.dice_p).fit_features(features, fit_labels)
        return {**weights, "p": float(settings.dice_p), "mean_activation": dice.mean_activation}
    if name in ("ash", "scale"):
        percentile = settings.ash_percentile if name == "ash" else settings.scale_percentile
        if features.shape[1] - round(features.shape[1] * percentile) < 1:  # what ASH and SCALE keep, rounded so
            raise ValueError(f"percentile {percentile} keeps none of the {features.shape[1]} penultimate features")
        variant = {"variant": settings.ash_variant} if name == "ash" else {}
        return {**weights, **variant, "percentile": float(percentile)}
    if name == "gradnorm":
        return {**weights, "temperature": float(settings.gradnorm_temperature)}
    return image_state(name, settings)


def image_state(name: str, settings: Hyper, checkpoint: str | None = None) -> State:
    """An image detector's state: ODIN's hyperparameters (it learns nothing from the training split); RotPred's
    rotation head, read from the checkpoint (DetectorFitError for a model trained without one)."""
    if name == "odin":
        return {"temperature": float(settings.odin_temperature), "eps": float(settings.odin_eps)}
    if name != "rotpred":
        raise ValueError(f"{name} is not an image detector; image detectors: {', '.join(IMAGE_DETECTORS)}")
    weights = load_checkpoint(checkpoint)["state_dict"] if checkpoint is not None else {}
    if f"{ROTATION_HEAD}.weight" not in weights:
        raise DetectorFitError("the model has no rotation head: train it with module.rotpred_weight=1 for RotPred")
    return {"w": weights[f"{ROTATION_HEAD}.weight"].cpu(), "b": weights[f"{ROTATION_HEAD}.bias"].cpu()}


def check_image_state(name: str, state: State) -> None:
    """Raise (KeyError, TypeError, ValueError) when a saved image detector's state cannot score."""
    if name == "odin":
        _ = float(state["eps"]) + float(state["temperature"])
    elif not (state["w"].ndim == 2 and state["b"].shape == state["w"].shape[:1]):
        raise ValueError("the rotation head's weight and bias do not fit together")


def scorer(name: str, state: State, progress: bool = False) -> Scorer:
    """The named detector rebuilt from its fit_state, as a function of Features (progress: GradNorm's bar). DICE and
    fDBD refit on their saved mean as a single row, which reproduces it exactly; KNN and NNGuide on their features."""
    if name in IMAGE_DETECTORS:
        raise ValueError(f"{name} scores images, not features: use score_images")
    score = _predictor(name, state, progress)
    return lambda features: _scores(score(features))


def _predictor(name: str, state: State, progress: bool) -> Scorer:
    logit_scores = {"msp": pod.MaxSoftmax, "energy": pod.EnergyBased, "max_logit": pod.MaxLogit, "entropy": pod.Entropy}
    if name in logit_scores:
        return lambda f: logit_scores[name].score(f.logits)
    if name == "gen":
        gen = pod.GEN(None, gamma=float(state["gamma"]), M=None if state["m"] is None else int(state["m"]))
        return lambda f: gen.predict_logits(f.logits)
    if name == "weighted_ebo":
        weighted = pod.WeightedEBO(None, state["weights"])
        return lambda f: weighted.predict_logits(f.logits)
    if name == "kl_matching":
        klm = pod.KLMatching(None)
        pairs = zip(state["classes"], state["dists"], strict=True)
        klm.dists = nn.ParameterDict({str(int(k)): nn.Parameter(d, requires_grad=False) for k, d in pairs})
        return lambda f: klm.predict_logits(f.logits)
    if name not in DETECTOR_LABELS:
        raise ValueError(f"unknown detector {name!r}; known: {', '.join(DETECTOR_LABELS)}")
    # The rest read the penultimate features; those after vim through the classifier head.
    head = _linear(state) if name not in (*GAUSSIANS, "knn", "vim") else None
    if name in GAUSSIANS:
        detector = pod.Mahalanobis(None) if name == "mahalanobis" else pod.RMD(None)
        for key in GAUSSIANS[name]:
            setattr(detector, key, state[key])
    elif name in ("knn", "nnguide"):
        bank = state["features"]
        knn = pod.KNN(None, k=int(state["k"])) if name == "knn" else pod.NNGuide(None, head, k=int(state["k"]))
        detector = knn.fit_features(bank, _unlabelled(len(bank)))
    elif name == "vim":
        detector = pod.ViM(None, d=int(state["d"]), w=state["w"], b=state["b"])
        detector.principal_subspace, detector.alpha = state["principal_subspace"], float(state["alpha"])
    elif name == "she":
        detector = pod.SHE(None, head)
        detector.patterns = state["patterns"]
    elif name == "fdbd":
        detector = pod.fDBD(None, head).fit_features(state["train_mean"][None])
    elif name == "dice":
        detector = pod.DICE(None, state["w"], state["b"], p=float(state["p"]))
        detector.fit_features(state["mean_activation"][None], _unlabelled(1))
    if name in (*GAUSSIANS, "knn", "nnguide", "vim", "she", "fdbd", "dice"):
        return lambda f: detector.predict_features(f.penultimate)
    if name == "react":
        react = pod.ReAct(None, head, threshold=float(state["threshold"]))
        return lambda f: react.predict_feature_maps(f.penultimate)
    if name == "ash":
        ash = pod.ASH(None, _on_maps(head), variant=str(state["variant"]), percentile=float(state["percentile"]))
        return lambda f: ash.predict_feature_maps(f.penultimate[:, :, None, None])
    if name == "scale":
        scale = pod.SCALE(None, _on_maps(head), percentile=float(state["percentile"]))
        return lambda f: scale.predict_feature_maps(f.penultimate.contiguous()[:, :, None, None])
    temperature = float(state["temperature"])  # GradNorm, on the head's weight as in its paper
    on_weight = {"param_filter": lambda parameter: parameter == "weight", "micro_batch_size": GRADNORM_BATCH}
    gradnorm = pod.GradNorm(head, temperature=temperature, **on_weight)
    return lambda f: _gradnorm_scores(gradnorm, f.penultimate, progress)


def _gradnorm_scores(gradnorm: pod.GradNorm, features: Tensor, progress: bool) -> Tensor:
    """GradNorm in batches with a progress bar, on features cloned out of inference mode to be differentiated."""
    starts = range(0, len(features), GRADNORM_BATCH)
    scores = []
    with torch.inference_mode(False):
        for start in track(starts, description="GradNorm", total=len(starts), disable=not progress):
            scores.append(gradnorm.predict(features[start : start + GRADNORM_BATCH].clone()))
    return _joined(scores)


def score_images(
    name: str,
    state: State,
    classifier: Classifier,
    images: Tensor,
    batch_size: int = EVAL_BATCH_SIZE,
    progress: bool = False,
    description: str = "ODIN",
) -> Tensor:
    """ODIN's or RotPred's outlier scores of uint8 images (N, 3, H, W) through the classifier's whole network, in
    batches. ODIN's step `eps` is on the [0, 1] pixel scale (the gradient sign divided by the normalization std, as in
    the paper); RotPred passes each image's four rotations (ood_training.rotpred_scores)."""
    if name not in IMAGE_DETECTORS:
        raise ValueError(f"{name} scores features, not images: use scorer")
    if name == "rotpred":
        head, model = _linear(state), classifier.model.eval()
        with torch.inference_mode():
            scores = [
                rotpred_scores(*rotpred_forward(model, head.to(batch.device), classifier.normalize(batch)))
                for batch in batches(images, max(1, batch_size // 4), classifier.device, progress, description)
            ]
        return _joined(scores)
    eps, temperature, std = float(state["eps"]), float(state["temperature"]), list(classifier.std)
    odin = pod.ODIN(classifier.model, eps=eps, temperature=temperature, norm_std=std)
    batched = batches(images, batch_size, classifier.device, progress, description)
    return _joined([odin.predict(classifier.normalize(batch)) for batch in batched])


def build_detectors(
    names: Sequence[str], fit: Features, fit_labels: Tensor, head: nn.Linear, settings: Hyper, progress: bool = False
) -> tuple[dict[str, Fitted], dict[str, str]]:
    """Each named detector fitted on training features; and those that could not be fitted, with the reason."""
    built, refused = {}, {}
    for name in names:
        start = time.perf_counter()
        try:
            state = fit_state(name, fit, fit_labels, head, settings)
        except DetectorFitError as exc:
            refused[name] = str(exc)
            log.warning("OOD detector %s left out: it could not be fitted (%s)", name, exc)
            continue
        built[name] = Fitted(state, scorer(name, state, progress), time.perf_counter() - start)
    return built, refused


def mean_activation_score(features: Features, layer: str, direction: str = "below") -> Tensor:
    """The report's method as an outlier score: OOD when the layer's mean activation is below (or above) a threshold."""
    means = features.layer_means[layer].double()
    return -means if direction == "below" else means
