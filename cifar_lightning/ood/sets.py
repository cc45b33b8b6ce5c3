"""Out-of-distribution test sets as uint8 (N, 3, 32, 32) tensors, like the CIFAR-10 test set.

Three sources: an .npz file with a uint8 `images` array (N x H x W x 3 RGB or N x H x W grayscale,
e.g. the official 28x28 MNIST), a folder of image files, and seeded noise generated on the fly.
A missing .npz of a standard set (an entry with `fetch`) is built from torchvision first (fetch.py).
Everything is resized to 32x32 (antialiased bilinear) and grayscale is repeated to three channels.
In a folder, a file that cannot be read as an image is reported and skipped, not fatal.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cifar_lightning.errors import ConfigError, DataError, is_int
from cifar_lightning.images import ImageError, fit_to_input, load_image
from cifar_lightning.ood.fetch import SOURCES, fetch_set, raw_root

log = logging.getLogger(__name__)

SIZE = 32
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
NOISE_KINDS = ("gaussian", "uniform")
SET_KEYS = ("path", "fetch", "noise", "n", "kind", "seed")


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
    """uint8 (N, H, W) grayscale or (N, H, W, 3) RGB -> uint8 (N, 3, 32, 32): grayscale repeated to RGB, then
    images.fit_to_input (the centred square, resized), as predict.py and serve.py make their inputs."""
    batch = torch.as_tensor(np.asarray(images))
    if batch.dtype != torch.uint8:
        raise ValueError(f"images must be uint8, got {batch.dtype}")
    if batch.ndim == 3:
        batch = batch.unsqueeze(-1)
    if batch.ndim != 4 or batch.shape[-1] not in (1, 3) or min(batch.shape[1:3]) < 1:
        raise ValueError(f"images must be N x H x W (grayscale) or N x H x W x 3 (RGB), got shape {tuple(batch.shape)}")
    batch = batch.permute(0, 3, 1, 2).expand(-1, 3, -1, -1)  # grayscale repeated over the channels
    if len(batch) == 0:
        return batch.new_empty((0, 3, SIZE, SIZE))
    return fit_to_input(batch, SIZE).contiguous()  # images.py's policy: the centred square, resized


def load_npz(path: str | Path, name: str, kind: str = "custom") -> OODSet:
    """An .npz file holding a uint8 `images` array (N x H x W x 3, or N x H x W grayscale)."""
    path = Path(path).expanduser()
    fix = (f"Fix the path in ood.sets.{name}.path, drop the set with ~ood.sets.{name}, or turn OOD detection off "
           f"with ood=none")  # fmt: skip
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
    """One image file as uint8 (32, 32, 3) RGB, by images.py's policy (as predict.py reads it); raises ImageError
    with the reason if it is not a readable image."""
    return load_image(path).permute(1, 2, 0).numpy()


def load_folder(path: str | Path, name: str, kind: str = "custom") -> OODSet:
    """Every image file under a folder (recursively, sorted by path); unreadable files are skipped and listed."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DataError(
            f"the OOD set {name!r} was not found: {folder} is not a folder. Fix the path in ood.sets.{name}.path, "
            f"drop the set with ~ood.sets.{name}, or turn OOD detection off with ood=none."
        )
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    images, skipped = [], []
    for file in files:
        try:
            images.append(read_image(file))
        except ImageError as exc:
            skipped.append(f"{file}: {exc}")
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
    fetch = spec.get("fetch")
    if fetch is not None:
        if fetch not in SOURCES:
            raise invalid(f"fetch must be one of {', '.join(SOURCES)} (torchvision's test splits), got {fetch!r}")
        if not has_path or not str(spec["path"]).endswith(".npz"):
            example = f"ood.sets.{name}.path=/data/ood/{fetch}_test.npz"
            raise invalid(f"fetch={fetch} needs the .npz path it writes, e.g. {example}")
    if noise is not None:
        if noise not in NOISE_KINDS:
            raise invalid(f"noise must be one of {', '.join(NOISE_KINDS)}, got {noise!r}")
        n = spec.get("n")
        if not is_int(n, 1):
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


def check_sets(specs: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse an empty set list or any bad entry (all entries), so that a typo fails before any loading."""
    if not specs:
        raise ConfigError(
            "no OOD sets are configured (ood.sets is empty). Fix: keep the defaults of conf/ood/default.yaml, add one "
            "with +ood.sets.mine.path=/data/my_set.npz, or turn OOD detection off with ood=none."
        )
    for name, spec in specs.items():
        check_set_spec(name, spec)


def load_sets(specs: Mapping[str, Mapping[str, Any]], seed: int) -> list[OODSet]:
    """Every configured set, checked first (all entries) so that a typo fails before any loading."""
    check_sets(specs)
    return [load_set(name, spec, seed) for name, spec in specs.items()]


def prepare_sets(specs: Mapping[str, Mapping[str, Any]], seed: int, download: bool) -> list[OODSet]:
    """Every configured set, loaded; a standard set whose .npz is missing (an entry with `fetch`) is first built
    from torchvision's test split, downloaded when `download`. evaluate.py calls this before it writes anything,
    so a missing set stops it with one error (every missing file and the fixes) and no half-finished output."""
    check_sets(specs)
    paths = {name: Path(str(spec["path"])).expanduser() for name, spec in specs.items() if spec.get("path") is not None}
    missing = [name for name, path in paths.items() if not path.exists()]
    for name in missing:
        if specs[name].get("fetch") is None:  # a set of the user's own: nothing to build it from
            load_set(name, specs[name], seed)  # raises the error naming the path and the fix
    failures = []
    for name in missing:
        try:
            fetch_set(specs[name]["fetch"], paths[name], download)
        except DataError as exc:
            failures.append((name, paths[name], str(exc)))
    if failures:
        raise DataError(missing_sets_message(failures, download))
    return [load_set(name, spec, seed) for name, spec in specs.items()]


def missing_sets_message(failures: Sequence[tuple[str, Path, str]], download: bool) -> str:
    """One paragraph for standard sets that are neither on disk nor obtainable: each missing file, and the fixes."""
    names = ", ".join(repr(name) for name, _, _ in failures)
    what = f"the OOD set {names} was" if len(failures) == 1 else f"the OOD sets {names} were"
    problems = "; ".join(f"{path} does not exist and {cause}" for _, path, cause in failures)
    folders = ", ".join(dict.fromkeys(str(path.parent) for _, path, _ in failures))
    roots = ", ".join(dict.fromkeys(str(raw_root(path)) for _, path, _ in failures))
    splits = (f"(torchvision downloads the official, md5-checked test splits into {roots}, and evaluate.py saves "
              f"them as those .npz files)")  # fmt: skip
    if download:
        online = f"Fix: check this machine's internet connection and rerun {splits}"
    else:
        online = (f"Downloading is off (ood.download=false, which follows data.download). Fix: on a machine with "
                  f"internet, rerun with data.download=true or ood.download=true {splits}")  # fmt: skip
    return (
        f"{what} not found: {problems}. {online}; or, offline, put the files in {folders} (cifar100_test.npz, "
        f"mnist_test.npz, fashion_mnist_test.npz: np.savez with a uint8 `images` array, N x 32 x 32 x 3 or "
        f"N x 28 x 28, and `labels`), or torchvision's own files (cifar-100-python/, MNIST/raw/, FashionMNIST/raw/) "
        f"in {roots}, or point ood.data_dir at a folder that holds them; or turn OOD detection off with ood=none "
        f"(or drop a set, e.g. ~ood.sets.{failures[0][0]}). Nothing was evaluated."
    )
