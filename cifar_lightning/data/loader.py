"""Batches cut straight out of in-memory uint8 tensors on the training device: one index operation per
batch, no per-image Python and, with `device`, no host-to-device copy per step."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor


class TensorBatchLoader:
    """Shuffled loaders permute each epoch with `seed + epoch` on the CPU (the same on every device and rank). Under
    DDP each rank takes every world_size-th index and all ranks yield as many batches, or collectives hang: training
    drops the remainder (as DistributedSampler does); evaluation pads a short shard with an empty batch.
    epoch_transform(images, epoch) applies to the whole split in its fixed order (the alternating flip). Resume: the
    state is the epoch and how many of its batches were trained on (batch_taken, as Lightning reads ahead)."""

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
            order = torch.randperm(len(self.labels), generator=torch.Generator().manual_seed(self.seed + epoch))
        if self.drop_remainder:
            order = order[: len(order) - len(order) % self.world_size]
        return order[self.rank :: self.world_size]

    def batch_taken(self) -> None:
        self.consumed += 1

    def state_dict(self) -> dict[str, int | None]:
        return {"epoch": self.served_epoch, "consumed": self.consumed}

    def load_state_dict(self, state_dict: dict[str, int | None]) -> None:
        """Resume: the next iteration, if it is of the saved epoch, starts after its consumed batches."""
        if state_dict.get("epoch") is not None:
            self._resume_at = (int(state_dict["epoch"]), int(state_dict.get("consumed") or 0))

    def __iter__(self):
        if self.device is not None and self.images.device != self.device:
            self.images = self.images.to(self.device, non_blocking=True)
            self.labels = self.labels.to(self.device, non_blocking=True)
        if self.epoch_source is not None:
            epoch = self.epoch_source()
        else:
            epoch = self.epoch
            if self.shuffle:
                self.epoch += 1
        resume_epoch, consumed = self._resume_at or (None, 0)
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
