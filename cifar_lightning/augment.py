"""Batch-wise data augmentation on the training device, drawn once per image from a seeded generator on the batch's
device (torchvision's transforms draw once per batch), and test-time augmentation."""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def _random_windows(padded: Tensor, height: int, width: int, generator: torch.Generator) -> Tensor:
    """Cut one random height x width window per image out of a padded batch."""
    n = padded.shape[0]
    max_row, max_col = padded.shape[2] - height, padded.shape[3] - width
    assert max_row == max_col, "windows are drawn from equal padding on all sides"
    shifts = torch.randint(0, max_row + 1, (2, n), generator=generator, device=padded.device)
    rows = shifts[0][:, None] + torch.arange(height, device=padded.device)  # (N, H)
    cols = shifts[1][:, None] + torch.arange(width, device=padded.device)  # (N, W)
    batch = torch.arange(n, device=padded.device)[:, None, None]
    # Index the channels-last view so one gather moves whole pixels: result (N, H, W, C).
    cropped = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return cropped.permute(0, 3, 1, 2)


def random_crop(images: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Pad every image by `padding` zeros and cut a random HxW window per image."""
    if padding <= 0:
        return images
    padded = F.pad(images, (padding, padding, padding, padding))
    return _random_windows(padded, images.shape[2], images.shape[3], generator)


def random_translate(images: Tensor, pixels: int, generator: torch.Generator) -> Tensor:
    """Shift each image by its own random offset of up to `pixels`, the border reflected (no black frame)."""
    if pixels <= 0:
        return images
    padded = F.pad(images, (pixels, pixels, pixels, pixels), mode="reflect")
    return _random_windows(padded, images.shape[2], images.shape[3], generator)


def random_flip(images: Tensor, generator: torch.Generator) -> Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], generator=generator, device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def alternating_flip_choice(n: int, generator: torch.Generator) -> Tensor:
    """Which of n images alternating_flip mirrors in even epochs: a fixed random half (bool, (n,))."""
    return torch.rand(n, generator=generator, device=generator.device) < 0.5


def alternating_flip(images: Tensor, flipped_in_even_epochs: Tensor, epoch: int) -> Tensor:
    """Mirror image i of a whole split (in its fixed order) in epoch e iff flipped_in_even_epochs[i] xor (e is odd):
    over two epochs every image is seen both ways, not in a random half of epochs (airbench's alternating flip)."""
    flip = flipped_in_even_epochs ^ bool(epoch % 2)
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def cutout(images: Tensor, size: int, generator: torch.Generator, fill: Tensor | float = 0) -> Tensor:
    """Blank one random size x size square, wholly inside, per image (DeVries & Taylor's cutout) with `fill`, a value
    or a per-channel (C,) tensor (the data module's: the training mean, which normalizes to zero)."""
    if size <= 0:
        return images
    n, c, h, w = images.shape
    if size > min(h, w):
        raise ValueError(f"cutout size {size} is larger than the {h}x{w} images")
    corners = torch.randint(0, min(h, w) - size + 1, (2, n), generator=generator, device=images.device)
    rows = torch.arange(h, device=images.device)[None, :] - corners[0][:, None]  # (N, H): row - top
    cols = torch.arange(w, device=images.device)[None, :] - corners[1][:, None]
    inside = ((rows >= 0) & (rows < size))[:, :, None] & ((cols >= 0) & (cols < size))[:, None, :]  # (N, H, W)
    fill = torch.as_tensor(fill, dtype=images.dtype, device=images.device).reshape(1, -1, 1, 1).expand(1, c, 1, 1)
    return torch.where(inside[:, None], fill, images)


@torch.no_grad()
def tta_logits(model: Callable[[Tensor], Tensor], images: Tensor, level: int = 2) -> Tensor:
    """Logits averaged over test-time views of normalized images: level 0 none, 1 with mirror images, 2 also shifted
    one pixel up-left and down-right, each with its mirror (airbench's weights: 1/2 unshifted, 1/8 each shifted)."""

    def with_mirror(x: Tensor) -> Tensor:
        return 0.5 * model(x) + 0.5 * model(x.flip(3)) if level >= 1 else model(x)

    logits = with_mirror(images)
    if level < 2:
        return logits
    h, w = images.shape[2:]
    padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
    shifted = [padded[:, :, :h, :w], padded[:, :, 2 : 2 + h, 2 : 2 + w]]
    return 0.5 * logits + 0.25 * sum(with_mirror(x) for x in shifted)
