"""The LightningDataModule: a seeded stratified validation split, normalization statistics of the training split
(kept in checkpoints), and uint8 batches augmented (training only) and normalized on the device."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
from torch import Tensor

from cifar_lightning.augment import (
    alternating_flip,
    alternating_flip_choice,
    cutout,
    random_crop,
    random_flip,
    random_translate,
)
from cifar_lightning.config.data import EVAL_BATCH_SIZE
from cifar_lightning.data.files import CIFAR10_CLASSES, CIFAR10Arrays, ensure_cifar10, load_cifar10
from cifar_lightning.data.loader import TensorBatchLoader


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
    """Exact per-channel mean and std of uint8 images on the [0, 1] scale, from each channel's 256-bin histogram."""
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


class CIFAR10DataModule(L.LightningDataModule):
    """CIFAR-10 with a seeded stratified validation split; settings: cifar_lightning/config/data.py. The augmentation
    generators' states and the training loader's position travel in state_dict, as Lightning skips loading loader
    states when the training loader was built before the fit loop was restored (e.g. by a per-step schedule)."""

    def __init__(
        self,
        data_dir: str = "data/",
        download: bool = True,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        batch_size: int = 128,
        eval_batch_size: int = EVAL_BATCH_SIZE,
        crop_padding: int = 0,
        flip: bool | str = False,
        seed: int = 0,
        translate: int = 0,
        cutout: int = 0,
        on_device: bool = True,
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        for name, value in self.hparams.items():  # each setting as an attribute: self.batch_size, self.flip, ...
            setattr(self, name, value)
        self.arrays: CIFAR10Arrays | None = None
        self.train_idx: Tensor | None = None
        self.val_idx: Tensor | None = None
        self.mean: list[float] | None = None  # the training split's statistics, from setup or a checkpoint
        self.std: list[float] | None = None
        self._device_stats: dict[torch.device, tuple[Tensor, Tensor]] = {}
        self._generators: dict[torch.device, torch.Generator] = {}
        self._generator_states: dict[str, Tensor] = {}  # restored from a checkpoint, for generators not made yet
        self._train_loader: TensorBatchLoader | None = None
        self._train_loader_state: dict | None = None  # restored from a checkpoint, for the next training loader
        self._mean_pixels: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    @property
    def has_validation(self) -> bool:
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

    def _loader(self, images: Tensor, labels: Tensor, batch_size: int, shuffle: bool, **kwargs) -> TensorBatchLoader:
        rank, world = self._rank_and_world()
        device = self.trainer.strategy.root_device if self.on_device and self.trainer is not None else None
        drops = {"drop_remainder": shuffle, "drop_last": shuffle and self.drop_last}
        return TensorBatchLoader(images, labels, batch_size, shuffle, self.seed, rank, world, device, **drops, **kwargs)

    def train_dataloader(self) -> TensorBatchLoader:
        a = self.arrays
        images, labels = a.train_images[self.train_idx], a.train_labels[self.train_idx]
        transform = self._alternating_flip_transform(len(labels)) if self.flip == "alternating" else None
        # The trainer's epoch, read at the epoch's first batch, so it is right after a resume too.
        source = (lambda: self.trainer.current_epoch) if self.trainer is not None else None
        loader = self._loader(images, labels, self.batch_size, True, epoch_transform=transform, epoch_source=source)
        if self._train_loader_state is not None:  # resumed: continue at the checkpoint's batch
            loader.load_state_dict(self._train_loader_state)
            self._train_loader_state = None
        self._train_loader = loader
        return loader

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

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 batch -> normalized float batch, with the training split's statistics."""
        if self.mean is None:
            raise RuntimeError("normalization statistics are not known yet: call setup() first")
        device = images.device
        if device not in self._device_stats:
            self._device_stats[device] = (torch.tensor(self.mean, device=device), torch.tensor(self.std, device=device))
        return normalize(images, *self._device_stats[device])

    def augment(self, images: Tensor) -> Tensor:
        """Crop, translate, flip and cutout as configured, drawn from a generator on the batch's device seeded per
        rank."""
        random_flips = self.flip is True
        if self.crop_padding == 0 and self.translate == 0 and not random_flips and self.cutout == 0:
            return images
        device = images.device
        if device not in self._generators:
            rank, _ = self._rank_and_world()
            seed = self.seed if rank == 0 else hash((self.seed, rank)) & (2**63 - 1)
            self._generators[device] = torch.Generator(device=device).manual_seed(seed)
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

    def _mean_pixel(self, images: Tensor) -> Tensor:
        """The training mean per channel in `images`' dtype (0-255 for uint8), once per device and dtype."""
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
        """The normalization statistics; for resume, the augmentation generators and the training loader."""
        generators = {str(device): generator.get_state() for device, generator in self._generators.items()}
        loader = self._train_loader.state_dict() if self._train_loader is not None else None
        augment_generators = {**self._generator_states, **generators}
        return {"mean": self.mean, "std": self.std, "augment_generators": augment_generators, "train_loader": loader}

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
