"""Grad-CAM maps of a classifier on uint8 images, as captioned overlay figures or PNG bytes; it runs where the
model's parameters are and leaves the model as it found it (modes, hooks, gradients)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import Tensor, nn

from cifar_lightning.data import CIFAR10_CLASSES
from cifar_lightning.errors import ConfigError
from cifar_lightning.figures import new_figure, save

EXPLAINED = ("predicted", "label")
# How each choice reads on an overlay: "label" is not "true", which YAML and Hydra would read as a boolean.
EXPLAINED_TEXT = {"predicted": "predicted class", "label": "true label"}
OVERLAY_SIZE = 128  # pixels: a 32x32 image is too small to read a heat map on
Normalize = Callable[[Tensor], Tensor]  # a uint8 batch on the model's device -> the model's input


@dataclass
class CamResult:
    path: Path  # the overlay PNG
    cam: np.ndarray  # the Grad-CAM map at the image's size (32x32), float in [0, 1]
    target: int  # the class explained
    explained: str  # "predicted" or "label": which class `target` is


def gradcam_layer(model: nn.Module, name: str | None = None) -> str:
    """The layer named, or with None the last Conv2d (the most semantic maps that keep a spatial layout); a
    ValueError listing the model's layers when there is no such layer."""
    layers = [layer for layer, _ in model.named_modules() if layer]
    convs = [layer for layer, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    if name is None and convs:
        return convs[-1]
    if name is None or name not in layers:
        missing = "no Conv2d layer" if name is None else f"no layer {name!r}"
        raise ValueError(f"the model has {missing}; its layers are: {', '.join(layers)}")
    return name


def configured_layer(model: nn.Module, name: str | None, entry: str, outcome: str) -> str:
    """gradcam_layer for an entry point's `gradcam.layer` setting: a missing layer is a ConfigError (exit 2)."""
    try:
        return gradcam_layer(model, name)
    except ValueError as exc:
        raise ConfigError(
            f"invalid `gradcam` config: {exc}. Fix the value on the command line (python {entry}.py "
            f"gradcam.layer=<one of them>, or gradcam.layer=null for the last Conv2d); {outcome}."
        ) from exc


def compute_cams(model: nn.Module, layer: nn.Module, inputs: Tensor, targets: Sequence[int]) -> tuple[np.ndarray, int]:
    """Grad-CAM maps (N, H, W) in [0, 1] and the number of classes the model scores, with the model restored."""
    modes = {module: module.training for module in model.modules()}  # GradCAM switches the model to eval
    try:
        # Gradients are needed even when the caller runs under no_grad or inference_mode.
        with torch.inference_mode(False), torch.enable_grad(), GradCAM(model=model, target_layers=[layer]) as cam:
            # A copy made here is an ordinary tensor even if the caller made `inputs` under inference_mode;
            # it takes gradients too, so the map exists even when the weights are frozen.
            inputs = inputs.clone().requires_grad_(True)
            try:
                maps = cam(input_tensor=inputs, targets=[ClassifierOutputTarget(int(t)) for t in targets])
            except IndexError as exc:  # GradCAM's context manager would swallow an IndexError: re-raise as ours
                raise ValueError(f"a target class is out of range for the model's outputs: {list(targets)}") from exc
            num_classes = cam.outputs.shape[1]
    finally:
        for module, training in modes.items():
            module.train(training)
        model.zero_grad(set_to_none=True)  # the backward pass left gradients on the weights
    return np.clip(maps, 0.0, 1.0), num_classes


def overlay(image: np.ndarray, cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The image (H, W, 3 in [0, 1]) and its heat-map overlay, both upscaled to OVERLAY_SIZE for reading."""
    size = (OVERLAY_SIZE, OVERLAY_SIZE)
    big_image = cv2.resize(image, size, interpolation=cv2.INTER_NEAREST)  # keep the pixels the model saw
    big_cam = np.clip(cv2.resize(cam, size, interpolation=cv2.INTER_LINEAR), 0.0, 1.0)
    return big_image, show_cam_on_image(big_image, big_cam, use_rgb=True)


def save_overlay(image: np.ndarray, cam: np.ndarray, caption: str, path: Path) -> Path:
    """The image and its overlay side by side, with the caption underneath."""
    big_image, big_overlay = overlay(image, cam)
    lines = caption.count("\n") + 1
    figure = new_figure(3.4, 1.9 + 0.17 * lines)
    for ax, picture, title in zip(figure.subplots(1, 2), (big_image, big_overlay), ("image", "Grad-CAM")):
        ax.imshow(picture)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    figure.supxlabel(caption, fontsize=8)
    return save(figure, path)


def _explain(
    model: nn.Module, layer_name: str | None, images: Tensor, normalize: Normalize, targets: Sequence[int]
) -> tuple[np.ndarray, list[np.ndarray], int]:
    """Checked inputs -> the images as (N, H, W, 3) floats in [0, 1], their Grad-CAM maps and the class count."""
    if images.ndim != 4 or images.shape[1] != 3 or images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 with shape (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    if len(targets) != len(images):
        raise ValueError(f"one target per image: {len(images)} images, {len(targets)} targets")
    if any(int(target) < 0 for target in targets):
        raise ValueError(f"target classes must be >= 0, got {list(targets)}")
    layer = model.get_submodule(gradcam_layer(model, layer_name))
    pictures = images.permute(0, 2, 3, 1).cpu().numpy().astype(np.float32) / 255.0
    if len(images) == 0:
        return pictures, [], 0
    device = next(model.parameters()).device
    maps, num_classes = compute_cams(model, layer, normalize(images.to(device)).float(), targets)
    return pictures, list(maps), num_classes


def gradcam_overlays(
    model: nn.Module,
    layer_name: str | None,
    images: Tensor,
    normalize: Normalize,
    targets: Sequence[int],
    captions: Sequence[str],
    out_dir: Path,
    prefix: str,
    explained: str = "predicted",
) -> list[CamResult]:
    """Explain class `targets[i]` on uint8 image i (N, 3, H, W): <out_dir>/<prefix>_<i>.png with `captions[i]`."""
    if explained not in EXPLAINED:
        raise ValueError(f"explained must be one of {', '.join(EXPLAINED)}, got {explained!r}")
    if len(captions) != len(images):
        raise ValueError(f"one caption per image: {len(images)} images, {len(captions)} captions")
    pictures, maps, num_classes = _explain(model, layer_name, images, normalize, targets)
    results = []
    for i, (picture, cam, target, caption) in enumerate(zip(pictures, maps, targets, captions)):
        if "explains:" not in caption:  # callers may have written it themselves
            name = CIFAR10_CLASSES[int(target)] if num_classes == len(CIFAR10_CLASSES) else f"class {int(target)}"
            caption = f"{caption}\nexplains: {name} ({EXPLAINED_TEXT[explained]})"
        path = save_overlay(picture, cam, caption, Path(out_dir) / f"{prefix}_{i}.png")
        results.append(CamResult(path=path, cam=cam, target=int(target), explained=explained))
    return results


def overlay_png(image: np.ndarray, cam: np.ndarray) -> bytes:
    """The heat-map overlay of one image (H, W, 3 in [0, 1]) as PNG bytes, OVERLAY_SIZE pixels a side."""
    _, big_overlay = overlay(image, cam)
    encoded, png = cv2.imencode(".png", cv2.cvtColor(big_overlay, cv2.COLOR_RGB2BGR))  # OpenCV writes BGR
    if not encoded:
        raise ValueError(f"OpenCV could not encode a {big_overlay.shape} overlay as PNG")
    return png.tobytes()


def gradcam_pngs(
    model: nn.Module, layer_name: str | None, images: Tensor, normalize: Normalize, targets: Sequence[int]
) -> list[bytes]:
    """gradcam_overlays' maps as uncaptioned PNG bytes in memory (serve.py), nothing written."""
    pictures, maps, _ = _explain(model, layer_name, images, normalize, targets)
    return [overlay_png(picture, cam) for picture, cam in zip(pictures, maps)]
