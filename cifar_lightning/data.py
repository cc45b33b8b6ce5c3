"""CIFAR-10 as in-memory uint8 tensors: md5-checked loading, a stratified split, batch-wise
normalization and augmentation on the training device.

The whole data set (180 MB as uint8) is loaded once; batches are index operations on those
tensors, so no per-image Python runs in the training loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from torch import Tensor
from torchvision.datasets import CIFAR10
from torchvision.datasets.utils import check_integrity

from cifar_lightning.augment import random_crop, random_flip
from cifar_lightning.errors import DataError

#: Every file of the official python version, with the md5 torchvision checks it against.
CIFAR10_FILES: tuple[tuple[str, str], ...] = (
    *(tuple(entry) for entry in CIFAR10.train_list),
    *(tuple(entry) for entry in CIFAR10.test_list),
    (CIFAR10.meta["filename"], CIFAR10.meta["md5"]),
)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True)
class CIFAR10Arrays:
    """The whole of CIFAR-10. Images are uint8 (N, 3, 32, 32) in channels-last memory."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    classes: tuple[str, ...]


def cifar10_folder(data_dir: str | Path) -> Path:
    """The `cifar-10-batches-py` folder inside `data_dir` (torchvision's layout)."""
    return Path(data_dir).expanduser() / CIFAR10.base_folder


def find_cifar10_problems(data_dir: str | Path) -> list[str]:
    """What is wrong with the CIFAR-10 files under `data_dir`, one sentence each; [] if nothing."""
    folder = cifar10_folder(data_dir)
    if not folder.is_dir():
        hint = ""
        if (Path(data_dir).expanduser() / "data_batch_1").is_file():
            hint = f" ({data_dir} looks like the batches folder itself: point at its parent)"
        return [f"the folder {folder} does not exist{hint}"]
    problems = []
    for name, md5 in CIFAR10_FILES:
        path = folder / name
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif not check_integrity(str(path), md5):
            problems.append(f"{path} is corrupt (its md5 differs from the official {md5})")
    return problems


_verified: set[tuple] = set()


def _fingerprint(folder: Path) -> tuple:
    """Path, size and mtime of every file: cheap to compute, changes when a file does."""
    stats = []
    for name, _ in CIFAR10_FILES:
        st = (folder / name).stat()
        stats.append((name, st.st_size, st.st_mtime_ns))
    return (str(folder.resolve()), tuple(stats))


def ensure_cifar10(data_dir: str | Path, download: bool) -> None:
    """Make sure every CIFAR-10 file is present with its official md5, downloading if allowed.

    Raises DataError naming each missing or corrupt file and the fix.
    """
    folder = cifar10_folder(data_dir)
    if folder.is_dir() and all((folder / name).is_file() for name, _ in CIFAR10_FILES):
        if _fingerprint(folder) in _verified:
            return
    problems = find_cifar10_problems(data_dir)
    if problems and download:
        try:
            CIFAR10(root=str(Path(data_dir).expanduser()), train=True, download=True)
        except Exception as exc:  # network, disk, or archive errors: all end the same way
            raise DataError(
                f"CIFAR-10 under {folder} is not usable ({'; '.join(problems)}) and downloading it "
                f"failed ({type(exc).__name__}: {exc}). Fix: rerun with internet access so torchvision "
                f"can download its md5-checked copy, or point data.data_dir at a folder that holds "
                f"the official cifar-10-batches-py/ (e.g. data.data_dir=../shared/data)."
            ) from exc
        problems = find_cifar10_problems(data_dir)
    if problems:
        fetch = "" if download else ", or run with data.download=true to fetch a fresh md5-checked copy there"
        raise DataError(
            f"CIFAR-10 under {folder} is not usable: {'; '.join(problems)}. Fix: point "
            f"data.data_dir at the folder that contains the official cifar-10-batches-py/ "
            f"(e.g. data.data_dir=../shared/data){fetch}."
        )
    _verified.add(_fingerprint(folder))


_loaded: dict[tuple, CIFAR10Arrays] = {}


def load_cifar10(data_dir: str | Path, download: bool = False) -> CIFAR10Arrays:
    """Load all 60,000 images and labels as tensors (cached per process while the files are unchanged)."""
    ensure_cifar10(data_dir, download)
    key = _fingerprint(cifar10_folder(data_dir))
    if key not in _loaded:
        root = str(Path(data_dir).expanduser())
        try:
            train, test = CIFAR10(root, train=True), CIFAR10(root, train=False)
        except Exception as exc:  # e.g. a file that cannot be read although its md5 was fine before
            raise DataError(
                f"CIFAR-10 under {cifar10_folder(data_dir)} could not be read ({type(exc).__name__}: {exc}). "
                f"Fix: check the files' permissions, or replace the folder with a fresh copy (data.download=true)."
            ) from exc
        _loaded.clear()  # keep one copy: the data set is 180 MB
        _loaded[key] = CIFAR10Arrays(
            # numpy HWC -> NCHW view with channels-last strides, no copy.
            train_images=torch.from_numpy(train.data).permute(0, 3, 1, 2),
            train_labels=torch.tensor(train.targets, dtype=torch.long),
            test_images=torch.from_numpy(test.data).permute(0, 3, 1, 2),
            test_labels=torch.tensor(test.targets, dtype=torch.long),
            classes=tuple(train.classes),
        )
    return _loaded[key]


def stratified_split(labels: Tensor, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Split indices into (train, val), taking round(val_fraction * n_c) of each class c at random."""
    generator = torch.Generator().manual_seed(seed)
    val_parts = []
    for cls in torch.unique(labels):
        members = torch.nonzero(labels == cls).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        val_parts.append(members[: round(val_fraction * len(members))])
    is_val = torch.zeros(len(labels), dtype=torch.bool)
    is_val[torch.cat(val_parts)] = True
    return torch.nonzero(~is_val).flatten(), torch.nonzero(is_val).flatten()


def channel_stats(images: Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of uint8 images, on the [0, 1] scale.

    Exact: computed from each channel's 256-bin histogram of pixel values.
    """
    per_channel = images.transpose(0, 1).reshape(images.shape[1], -1)
    counts = torch.stack([torch.bincount(values, minlength=256) for values in per_channel]).double()
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    total = counts.sum(dim=1)
    mean = (counts * levels).sum(dim=1) / total
    var = (counts * levels**2).sum(dim=1) / total - mean**2
    return mean.tolist(), var.sqrt().tolist()


def normalize(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 images -> float32 with zero mean and unit variance per channel (mean/std on the [0, 1] scale)."""
    scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1)
    shift = (mean / std).view(1, -1, 1, 1)
    return images.float().mul_(scale).sub_(shift)


class TensorBatchLoader:
    """Batches straight out of in-memory tensors: one index operation per batch.

    Shuffled loaders draw a fresh permutation each epoch from `seed + epoch`, so runs repeat
    exactly. Under several processes (DDP) each rank takes every world_size-th index of the
    permutation, so ranks see disjoint data.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(math.ceil(len(self.labels) / self.world_size) / self.batch_size)

    def _order(self) -> Tensor:
        if not self.shuffle:
            order = torch.arange(len(self.labels))
        else:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(len(self.labels), generator=generator)
            self.epoch += 1
        return order[self.rank :: self.world_size]

    def __iter__(self):
        order = self._order()
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            yield self.images[idx], self.labels[idx]


class CIFAR10DataModule(L.LightningDataModule):
    """CIFAR-10 with a seeded stratified validation split taken from the training set.

    Normalization statistics come from the training split only and travel in checkpoints
    (state_dict), so evaluation normalizes exactly as training did. Batches leave the loaders
    as uint8 and are augmented (training only) and normalized after they reach the device.
    """

    def __init__(
        self,
        data_dir: str = "data/",
        download: bool = True,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        crop_padding: int = 0,
        flip: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}; e.g. data.val_fraction=0.1")
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(crop_padding, int) or crop_padding < 0:
            raise ValueError(f"crop_padding must be a non-negative integer, got {crop_padding!r}")
        self.save_hyperparameters(logger=False)
        self.data_dir, self.download = data_dir, download
        self.val_fraction, self.split_seed, self.seed = val_fraction, split_seed, seed
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.crop_padding, self.flip = crop_padding, flip
        self.arrays: CIFAR10Arrays | None = None
        self.train_idx: Tensor | None = None
        self.val_idx: Tensor | None = None
        self.mean: list[float] | None = None
        self.std: list[float] | None = None
        self._device_stats: dict[torch.device, tuple[Tensor, Tensor]] = {}
        self._generators: dict[torch.device, torch.Generator] = {}

    @property
    def classes(self) -> tuple[str, ...]:
        return self.arrays.classes if self.arrays else CIFAR10_CLASSES

    def prepare_data(self) -> None:
        ensure_cifar10(self.data_dir, self.download)

    def setup(self, stage: str | None = None) -> None:
        if self.arrays is not None:
            return
        self.arrays = load_cifar10(self.data_dir, self.download)
        self.train_idx, self.val_idx = stratified_split(self.arrays.train_labels, self.val_fraction, self.split_seed)
        if self.mean is None:  # not already restored from a checkpoint
            self.mean, self.std = channel_stats(self.arrays.train_images[self.train_idx])

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, images: Tensor, labels: Tensor, batch_size: int, shuffle: bool) -> TensorBatchLoader:
        rank, world = self._rank_and_world()
        return TensorBatchLoader(
            images, labels, batch_size, shuffle=shuffle, seed=self.seed, rank=rank, world_size=world
        )

    def train_dataloader(self) -> TensorBatchLoader:
        a = self.arrays
        return self._loader(a.train_images[self.train_idx], a.train_labels[self.train_idx], self.batch_size, True)

    def val_dataloader(self) -> TensorBatchLoader:
        a = self.arrays
        return self._loader(a.train_images[self.val_idx], a.train_labels[self.val_idx], self.eval_batch_size, False)

    def test_dataloader(self) -> TensorBatchLoader:
        return self._loader(self.arrays.test_images, self.arrays.test_labels, self.eval_batch_size, False)

    def predict_dataloader(self) -> TensorBatchLoader:
        return self.test_dataloader()

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 batch -> normalized float batch, with the training split's statistics."""
        if self.mean is None:
            raise RuntimeError("normalization statistics are not known yet: call setup() first")
        device = images.device
        if device not in self._device_stats:
            self._device_stats[device] = (
                torch.tensor(self.mean, device=device),
                torch.tensor(self.std, device=device),
            )
        return normalize(images, *self._device_stats[device])

    def augment(self, images: Tensor) -> Tensor:
        """Random crop and flip, as configured, drawn from a seeded generator on the batch's device."""
        if self.crop_padding == 0 and not self.flip:
            return images
        device = images.device
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        generator = self._generators[device]
        images = random_crop(images, self.crop_padding, generator)
        return random_flip(images, generator) if self.flip else images

    def on_after_batch_transfer(self, batch: tuple[Tensor, Tensor], dataloader_idx: int) -> tuple[Tensor, Tensor]:
        images, labels = batch
        if self.trainer is not None and self.trainer.training:
            images = self.augment(images)
        return self.normalize(images), labels

    def state_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std}

    def load_state_dict(self, state_dict: dict) -> None:
        self.mean, self.std = state_dict["mean"], state_dict["std"]
        self._device_stats.clear()

