"""The three standard OOD sets (CIFAR-100, MNIST and Fashion-MNIST test splits), built from
torchvision's md5-checked datasets when their .npz file is missing.

torchvision keeps its own files under `<the .npz's folder>/torchvision/` (cifar-100-python/ and its
.tar.gz, MNIST/raw/, FashionMNIST/raw/), downloading them there when `download` allows and checking
them as it always does. The test split is then saved in the form conf/ood/default.yaml reads (and
sets.load_npz loads): np.savez_compressed with `images` uint8 (CIFAR-100 N x 32 x 32 x 3 RGB; MNIST and
Fashion-MNIST their official N x 28 x 28 grayscale, resized only when loading) and `labels` int64.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
import torchvision.datasets

from cifar_lightning.errors import DataError, one_line

log = logging.getLogger(__name__)

# fetch key of an ood.sets entry -> (name in messages, torchvision.datasets class, its folder under the root)
SOURCES = {
    "cifar100": ("CIFAR-100", "CIFAR100", "cifar-100-python/"),
    "mnist": ("MNIST", "MNIST", "MNIST/raw/"),
    "fashion_mnist": ("Fashion-MNIST", "FashionMNIST", "FashionMNIST/raw/"),
}
RAW_FOLDER = "torchvision"


def raw_root(npz_path: str | Path) -> Path:
    """Where torchvision keeps (and downloads) the files a set's .npz is built from: beside the .npz."""
    return Path(npz_path).expanduser().parent / RAW_FOLDER


def torchvision_test_split(source: str, root: str | Path, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """The official test split through torchvision's dataset class: uint8 images as torchvision stores them
    (N x 32 x 32 x 3, or N x 28 x 28) and int64 labels. Raises whatever torchvision raises when the files are
    missing or fail its md5 check (and downloading is off or fails)."""
    dataset_class = getattr(torchvision.datasets, SOURCES[source][1])  # looked up here, so tests can patch it
    dataset = dataset_class(root=str(root), train=False, download=download)
    images, labels = dataset.data, dataset.targets
    images = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    labels = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) != len(labels):
        raise ValueError(f"unexpected test split from torchvision: images {images.dtype} {images.shape}, "
                         f"{len(labels)} labels")  # fmt: skip
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
    """Write `path` (an .npz) from torchvision's `source` test split, downloading it first if allowed.

    Raises DataError (one sentence, the cause; callers add the fixes) when torchvision's files are missing or
    corrupt and cannot be downloaded, or the .npz cannot be written.
    """
    path = Path(path).expanduser()
    label, _, folder = SOURCES[source]
    root = raw_root(path)
    log.info("OOD set %s: %s is missing; building it from torchvision's %s test split under %s (download=%s)",
             source, path, label, root, download)  # fmt: skip
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
