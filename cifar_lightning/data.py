"""CIFAR-10 as in-memory uint8 tensors: md5-checked loading, a stratified split, batch-wise
normalization and augmentation on the training device.

The whole data set (180 MB as uint8) is loaded once; batches are index operations on those
tensors, so no per-image Python runs in the training loop. With `on_device` (the default) each
split moves to the training device once per fit, so a GPU step needs no host-to-device copy:
the loader's index, the augmentation and the normalization all run where the model does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torchvision.datasets import CIFAR10
from torchvision.datasets.utils import check_integrity

from cifar_lightning.augment import (
    alternating_flip,
    alternating_flip_choice,
    cutout,
    random_crop,
    random_flip,
    random_translate,
)
from cifar_lightning.errors import DataError, is_fraction, is_int

#: Every file of the official python version, with the md5 torchvision checks it against.
CIFAR10_FILES: tuple[tuple[str, str], ...] = (
    *(tuple(entry) for entry in CIFAR10.train_list),
    *(tuple(entry) for entry in CIFAR10.test_list),
    (CIFAR10.meta["filename"], CIFAR10.meta["md5"]),
)

#: data.flip: off, a random half of each batch, or alternating (see augment.alternating_flip).
FLIP_CHOICES = (False, True, "alternating")

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


#: Share of the training images that evaluation holds out (OOD thresholds) for a run that held out none
#: (data.val_fraction=0): those images were trained on, which evaluation reports (see held_out_split).
FALLBACK_VAL_FRACTION = 0.02


def held_out_split(run_data: Mapping[str, Any] | None) -> tuple[dict[str, Any], bool]:
    """The (val_fraction, split_seed) a run's evaluation uses, and whether its validation images were trained on.

    A run's own split is kept, so that OOD detectors are fitted on its training split and thresholded on images it
    did not train on. A run without a validation split gets FALLBACK_VAL_FRACTION of its training images instead.
    """
    run_data = run_data if isinstance(run_data, Mapping) else {}
    split = {key: run_data[key] for key in ("val_fraction", "split_seed") if key in run_data}
    if split.get("val_fraction", 1) == 0:
        return {**split, "val_fraction": FALLBACK_VAL_FRACTION}, True
    return split, False


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

    Shuffled loaders draw a fresh permutation each epoch from `seed + epoch` (on the CPU, so the
    order is the same on every device and every rank), so runs repeat exactly. Under several
    processes (DDP) each rank takes every world_size-th index of it, so ranks see disjoint data,
    and every rank must yield the same number of batches, or the ranks' collectives hang:

    drop_remainder (training): the permutation's last len % world_size indices are left out
        of the epoch (different ones each epoch, none with one process), so every rank gets
        exactly len // world_size images, as DistributedSampler(drop_last=True) does.
    drop_last: each epoch ends before its last, incomplete batch (training only: the images left
        out differ from epoch to epoch, as the order is shuffled).
    otherwise (evaluation): every image is scored exactly once; shards differ by at most one
        image, and a rank whose shard needs one batch fewer ends with an empty batch, which
        the module skips, so the batch counts match.

    epoch_source: returns the epoch being trained (CIFAR10DataModule passes the trainer's), so a
        resumed fit gets the permutation of the epoch it resumes in; None counts epochs privately
        (standalone use).
    The loader is stateful in Lightning's sense (state_dict/load_state_dict): its state is the
    epoch and how many of its batches training has taken (`consumed`, counted by whoever takes
    them: CIFAR10DataModule.on_after_batch_transfer; the loader itself cannot tell, as Lightning
    reads ahead when a loader has no length). Lightning loads it when it resumes from a mid-epoch
    checkpoint, and the next iteration of that epoch skips the batches already trained on.
    (CIFAR10DataModule also carries this state in its own, because Lightning skips loading loader
    states when something built the training loader before the fit loop was restored, e.g. a
    per-step schedule asking for trainer.estimated_stepping_batches.)

    device: where batches are cut. The tensors move there on the first epoch and stay for the
        loader's life (one fit), and each epoch's order moves once, so steps make no host round
        trips. None keeps them where they are.
    epoch_transform: called as f(images, epoch) on the whole split, in its fixed order, at the
        start of each epoch; batches are cut from its result (e.g. alternating_flip, which needs
        to know each image's identity).
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
        device: torch.device | str | None = None,
        epoch_transform: Callable[[Tensor, int], Tensor] | None = None,
        drop_remainder: bool = False,
        epoch_source: Callable[[], int] | None = None,
        drop_last: bool = False,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device) if device is not None else None
        self.epoch_transform = epoch_transform
        self.drop_remainder, self.drop_last = drop_remainder, drop_last
        self.epoch_source = epoch_source
        self.epoch = 0  # the next epoch, when there is no epoch_source
        #: Epoch of the latest iteration, and how many of its batches were taken.
        self.served_epoch: int | None = None
        self.consumed = 0
        self._resume_at: tuple[int, int] | None = None

    def _shard_size(self) -> int:
        """Images per rank: the same on every rank when dropping the remainder, else the largest shard."""
        n = len(self.labels)
        return n // self.world_size if self.drop_remainder else math.ceil(n / self.world_size)

    def __len__(self) -> int:
        if self.drop_last:
            return self._shard_size() // self.batch_size
        return math.ceil(self._shard_size() / self.batch_size)

    def _order(self, epoch: int | None = None) -> Tensor:
        """This rank's indices for `epoch` (default: the epoch the next iteration serves), in order."""
        if epoch is None:
            epoch = self.epoch_source() if self.epoch_source is not None else self.epoch
        if not self.shuffle:
            order = torch.arange(len(self.labels))
        else:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(len(self.labels), generator=generator)
        if self.drop_remainder:
            order = order[: len(order) - len(order) % self.world_size]
        return order[self.rank :: self.world_size]

    def _move_to_device(self) -> None:
        if self.device is not None and self.images.device != self.device:
            self.images = self.images.to(self.device, non_blocking=True)
            self.labels = self.labels.to(self.device, non_blocking=True)

    def batch_taken(self) -> None:
        """Count one batch of the current iteration as trained on (see the class docstring)."""
        self.consumed += 1

    def state_dict(self) -> dict[str, int | None]:
        return {"epoch": self.served_epoch, "consumed": self.consumed}

    def load_state_dict(self, state_dict: dict[str, int | None]) -> None:
        """Resume: the next iteration, if it is of the saved epoch, starts after its consumed batches."""
        if state_dict.get("epoch") is not None:
            self._resume_at = (int(state_dict["epoch"]), int(state_dict.get("consumed") or 0))

    def __iter__(self):
        self._move_to_device()
        if self.epoch_source is not None:
            epoch = self.epoch_source()
        else:
            epoch = self.epoch
            if self.shuffle:
                self.epoch += 1
        skip = 0
        if self._resume_at is not None:
            resume_epoch, consumed = self._resume_at
            self._resume_at = None
            skip = consumed if resume_epoch == epoch else 0
        self.served_epoch, self.consumed = epoch, skip
        order = self._order(epoch).to(self.labels.device)
        images = self.epoch_transform(self.images, epoch) if self.epoch_transform is not None else self.images
        batches = skip
        end = len(order) - len(order) % self.batch_size if self.drop_last else len(order)
        for start in range(skip * self.batch_size, end, self.batch_size):
            idx = order[start : start + self.batch_size]
            batches += 1
            yield images[idx], self.labels[idx]
        for _ in range(batches, len(self)):  # a short evaluation shard: keep the batch count of the others
            yield images[:0], self.labels[:0]


class CIFAR10DataModule(L.LightningDataModule):
    """CIFAR-10 with a seeded stratified validation split taken from the training set.

    Normalization statistics come from the training split only and travel in checkpoints
    (state_dict), so evaluation normalizes exactly as training did. Batches leave the loaders
    as uint8 and are augmented (training only) and normalized after they reach the device.

    Training augmentation, each drawn per image (cifar_lightning/augment.py), in this order:
    crop_padding (random crop with zero padding), translate (random shift with reflect padding),
    flip (true: random; "alternating": each image mirrored every other epoch), cutout (a random
    square filled with the training mean, i.e. zero after normalization).
    on_device: keep every split on the training device for the fit (see TensorBatchLoader).
    val_fraction: 0 holds nothing out: training uses all 50,000 images and there is no validation
        loop (has_validation is False; train.py then tests and keeps the final weights).
    drop_last: leave each epoch's last, incomplete training batch out (airbench: 50,000 // 1024 = 48
        steps per epoch), so every step sees a full batch.
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
        flip: bool | str = False,
        seed: int = 0,
        translate: int = 0,
        cutout: int = 0,
        on_device: bool = True,
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        if not is_fraction(val_fraction, zero=True, one=False):
            raise ValueError(
                f"val_fraction must be in [0, 1) (0: train on all 50,000 images, no validation), got {val_fraction!r}; "
                f"e.g. data.val_fraction=0.1"
            )
        if not isinstance(drop_last, bool):
            raise ValueError(f"drop_last must be true or false, got {drop_last!r}")
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name, value in (("crop_padding", crop_padding), ("translate", translate)):
            if not is_int(value, 0):
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}; e.g. data.{name}=2")
        if translate > 16:
            raise ValueError(f"translate must be at most 16 pixels (reflect padding), got {translate}")
        if not is_int(cutout, 0) or cutout > 32:
            raise ValueError(f"cutout must be a square side of 0 (off) to 32 pixels, got {cutout!r}, e.g. 8")
        if not isinstance(flip, bool) and flip != "alternating":
            raise ValueError(f"flip must be false, true or alternating, got {flip!r}; e.g. data.flip=alternating")
        if not isinstance(on_device, bool):
            raise ValueError(f"on_device must be true or false, got {on_device!r}")
        self.save_hyperparameters(logger=False)
        self.data_dir, self.download = data_dir, download
        self.val_fraction, self.split_seed, self.seed = val_fraction, split_seed, seed
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.crop_padding, self.flip = crop_padding, flip
        self.translate, self.cutout, self.on_device = translate, cutout, on_device
        self.drop_last = drop_last
        self.arrays: CIFAR10Arrays | None = None
        self.train_idx: Tensor | None = None
        self.val_idx: Tensor | None = None
        self.mean: list[float] | None = None
        self.std: list[float] | None = None
        self._device_stats: dict[torch.device, tuple[Tensor, Tensor]] = {}
        self._generators: dict[torch.device, torch.Generator] = {}
        self._generator_states: dict[str, Tensor] = {}  # restored from a checkpoint, for generators not made yet
        self._train_loader: TensorBatchLoader | None = None
        self._train_loader_state: dict | None = None  # restored from a checkpoint, for the next training loader
        self._mean_pixels: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    @property
    def has_validation(self) -> bool:
        """Whether a validation split is held out (val_fraction > 0)."""
        return self.val_fraction > 0

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

    def _device(self) -> torch.device | None:
        """The training device when splits should live there, else None (they stay on the CPU)."""
        if not self.on_device or self.trainer is None:
            return None
        return self.trainer.strategy.root_device

    def _loader(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        shuffle: bool,
        epoch_transform: Callable[[Tensor, int], Tensor] | None = None,
        epoch_source: Callable[[], int] | None = None,
    ) -> TensorBatchLoader:
        """Shuffled (training) loaders give every rank the same number of images; the others score
        every image exactly once (see TensorBatchLoader)."""
        rank, world = self._rank_and_world()
        return TensorBatchLoader(
            images, labels, batch_size, shuffle=shuffle, seed=self.seed, rank=rank, world_size=world,
            device=self._device(), epoch_transform=epoch_transform, drop_remainder=shuffle,
            epoch_source=epoch_source, drop_last=shuffle and self.drop_last,
        )  # fmt: skip

    def _training_epoch(self) -> int:
        """The epoch being trained: trainer.current_epoch, read when the epoch's first batch is drawn
        (Lightning does not read ahead from a loader with a length), so it is right after a resume too."""
        return self.trainer.current_epoch

    def train_dataloader(self) -> TensorBatchLoader:
        a = self.arrays
        images, labels = a.train_images[self.train_idx], a.train_labels[self.train_idx]
        transform = self._alternating_flip_transform(len(labels)) if self.flip == "alternating" else None
        source = self._training_epoch if self.trainer is not None else None
        self._train_loader = self._loader(images, labels, self.batch_size, True, transform, source)
        if self._train_loader_state is not None:  # resumed: continue at the checkpoint's batch
            self._train_loader.load_state_dict(self._train_loader_state)
            self._train_loader_state = None
        return self._train_loader

    def _alternating_flip_transform(self, n: int) -> Callable[[Tensor, int], Tensor]:
        """Each epoch's images with the alternating flip; the even-epoch half is drawn once from the seed."""
        choice = alternating_flip_choice(n, torch.Generator().manual_seed(self.seed))
        on_device: dict[torch.device, Tensor] = {}

        def transform(images: Tensor, epoch: int) -> Tensor:
            if images.device not in on_device:
                on_device[images.device] = choice.to(images.device)
            return alternating_flip(images, on_device[images.device], epoch)

        return transform

    def first_train_images(self, n: int) -> Tensor:
        """The first n images of the training split, uint8, unaugmented (for data-dependent model init)."""
        if self.arrays is None:
            raise RuntimeError("the data is not loaded yet: call setup() first")
        return self.arrays.train_images[self.train_idx[:n]]

    def val_dataloader(self) -> TensorBatchLoader | list:
        """The validation split's loader; with val_fraction 0 none ([]: Lightning then runs no validation loop)."""
        if not self.has_validation:
            return []
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
        """Crop, translate, random flip and cutout, as configured, drawn from a seeded generator on
        the batch's device. (The alternating flip is applied per epoch by the training loader.)
        """
        random_flips = self.flip is True
        if self.crop_padding == 0 and self.translate == 0 and not random_flips and self.cutout == 0:
            return images
        device = images.device
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self._augment_seed())
            if str(device) in self._generator_states:  # resumed: continue where the checkpoint was
                self._generators[device].set_state(self._generator_states.pop(str(device)))
        generator = self._generators[device]
        images = random_crop(images, self.crop_padding, generator)
        images = random_translate(images, self.translate, generator)
        if random_flips:
            images = random_flip(images, generator)
        if self.cutout:
            images = cutout(images, self.cutout, generator, fill=self._mean_pixel(images))
        return images

    def _augment_seed(self) -> int:
        """The run's seed on rank 0 (so one process draws as before); a seed of its own on every other
        rank, so that ranks do not apply the same crops and flips to their k-th images."""
        rank, _ = self._rank_and_world()
        return self.seed if rank == 0 else hash((self.seed, rank)) & (2**63 - 1)

    def _mean_pixel(self, images: Tensor) -> Tensor:
        """The training mean per channel as a pixel value of `images`' dtype (0-255 for uint8).

        Made once per device and dtype: building it from the Python list each step would copy
        from the host every step.
        """
        key = (images.device, images.dtype)
        if key not in self._mean_pixels:
            mean = torch.tensor(self.mean, device=images.device)
            self._mean_pixels[key] = mean if images.is_floating_point() else (mean * 255).round().to(images.dtype)
        return self._mean_pixels[key]

    def on_after_batch_transfer(self, batch: tuple[Tensor, Tensor], dataloader_idx: int) -> tuple[Tensor, Tensor]:
        images, labels = batch
        if self.trainer is not None and self.trainer.training:
            images = self.augment(images)
            if self._train_loader is not None:
                self._train_loader.batch_taken()  # this batch is being trained on (see TensorBatchLoader)
        return self.normalize(images), labels

    def state_dict(self) -> dict:
        """The normalization statistics (evaluation reads them); for resume, the augmentation generators'
        states and the training loader's position (see TensorBatchLoader)."""
        generators = {str(device): generator.get_state() for device, generator in self._generators.items()}
        loader = self._train_loader.state_dict() if self._train_loader is not None else None
        return {"mean": self.mean, "std": self.std, "augment_generators": {**self._generator_states, **generators},
                "train_loader": loader}  # fmt: skip

    def load_state_dict(self, state_dict: dict) -> None:
        self.mean, self.std = state_dict["mean"], state_dict["std"]
        self._device_stats.clear()
        self._mean_pixels.clear()
        states = dict(state_dict.get("augment_generators") or {})
        for device, generator in self._generators.items():
            if str(device) in states:
                generator.set_state(states.pop(str(device)))
        self._generator_states = states
        self._train_loader_state = state_dict.get("train_loader")

