"""What OOD detectors read off a classifier, extracted once per data set in batches: the logits, the
penultimate features (the input of the last Linear layer, the classifier head) and, for the report's
method, the per-image mean activation of every activation layer (ReLU, GELU, ...).

Forward hooks collect everything in one pass. A module applied several times in one forward pass
(e.g. a shared ReLU) is reported once per use, as `name@1`, `name@2`, ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from rich.progress import track
from torch import Tensor, nn

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
        return Features(self.logits[index], self.penultimate[index],
                        {name: means[index] for name, means in self.layer_means.items()})  # fmt: skip


def activation_layers(model: nn.Module) -> list[str]:
    """Names of the model's activation modules (ReLU, GELU, ...), in definition order."""
    return [name for name, module in model.named_modules() if name and isinstance(module, ACTIVATIONS)]


def classifier_head(model: nn.Module) -> nn.Linear:
    """The model's last nn.Linear: its output is the logits, its input the penultimate features."""
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier head, so it has no penultimate features")
    return linears[-1]


def _name_calls(calls: list[tuple[str, Tensor]]) -> dict[str, Tensor]:
    """One key per layer use: the layer's name, or name@1, name@2, ... when it ran several times."""
    uses: dict[str, int] = {}
    for name, _ in calls:
        uses[name] = uses.get(name, 0) + 1
    seen: dict[str, int] = {}
    named = {}
    for name, value in calls:
        seen[name] = seen.get(name, 0) + 1
        named[name if uses[name] == 1 else f"{name}@{seen[name]}"] = value
    return named


@torch.inference_mode()
def extract_features(
    model: nn.Module,
    images: Tensor,
    normalize: Callable[[Tensor], Tensor],
    device: torch.device | str = "cpu",
    batch_size: int = 1000,
    layers: list[str] | None = None,
    progress: bool = False,
    description: str = "Features",
) -> Features:
    """Logits, penultimate features and per-layer mean activations of uint8 images (N, 3, 32, 32).

    layers: activation layers whose mean is recorded; None = every activation layer, [] = none.
    """
    model = model.to(device).eval()
    modules = dict(model.named_modules())
    layers = activation_layers(model) if layers is None else layers
    head = classifier_head(model)
    calls: list[tuple[str, Tensor]] = []
    penultimate: list[Tensor] = []

    def record_mean(name: str):
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            calls.append((name, output.detach().flatten(1).float().mean(dim=1).cpu()))

        return hook

    def record_input(module: nn.Module, inputs: tuple) -> None:
        penultimate.append(inputs[0].detach().flatten(1).float().cpu())

    handles = [modules[name].register_forward_hook(record_mean(name)) for name in layers]
    handles.append(head.register_forward_pre_hook(record_input))
    logits, means = [], []
    try:
        starts = range(0, len(images), batch_size)
        for start in track(starts, description=description, total=len(starts), disable=not progress):
            calls.clear()
            batch = normalize(images[start : start + batch_size].to(device, non_blocking=True))
            logits.append(model(batch).float().cpu())
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
