"""Out-of-distribution test sets as uint8 (N, 3, 32, 32) tensors: an .npz with a uint8 `images` array, a folder of
images, or seeded noise, sized as predict.py sizes its inputs. A missing .npz of a standard set (CIFAR-100, MNIST,
Fashion-MNIST) is built from torchvision's md5-checked files, kept (and downloaded) in `<its folder>/torchvision/`."""

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.datasets
from torch import Tensor

from cifar_lightning.config.ood import OODSetSettings
from cifar_lightning.errors import DataError, one_line
from cifar_lightning.images import ImageError, fit_to_input, load_image

log = logging.getLogger(__name__)

SIZE = 32
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
#: A standard set by its `fetch` name: its name in messages, its torchvision.datasets class and its folder.
SOURCES = {
    "cifar100": ("CIFAR-100", "CIFAR100", "cifar-100-python/"),
    "mnist": ("MNIST", "MNIST", "MNIST/raw/"),
    "fashion_mnist": ("Fashion-MNIST", "FashionMNIST", "FashionMNIST/raw/"),
}
RAW_FOLDER = "torchvision"
Spec = Mapping[str, Any] | OODSetSettings  # a set's config entry, as conf/ood/ writes it or validated


def _fix(name: str) -> str:
    return f"Fix ood.sets.{name}.path, drop the set with ~ood.sets.{name}, or turn OOD detection off with ood=none"


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
    """uint8 (N, H, W) grayscale or (N, H, W, 3) RGB -> uint8 (N, 3, 32, 32), as predict.py makes its inputs."""
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
    path, fix = Path(path).expanduser(), _fix(name)
    if not path.is_file():
        raise DataError(f"the OOD set {name!r} was not found: {path} does not exist. {fix}.")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays, images = archive.files, archive["images"] if "images" in archive.files else None
    except Exception as exc:  # not a zip, truncated, pickled objects, ...
        raise DataError(
            f"the OOD set {name!r} could not be read from {path} ({type(exc).__name__}: {exc}). It must be an "
            f".npz written by np.savez with a uint8 `images` array. {fix}."
        ) from exc
    if images is None:
        raise DataError(
            f"the OOD set {name!r} in {path} holds no `images` array (it has: {', '.join(arrays)}). "
            f"Fix: save the images with np.savez(path, images=uint8_array), or drop the set with ~ood.sets.{name}."
        )
    try:
        return OODSet(name, to_rgb32(images), kind, str(path))
    except ValueError as exc:
        raise DataError(f"the OOD set {name!r} in {path} is not usable: {exc}. {fix}.") from exc


def load_folder(path: str | Path, name: str, kind: str = "custom") -> OODSet:
    """Every image file under a folder (recursively, sorted by path); unreadable files are skipped and listed."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DataError(f"the OOD set {name!r} was not found: {folder} is not a folder. {_fix(name)}.")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    images, skipped = [], []
    for file in files:
        try:
            images.append(load_image(file).permute(1, 2, 0).numpy())  # as predict.py reads it
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
    """Seeded uint8 noise images (n, 3, 32, 32): uniform over 0..255, or Gaussian (0.5 ± 0.25 on [0, 1], clipped)."""
    generator = torch.Generator().manual_seed(seed)
    shape = (n, 3, SIZE, SIZE)
    if noise == "uniform":
        return torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
    values = torch.randn(shape, generator=generator).mul_(0.25).add_(0.5)
    return values.mul_(255).round_().clamp_(0, 255).to(torch.uint8)


def _validated(spec: Spec) -> OODSetSettings:
    return OODSetSettings.model_validate(spec) if isinstance(spec, Mapping) else spec


def load_set(name: str, spec: Spec, seed: int) -> OODSet:
    """One set from its config entry (conf/ood/); noise is seeded by `seed` (or the entry's own)."""
    spec = _validated(spec)
    kind = spec.kind or ("synthetic" if spec.noise else "custom")
    if spec.noise is not None:
        set_seed = spec.seed if spec.seed is not None else seed
        source = f"{spec.noise} noise, n={spec.n}, seed={set_seed}"
        return OODSet(name, noise_images(spec.noise, spec.n, set_seed), kind, source)
    path = Path(spec.path).expanduser()
    return load_folder(path, name, kind) if path.is_dir() else load_npz(path, name, kind)


def load_sets(specs: Mapping[str, Spec], seed: int) -> list[OODSet]:
    return [load_set(name, spec, seed) for name, spec in specs.items()]


def raw_root(npz_path: str | Path) -> Path:
    """Where torchvision keeps (and downloads) the files a set's .npz is built from: beside the .npz."""
    return Path(npz_path).expanduser().parent / RAW_FOLDER


def torchvision_test_split(source: str, root: str | Path, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """The official test split through torchvision's dataset class: uint8 images and int64 labels."""
    dataset_class = getattr(torchvision.datasets, SOURCES[source][1])  # looked up here, so tests can patch it
    dataset = dataset_class(root=str(root), train=False, download=download)
    images, labels = dataset.data, dataset.targets
    images = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    labels = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) != len(labels):
        raise ValueError(f"unexpected test split: images {images.dtype} {images.shape}, {len(labels)} labels")
    return np.ascontiguousarray(images), labels.astype(np.int64)


def save_npz(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """np.savez_compressed to a temporary file, then renamed: a crash never leaves a half-written set behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with partial.open("wb") as file:
            np.savez_compressed(file, images=images, labels=labels)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def fetch_set(source: str, path: str | Path, download: bool) -> Path:
    """Write `path` (an .npz) from torchvision's `source` test split; DataError naming the cause (not the fixes)."""
    path = Path(path).expanduser()
    (label, _, folder), root = SOURCES[source], raw_root(path)
    log.info("OOD set %s: %s is missing; building it from torchvision's files in %s", source, path, root)
    try:
        images, labels = torchvision_test_split(source, root, download)
    except Exception as exc:  # missing or corrupt files, network, disk or archive errors: all end the same way
        cause = one_line(exc)
        if download:
            problem = f"downloading torchvision's {label} into {root} failed ({type(exc).__name__}: {cause[:300]})"
        else:
            problem = f"torchvision's {label} files are missing from {root}/{folder} too, or fail its checks"
        raise DataError(problem) from exc
    try:
        save_npz(path, images, labels)
    except OSError as exc:
        raise DataError(f"{label} was read from {root}, but {path} could not be written ({exc})") from exc
    shape = "x".join(map(str, images.shape[1:]))
    log.info("OOD set %s: wrote %s (%d images, %s) from %s", source, path, len(images), shape, root)
    return path


def prepare_sets(specs: Mapping[str, Spec], seed: int, download: bool) -> list[OODSet]:
    """Every configured set, a missing standard set first built from torchvision's; one error names all missing."""
    specs = {name: _validated(spec) for name, spec in specs.items()}
    paths = {name: Path(spec.path).expanduser() for name, spec in specs.items() if spec.path is not None}
    missing = [name for name, path in paths.items() if not path.exists()]
    for name in missing:
        if specs[name].fetch is None:  # a set of the user's own: nothing to build it from
            load_set(name, specs[name], seed)  # raises the error naming the path and the fix
    failures = []
    for name in missing:
        try:
            fetch_set(specs[name].fetch, paths[name], download)
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
    splits = f"(torchvision downloads the official, md5-checked test splits into {roots}, and evaluate.py saves them"
    online = f"Fix: check this machine's internet connection and rerun {splits} as those .npz files)"
    if not download:
        online = (
            f"Downloading is off (ood.download=false, which follows data.download). Fix: on a machine with internet, "
            f"rerun with data.download=true or ood.download=true {splits} as those .npz files)"
        )
    return (
        f"{what} not found: {problems}. {online}; or, offline, put the files in {folders} (cifar100_test.npz, "
        f"mnist_test.npz, fashion_mnist_test.npz: np.savez with a uint8 `images` array, N x 32 x 32 x 3 or "
        f"N x 28 x 28, and `labels`), or torchvision's own files (cifar-100-python/, MNIST/raw/, FashionMNIST/raw/) "
        f"in {roots}, or point ood.data_dir at a folder that holds them; or turn OOD detection off with ood=none "
        f"(or drop a set, e.g. ~ood.sets.{failures[0][0]}). Nothing was evaluated."
    )
