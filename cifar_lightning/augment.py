"""Batch-wise data augmentation on the training device.

Each function takes a whole batch (N, C, H, W) and a `torch.Generator` on the batch's device,
so augmentation costs a few tensor ops per batch and is reproducible under a seed.
torchvision's transforms draw one random crop/flip per call, i.e. per batch when given a batch,
which is why these per-image versions are written here.
"""

import torch
import torch.nn.functional as F
from torch import Tensor


def random_crop(images: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Pad every image by `padding` zeros and cut a random HxW window per image."""
    if padding <= 0:
        return images
    n, _, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    shifts = torch.randint(0, 2 * padding + 1, (2, n), generator=generator, device=images.device)
    rows = shifts[0][:, None] + torch.arange(h, device=images.device)  # (N, H)
    cols = shifts[1][:, None] + torch.arange(w, device=images.device)  # (N, W)
    batch = torch.arange(n, device=images.device)[:, None, None]
    # Index the channels-last view so one gather moves whole pixels: result (N, H, W, C).
    cropped = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return cropped.permute(0, 3, 1, 2)


def random_flip(images: Tensor, generator: torch.Generator) -> Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], generator=generator, device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(3), images)
