"""One inference layer for every use of a trained model (evaluate.py, the OOD step, predict.py, export.py,
serve.py), so that a checkpoint is loaded, normalized and batched the same way everywhere:

    classifier = Classifier.load("logs/train/runs/<date>_<time>/checkpoints/best.ckpt", device="auto", tta=0)
    predictions = classifier.predict(images)           # uint8 (N, 3, H, W), any H x W: logits, probabilities
    features = classifier.features(images)             # logits, penultimate features, mean activations

The plain functions `predict` and `extract_features` take a model and a normalize function, for callers that
hold those already. Features come from forward hooks in one pass; a module applied several times in one
forward pass (e.g. a shared ReLU) is reported once per use, as `name@1`, `name@2`, ...
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.progress import track
from torch import Tensor, nn

from cifar_lightning import checkpoints
from cifar_lightning.augment import tta_logits
from cifar_lightning.config.data import EVAL_BATCH_SIZE
from cifar_lightning.data import CIFAR10_CLASSES
from cifar_lightning.data import normalize as normalize_with
from cifar_lightning.errors import ConfigError
from cifar_lightning.images import fit_to_input
from cifar_lightning.models import classifier_head
from cifar_lightning.models.folding import fold_batch_norms

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, nn.Mish)


@dataclass(frozen=True)
class Features:
    """Per-image outputs for N images, on the CPU."""

    logits: Tensor  # (N, classes)
    penultimate: Tensor  # (N, D): the input of the classifier head
    layer_means: dict[str, Tensor]  # activation layer -> (N,) mean of that layer's output per image

    def __len__(self) -> int:
        return len(self.logits)

    def subset(self, index: Tensor | slice) -> Features:
        """The features of some of the images (an index tensor or a slice)."""
        means = {name: means[index] for name, means in self.layer_means.items()}
        return Features(self.logits[index], self.penultimate[index], means)


def activation_layers(model: nn.Module) -> list[str]:
    """Names of the model's activation modules (ReLU, GELU, ...), in definition order."""
    return [name for name, module in model.named_modules() if name and isinstance(module, ACTIVATIONS)]


def _name_calls(calls: list[tuple[str, Tensor]]) -> dict[str, Tensor]:
    """One key per layer use: the layer's name, or name@1, name@2, ... when it ran several times."""
    uses, seen, named = Counter(name for name, _ in calls), Counter(), {}
    for name, value in calls:
        seen[name] += 1
        named[name if uses[name] == 1 else f"{name}@{seen[name]}"] = value
    return named


def batches(
    images: Tensor, batch_size: int, device: torch.device | str, progress: bool = False, description: str = "Predicting"
) -> Iterator[Tensor]:
    """The uint8 images (N, 3, H, W) in batches of `batch_size`, resized to the model's input (images.fit_to_input)
    and moved to `device`: the one batching loop of every inference path."""
    starts = range(0, len(images), batch_size)
    for start in track(starts, description=description, total=len(starts), disable=not progress):
        yield fit_to_input(images[start : start + batch_size]).to(device, non_blocking=True)


@dataclass(frozen=True)
class Predictions:
    """A classifier's outputs for N images, on the CPU: logits and softmax probabilities, (N, classes)."""

    logits: Tensor
    probabilities: Tensor

    @property
    def predicted(self) -> Tensor:
        return self.probabilities.argmax(dim=1)

    @property
    def confidence(self) -> Tensor:
        """The probability of the predicted class."""
        return self.probabilities.max(dim=1).values

    @classmethod
    def of(cls, logits: Tensor) -> Predictions:
        """The predictions of these logits (raw softmax)."""
        return cls(logits=logits, probabilities=logits.softmax(dim=1))

    def top_k(self, k: int) -> tuple[Tensor, Tensor]:
        """The k most probable classes per image, most probable first: (probabilities, class indices), (N, k)."""
        return self.probabilities.topk(min(k, self.probabilities.shape[1]), dim=1)


@torch.inference_mode()
def predict(
    model: nn.Module,
    images: Tensor,
    normalize: Callable[[Tensor], Tensor],
    device: torch.device | str = "cpu",
    batch_size: int = EVAL_BATCH_SIZE,
    progress: bool = False,
    tta: int = 0,
) -> Predictions:
    """Run `model` on uint8 images (N, 3, H, W) in batches on `device`, outputs back on the CPU; `normalize` maps a
    uint8 batch to the model's input, `tta` is augment.tta_logits' level."""
    model = model.to(device).eval()
    logits = [
        tta_logits(model, normalize(batch), tta).float().cpu()
        for batch in batches(images, batch_size, device, progress)
    ]
    return Predictions.of(torch.cat(logits) if logits else torch.empty(0, 0))


@torch.inference_mode()
def extract_features(
    model: nn.Module,
    images: Tensor,
    normalize: Callable[[Tensor], Tensor],
    device: torch.device | str = "cpu",
    batch_size: int = EVAL_BATCH_SIZE,
    layers: list[str] | None = None,
    progress: bool = False,
    description: str = "Features",
) -> Features:
    """Logits, penultimate features and the mean activation of `layers` (None: every activation layer) of uint8
    images (N, 3, H, W)."""
    model = model.to(device).eval()
    modules = dict(model.named_modules())
    layers = activation_layers(model) if layers is None else layers
    head = classifier_head(model)
    calls: list[tuple[str, Tensor]] = []
    penultimate: list[Tensor] = []

    def record_mean(name: str):
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            # the mean over every non-batch dimension, read in place: flatten(1) would copy a channels-last map
            calls.append((name, output.detach().float().mean(dim=tuple(range(1, output.ndim))).cpu()))

        return hook

    def record_input(module: nn.Module, inputs: tuple) -> None:
        penultimate.append(inputs[0].detach().flatten(1).float().cpu())

    handles = [modules[name].register_forward_hook(record_mean(name)) for name in layers]
    handles.append(head.register_forward_pre_hook(record_input))
    logits, means = [], []
    try:
        for batch in batches(images, batch_size, device, progress, description):
            calls.clear()
            logits.append(model(normalize(batch)).float().cpu())
            means.append(_name_calls(calls))
    finally:
        for handle in handles:
            handle.remove()
    if not logits:
        return Features(torch.empty(0, 0), torch.empty(0, head.in_features), {})
    return Features(
        logits=torch.cat(logits),
        penultimate=torch.cat(penultimate),
        layer_means={name: torch.cat([batch[name] for batch in means]) for name in means[0]},
    )


def pick_device(name: str) -> torch.device:
    """The device a `device` setting (auto, cpu, gpu) names; auto: a CUDA GPU when there is one, else the CPU."""
    if name == "gpu" and not torch.cuda.is_available():
        raise ConfigError(
            "device=gpu was asked for, but torch sees no CUDA GPU on this machine. Fix: run with device=cpu "
            "(or device=auto, which takes a GPU when there is one), or install a CUDA build of torch."
        )
    return torch.device("cuda" if name in ("gpu", "auto") and torch.cuda.is_available() else "cpu")


@dataclass
class Classifier:
    """A trained model ready to use (Classifier.load): uint8 images of any size in; logits, probabilities or
    features out."""

    model: nn.Module  # in eval mode, on `device`
    mean: tuple[float, float, float]  # the training split's per-channel mean and std, on the [0, 1] scale
    std: tuple[float, float, float]
    classes: tuple[str, ...]
    device: torch.device
    tta: int = 0
    checkpoint_path: Path | None = None
    checkpoint_epoch: int | None = None  # 1-based: the epoch the checkpoint was written in or after
    config: dict[str, Any] = field(default_factory=dict)  # the run config the checkpoint carries
    temperature: float = 1.0  # calibration.py's: probabilities are softmax(logits / temperature); logits stay raw
    _stats: dict[torch.device, tuple[Tensor, Tensor]] = field(default_factory=dict, repr=False)
    _folded: tuple[nn.Module, nn.Module] | None = field(default=None, repr=False)  # (model, its folded copy)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "auto", tta: int = 0) -> Classifier:
        """The checkpoint's model (weights only, rebuilt from its own config) with its normalization; a
        CheckpointError for a missing, corrupt, tampered or foreign checkpoint."""
        device = device if isinstance(device, torch.device) else pick_device(device)
        path = Path(path).expanduser()
        checkpoint = checkpoints.load_checkpoint(path)
        model = checkpoints.build_model(checkpoint, path)
        stats = checkpoints.normalization(checkpoint, path)
        outputs = classifier_head(model).out_features
        if outputs != len(CIFAR10_CLASSES):
            raise checkpoints.CheckpointError(
                f"the model in {path} predicts {outputs} classes, but CIFAR-10 has {len(CIFAR10_CLASSES)}. "
                f"Fix: use a checkpoint trained on CIFAR-10 by train.py."
            )
        epoch, config = checkpoints.trained_epoch(checkpoint), checkpoints.run_config(checkpoint)
        model = model.to(device).eval()
        return cls(model, tuple(stats["mean"]), tuple(stats["std"]), CIFAR10_CLASSES, device, tta, path, epoch, config)

    @property
    def inference_model(self) -> nn.Module:
        """`model` with its batch norms folded into their convolutions (models/folding.py), made once per model:
        what predict and features run. Gradient-based parts (Grad-CAM, ODIN) use `model` itself."""
        if self._folded is None or self._folded[0] is not self.model:
            self._folded = self.model, fold_batch_norms(self.model)
        return self._folded[1]

    @property
    def normalization(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @property
    def head(self) -> nn.Linear:
        """The classifier head: its input is the penultimate features."""
        return classifier_head(self.model)

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 batch (N, 3, 32, 32), on any device -> the model's float input, as in training."""
        where = images.device
        if where not in self._stats:
            self._stats[where] = (torch.tensor(self.mean, device=where), torch.tensor(self.std, device=where))
        return normalize_with(images, *self._stats[where])

    def probabilities(self, logits: Tensor) -> Tensor:
        """softmax(logits / temperature): calibrated when a fitted temperature was set, the raw softmax at 1."""
        return (logits / self.temperature).softmax(dim=1)

    def predict(self, images: Tensor, batch_size: int = EVAL_BATCH_SIZE, progress: bool = False) -> Predictions:
        """Logits and probabilities (on the CPU) of uint8 images (N, 3, H, W), with the classifier's TTA level and
        temperature (the logits are never scaled)."""
        predictions = predict(self.inference_model, images, self.normalize, self.device, batch_size, progress, self.tta)
        if self.temperature == 1.0:
            return predictions
        return Predictions(predictions.logits, self.probabilities(predictions.logits))

    def features(
        self,
        images: Tensor,
        layers: list[str] | None = None,
        batch_size: int = EVAL_BATCH_SIZE,
        progress: bool = False,
        description: str = "Features",
    ) -> Features:
        """Logits (no TTA), penultimate features and mean activations of `layers` (None = every activation layer,
        [] = none) of uint8 images (N, 3, H, W), on the CPU."""
        return extract_features(
            self.inference_model, images, self.normalize, self.device, batch_size, layers, progress, description
        )
