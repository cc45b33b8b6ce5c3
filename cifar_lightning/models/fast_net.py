"""A fast CIFAR-10 network in the style of Keller Jordan's airbench94 (arXiv 2404.00498), from the paper: a frozen
2x2 patch-whitening conv, three conv groups (64, 256, 256 channels), global max pool, x 1/9 and `fc` (the scale
comes before `fc`, with the same logits and gradients, so that `fc` stays the last layer). With ~10 epochs of
airbench's recipe (conf/experiment/fast94.yaml) it reaches 94%.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn


class PatchWhitening(nn.Conv2d):
    """A frozen conv whose filters whiten the image's patches: the patch covariance's eigenvectors divided by
    sqrt(eigenvalue + eps), each also negated so that a following GELU passes both signs. Only the bias trains."""

    def __init__(self, patch_size: int = 2, eps: float = 5e-4) -> None:
        dims = 3 * patch_size * patch_size
        super().__init__(3, 2 * dims, kernel_size=patch_size, bias=True)
        self.eps = eps
        self.weight.requires_grad_(False)
        with torch.no_grad():
            self.bias.zero_()  # airbench starts the whitening bias at zero (not torch's uniform init)

    @torch.no_grad()
    def init_from_data(self, images: Tensor) -> None:
        """Set the filters from normalized images (N, 3, H, W); the bias keeps its initialization and trains."""
        eigenvalues, eigenvectors = patch_eigenbasis(images, self.kernel_size[0])
        filters = eigenvectors / torch.sqrt(eigenvalues + self.eps)[:, None]  # one filter per row
        filters = filters.view(-1, *self.weight.shape[1:]).to(self.weight.dtype)
        self.weight.copy_(torch.cat([filters, -filters]))


def patch_eigenbasis(images: Tensor, patch_size: int) -> tuple[Tensor, Tensor]:
    """Eigenvalues (descending) and eigenvectors (rows, flattened like a conv filter) of the uncentered covariance
    of all patches of `images`, accumulated in float64 over chunks of images to bound memory."""
    dims = images.shape[1] * patch_size * patch_size
    covariance = torch.zeros(dims, dims, dtype=torch.float64, device=images.device)
    count = 0
    for chunk in images.split(500):
        patches = image_patches(chunk.float(), patch_size)
        covariance += (patches.T @ patches).double()
        count += patches.shape[0]
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance / count)  # ascending, vectors in columns
    return eigenvalues.flip(0).float(), eigenvectors.T.flip(0).float()


def image_patches(images: Tensor, size: int) -> Tensor:
    """Every size x size patch of (N, C, H, W) images, one per row, flattened as (channel, row, column)
    (as F.unfold, which is ~100x slower on some CPUs)."""
    n, c, h, w = images.shape
    shifted = [images[:, :, i : h - size + 1 + i, j : w - size + 1 + j] for i in range(size) for j in range(size)]
    patches = torch.stack(shifted, dim=2)  # (N, C, size*size, H', W')
    return patches.permute(0, 3, 4, 1, 2).reshape(-1, c * size * size)


class FrozenScaleBatchNorm(nn.BatchNorm2d):
    """Batch norm with its weight frozen at 1 (airbench); momentum: the share of the old running statistics kept."""

    def __init__(self, channels: int, momentum: float = 0.6, eps: float = 1e-12) -> None:
        super().__init__(channels, eps=eps, momentum=1.0 - momentum)
        self.weight.requires_grad_(False)


class ConvGroup(nn.Sequential):
    """conv 3x3 -> max-pool 2 -> BN -> GELU -> conv 3x3 -> BN -> GELU (convs unbiased, 'same' padding)."""

    def __init__(self, in_channels: int, out_channels: int, bn_momentum: float) -> None:
        super().__init__(
            OrderedDict(
                conv1=nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                pool=nn.MaxPool2d(2),
                bn1=FrozenScaleBatchNorm(out_channels, bn_momentum),
                act1=nn.GELU(),
                conv2=nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                bn2=FrozenScaleBatchNorm(out_channels, bn_momentum),
                act2=nn.GELU(),
            )
        )


class Scale(nn.Module):
    """Multiply by a constant (not a parameter)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor:g}"


@torch.no_grad()
def identity_init(conv: nn.Conv2d) -> None:
    """Start a conv as a partial identity (its first in_channels filters pass their channel through): deep stacks
    then start close to shallow ones, which trains faster in short runs."""
    in_channels = conv.weight.shape[1]
    nn.init.dirac_(conv.weight[: min(in_channels, conv.weight.shape[0])])


class FastNet(nn.Sequential):
    """airbench94-style network (see the module docstring); settings: cifar_lightning/config/model.py."""

    def __init__(
        self,
        num_classes: int = 10,
        widths: tuple[int, int, int] | list[int] = (64, 256, 256),
        whiten_patch: int = 2,
        whiten_eps: float = 5e-4,
        bn_momentum: float = 0.6,
        head_scale: float = 1 / 9,
        init_images: int = 5000,
    ) -> None:
        whiten = PatchWhitening(whiten_patch, whiten_eps)
        super().__init__(
            OrderedDict(
                whiten=whiten,
                act0=nn.GELU(),
                block1=ConvGroup(whiten.out_channels, widths[0], bn_momentum),
                block2=ConvGroup(widths[0], widths[1], bn_momentum),
                block3=ConvGroup(widths[1], widths[2], bn_momentum),
                pool=nn.AdaptiveMaxPool2d(1),
                flatten=nn.Flatten(),
                scale=Scale(head_scale),
                fc=nn.Linear(widths[2], num_classes, bias=False),
            )
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d) and not isinstance(module, PatchWhitening):
                identity_init(module)
        self.num_classes, self.init_images = num_classes, init_images

    def init_from_data(self, images: Tensor) -> None:
        """Compute the whitening filters from normalized training images (called at the start of fit)."""
        self.whiten.init_from_data(images.to(self.whiten.weight.device))
