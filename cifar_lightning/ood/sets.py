"""Out-of-distribution test sets as uint8 (N, 3, 32, 32) tensors, like the CIFAR-10 test set.

Three sources: an .npz file with a uint8 `images` array (N x H x W x 3 RGB or N x H x W grayscale,
e.g. the official 28x28 MNIST), a folder of image files, and seeded noise generated on the fly.
Everything is resized to 32x32 (antialiased bilinear) and grayscale is repeated to three channels.
In a folder, a file that cannot be read as an image is reported and skipped, not fatal.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from cifar_lightning.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SIZE = 32
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
NOISE_KINDS = ("gaussian", "uniform")
SET_KEYS = ("path", "noise", "n", "kind", "seed")


@dataclass(frozen=True)
class OODSet:
    """One OOD test set: uint8 images (N, 3, 32, 32), where they came from, and what was skipped."""

    name: str
    images: Tensor
    kind: str  # near | far | synthetic | custom: how far from CIFAR-10 it is, for the tables
    source: str
    skipped: tuple[str, ...] = field(default=())

    def describe(self) -> dict[str, Any]:
        return {"n": len(self.images), "kind": self.kind, "source": self.source, "skipped": list(self.skipped)}


def to_rgb32(images: np.ndarray | Tensor) -> Tensor:
    """uint8 (N, H, W) grayscale or (N, H, W, 3) RGB -> uint8 (N, 3, 32, 32), resized if needed."""
    batch = torch.as_tensor(np.asarray(images))
    if batch.dtype != torch.uint8:
        raise ValueError(f"images must be uint8, got {batch.dtype}")
    if batch.ndim == 3:
        batch = batch.unsqueeze(-1)
    if batch.ndim != 4 or batch.shape[-1] not in (1, 3) or min(batch.shape[1:3]) < 1:
        raise ValueError(f"images must be N x H x W (grayscale) or N x H x W x 3 (RGB), got shape {tuple(batch.shape)}")
    batch = batch.permute(0, 3, 1, 2)
    if tuple(batch.shape[-2:]) != (SIZE, SIZE):
        resized = [
            F.interpolate(chunk.float(), size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
            .round_()
            .clamp_(0, 255)
            .to(torch.uint8)
            for chunk in batch.split(2048)  # bounded float memory for large sets
        ]
        batch = torch.cat(resized) if resized else batch.new_empty((0, batch.shape[1], SIZE, SIZE))
    if batch.shape[1] == 1:
        batch = batch.expand(-1, 3, -1, -1)
    return batch.contiguous()


def load_npz(path: str | Path, name: str, kind: str = "custom") -> OODSet:
    """An .npz file holding a uint8 `images` array (N x H x W x 3, or N x H x W grayscale)."""
    path = Path(path).expanduser()
    fix = f"Fix the path in ood.sets.{name}.path, or drop the set with ~ood.sets.{name}"
    if not path.is_file():
        raise DataError(f"the OOD set {name!r} was not found: {path} does not exist. {fix}.")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "images" not in archive.files:
                raise DataError(
                    f"the OOD set {name!r} in {path} holds no `images` array (it has: {', '.join(archive.files)}). "
                    f"Fix: save the images with np.savez(path, images=uint8_array), or drop the set with "
                    f"~ood.sets.{name}."
                )
            images = archive["images"]
    except DataError:
        raise
    except Exception as exc:  # not a zip, truncated, pickled objects, ...
        raise DataError(
            f"the OOD set {name!r} could not be read from {path} ({type(exc).__name__}: {exc}). It must be an "
            f".npz written by np.savez with a uint8 `images` array. {fix}."
        ) from exc
    try:
        return OODSet(name, to_rgb32(images), kind, str(path))
    except ValueError as exc:
        raise DataError(f"the OOD set {name!r} in {path} is not usable: {exc}. {fix}.") from exc


def read_image(path: Path) -> np.ndarray:
    """One image file as uint8 (32, 32, 3) RGB; raises OSError/ValueError if it is not a readable image."""
    with Image.open(path) as image:
        image.load()
        rgb = image.convert("RGB")
    if rgb.size != (SIZE, SIZE):
        rgb = rgb.resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def load_folder(path: str | Path, name: str, kind: str = "custom") -> OODSet:
    """Every image file under a folder (recursively, sorted by path); unreadable files are skipped and listed."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DataError(
            f"the OOD set {name!r} was not found: {folder} is not a folder. Fix the path in ood.sets.{name}.path, "
            f"or drop the set with ~ood.sets.{name}."
        )
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    images, skipped = [], []
    for file in files:
        try:
            images.append(read_image(file))
        except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
            skipped.append(f"{file}: {type(exc).__name__}: {exc}")
            log.warning("OOD set %r: skipped %s, it cannot be read as an image (%s)", name, file, exc)
    if not images:
        reason = f"none of its {len(files)} image files could be read" if files else "it holds no image files"
        raise DataError(
            f"the OOD set {name!r} in {folder} is empty: {reason} ({', '.join(IMAGE_SUFFIXES)}). Fix: put readable "
            f"images there, or drop the set with ~ood.sets.{name}."
        )
    return OODSet(name, to_rgb32(np.stack(images)), kind, str(folder), tuple(skipped))


def noise_images(noise: str, n: int, seed: int) -> Tensor:
    """Seeded noise images, uint8 (n, 3, 32, 32): per-pixel uniform over 0..255, or Gaussian with mean 0.5
    and standard deviation 0.25 on the [0, 1] scale, clipped (the usual synthetic far-OOD sets)."""
    generator = torch.Generator().manual_seed(seed)
    shape = (n, 3, SIZE, SIZE)
    if noise == "uniform":
        return torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
    if noise == "gaussian":
        values = torch.randn(shape, generator=generator).mul_(0.25).add_(0.5)
        return values.mul_(255).round_().clamp_(0, 255).to(torch.uint8)
    raise ValueError(f"noise must be one of {', '.join(NOISE_KINDS)}, got {noise!r}")


def check_set_spec(name: str, spec: Mapping[str, Any]) -> None:
    """Refuse an OOD set entry that is not exactly one of {path: ...} or {noise: ..., n: ...}."""

    def invalid(problem: str) -> ConfigError:
        return ConfigError(
            f"invalid OOD set ood.sets.{name}: {problem}. Each set is either a file or folder, "
            f"+ood.sets.{name}.path=/data/my_set.npz (or a folder of images), or noise, "
            f"ood.sets.{name}.noise=gaussian with ood.sets.{name}.n=10000. Or drop it with ~ood.sets.{name}, or turn "
            f"OOD detection off with ood=none; nothing was evaluated."
        )

    if not isinstance(spec, Mapping):
        raise invalid(f"expected a mapping, got {spec!r}")
    unknown = sorted(set(spec) - set(SET_KEYS))
    if unknown:
        raise invalid(f"unknown key(s) {', '.join(unknown)} (known: {', '.join(SET_KEYS)})")
    has_path, noise = spec.get("path") is not None, spec.get("noise")
    if has_path == (noise is not None):
        raise invalid("give exactly one of `path` and `noise`")
    if noise is not None:
        if noise not in NOISE_KINDS:
            raise invalid(f"noise must be one of {', '.join(NOISE_KINDS)}, got {noise!r}")
        n = spec.get("n")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise invalid(f"n must be a positive integer, got {n!r}")


def load_set(name: str, spec: Mapping[str, Any], seed: int) -> OODSet:
    """One set from its config entry (see conf/ood/default.yaml); noise is seeded by `seed` (or the entry's own)."""
    check_set_spec(name, spec)
    kind = str(spec.get("kind") or ("synthetic" if spec.get("noise") else "custom"))
    if spec.get("noise") is not None:
        set_seed = spec.get("seed") if spec.get("seed") is not None else seed
        source = f"{spec['noise']} noise, n={spec['n']}, seed={set_seed}"
        return OODSet(name, noise_images(spec["noise"], spec["n"], set_seed), kind, source)
    path = Path(str(spec["path"])).expanduser()
    return load_folder(path, name, kind) if path.is_dir() else load_npz(path, name, kind)


def load_sets(specs: Mapping[str, Mapping[str, Any]], seed: int) -> list[OODSet]:
    """Every configured set, checked first (all entries) so that a typo fails before any loading."""
    if not specs:
        raise ConfigError(
            "no OOD sets are configured (ood.sets is empty). Fix: keep the defaults of conf/ood/default.yaml, add one "
            "with +ood.sets.mine.path=/data/my_set.npz, or turn OOD detection off with ood=none."
        )
    for name, spec in specs.items():
        check_set_spec(name, spec)
    return [load_set(name, spec, seed) for name, spec in specs.items()]
