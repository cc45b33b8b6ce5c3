"""CIFAR-10-C's 15 corruptions x 5 severities, generated here on whole uint8 batches (N, 3, 32, 32).

This is a re-implementation of the recipe of CIFAR-10-C (Hendrycks & Dietterich 2019, `make_cifar_c.py` in
github.com/hendrycks/robustness), with its CIFAR-10 parameters per severity: images generated here are not the
official CIFAR-10-C files (robustness.load_official_c reads those), and results on them are labelled "generated".
Why not a library: `imagecorruptions` 1.1.2 fails on this stack (pkg_resources is gone from setuptools, glass_blur
calls scikit-image's removed `multichannel`, fog NumPy 2's removed `np.float_`), it carries ImageNet-C's 224-px
parameters, not CIFAR-10-C's, and it takes ~10 ms per image (15 x 5 x 10,000 images: over two hours). Here each
corruption is vectorized over the batch (torch, SciPy, OpenCV for one kernel) and deterministic given a seed.

Where it departs from the original (same parameters, different tools; compared with make_cifar_c.py's own code
run here on test images):
- motion_blur and snow's streaks: the original called ImageMagick (Wand); here the same MotionBlurImage operation
  is a line-kernel convolution at the drawn angle (2*radius+1 half-Gaussian taps, edge pixels repeated), applied
  to shifted copies of the images, without ImageMagick; it equals ImageMagick 6's `convert -motion-blur` within
  one grey level;
- glass_blur: the original's sequential chain of neighbour swaps is kept, run on pixel indices over all images
  of the batch at once (a loop over the 30 x 30 positions, not over images);
- elastic_transform: torch grid_sample with OpenCV's and SciPy's borders (within one grey level; OpenCV rounds
  positions to 1/32 pixel); zoom_blur and the blurs: matrix products and convolutions (within one grey level);
- random numbers come from a torch.Generator per (seed, corruption, severity, part), not NumPy's global state,
  so the random corruptions draw other noise, flakes, crops and angles than the official files did; the
  deterministic ones reproduce the original's output within one grey level (pixelate and JPEG: the same bytes).
Frost overlays Hendrycks' frost pictures (frost1-5, as the original draws), read from the folder the
`imagecorruptions` wheel ships (the package is not imported); without them frost is refused with the fix.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor
from torchvision.io import decode_jpeg, encode_jpeg

from cifar_lightning.errors import ConfigError, DataError

#: CIFAR-10-C's corruptions, in its order; each name is also its official file's (<name>.npy).
CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)  # fmt: skip
SEVERITIES = (1, 2, 3, 4, 5)
SIZE = 32
FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")  # the original draws of 5


def corruption_seed(seed: int, name: str, severity: int, part: int = 0) -> int:
    """One independent random stream per (seed, corruption, severity, part of a long batch)."""
    state = np.random.SeedSequence([seed, CORRUPTIONS.index(name), severity, part]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


def corrupt(images: Tensor, name: str, severity: int, seed: int = 0, part: int = 0) -> Tensor:
    """The batch with one corruption at one severity (1..5): uint8 (N, 3, 32, 32) in and out, the same for
    the same seed and part (see corruption_seed). Float results are truncated to uint8 as the original's
    np.uint8 did."""
    if name not in CORRUPTIONS or severity not in SEVERITIES:
        raise ConfigError(
            f"unknown corruption {name!r} or severity {severity!r}. Fix: use one of {', '.join(CORRUPTIONS)} "
            f"at a severity in 1..5."
        )
    if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != (3, SIZE, SIZE):
        raise ValueError(f"corrupt takes uint8 images (N, 3, 32, 32), not {images.dtype} {tuple(images.shape)}")
    generator = torch.Generator().manual_seed(corruption_seed(seed, name, severity, part))
    x = images.contiguous().float().div(255)  # CIFAR10Arrays keeps channels-last memory
    out = _FUNCTIONS[name](x, severity - 1, generator) if len(images) else x
    if out.dtype == torch.uint8:
        return out.contiguous()
    return out.clamp(0, 1).mul(255).to(torch.uint8).contiguous()


def _uniform(shape: tuple, low: float, high: float, g: torch.Generator) -> Tensor:
    return torch.rand(shape, generator=g, dtype=torch.float64) * (high - low) + low


# Noise


def gaussian_noise(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    return x + torch.randn(x.shape, generator=g) * [0.04, 0.06, 0.08, 0.09, 0.10][s]


def shot_noise(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    rate = [500, 250, 100, 75, 50][s]
    return torch.poisson(x * rate, generator=g) / rate


def impulse_noise(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    """Salt and pepper on each value independently, as scikit-image's random_noise(mode='s&p')."""
    flipped = torch.rand(x.shape, generator=g) < [0.01, 0.02, 0.03, 0.05, 0.07][s]
    salt = (torch.rand(x.shape, generator=g) < 0.5).float()
    return torch.where(flipped, salt, x)


# Blurs


def _gaussian(x: Tensor, sigma: float, mode: str, truncate: float = 4.0) -> Tensor:
    """scikit-image's gaussian (SciPy's gaussian_filter) over the last two axes of every image at once."""
    sigmas = (0,) * (x.ndim - 2) + (sigma, sigma)
    return torch.from_numpy(ndimage.gaussian_filter(x.numpy(), sigmas, mode=mode, truncate=truncate))


def defocus_blur(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    radius, alias_blur = [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)][s]
    axis = np.arange(-8, 9)
    xx, yy = np.meshgrid(axis, axis)
    disk = ((xx**2 + yy**2) <= radius**2).astype(np.float32)
    kernel = cv2.GaussianBlur(disk / disk.sum(), ksize=(3, 3), sigmaX=alias_blur)  # the original's anti-aliasing
    nonzero = np.abs(np.argwhere(kernel != 0) - 8).max()  # crop the zero border: same result, fewer taps
    kernel = torch.from_numpy(kernel[8 - nonzero : 9 + nonzero, 8 - nonzero : 9 + nonzero].copy())
    padded = F.pad(x, (nonzero,) * 4, mode="reflect")  # OpenCV filter2D's default border (reflect 101)
    return F.conv2d(padded, kernel.expand(3, 1, *kernel.shape).contiguous(), groups=3)


def glass_blur(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    """Blur, swap each pixel with a random neighbour (the original's sequential sweep, on pixel indices, for the
    whole batch at once), blur again."""
    sigma, delta, iterations = [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)][s]
    x = _gaussian(x, sigma, "nearest").mul(255).to(torch.uint8)
    n, positions = len(x), range(SIZE - delta, delta, -1)
    steps = iterations * len(positions) ** 2
    shifts = torch.randint(-delta, delta, (steps, 2, n), generator=g).numpy()  # randint's high is exclusive
    source, rows, step = np.tile(np.arange(SIZE * SIZE), (n, 1)), np.arange(n), 0
    for _ in range(iterations):
        for h in positions:
            for w in positions:
                dx, dy = shifts[step]
                here, there = h * SIZE + w, (h + dy) * SIZE + (w + dx)
                kept = source[:, here].copy()
                source[:, here] = source[rows, there]
                source[rows, there] = kept
                step += 1
    index = torch.from_numpy(source).unsqueeze(1).expand(n, 3, SIZE * SIZE)
    swapped = x.flatten(2).gather(2, index).view_as(x)
    return _gaussian(swapped.float() / 255, sigma, "nearest")


def line_blur(x: Tensor, radius: float, sigma: float, angles: Tensor) -> Tensor:
    """ImageMagick's MotionBlurImage without ImageMagick: each pixel becomes the half-Gaussian weighted mean of
    the 2*radius+1 pixels on a line from it at angles[i] degrees (image i), edge pixels repeated, and 8 bits
    out as ImageMagick 6 (Q16) writes them (equal to `convert -motion-blur` here, checked on test images)."""
    n, c, h, w = x.shape
    width = 2 * int(np.ceil(radius)) + 1
    taps = torch.arange(width, dtype=torch.float64)
    weights = torch.exp(-(taps**2) / (2 * sigma**2))
    weights = (weights / weights.sum()).float()
    radians = torch.deg2rad(angles.double())[:, None]
    dx = torch.ceil(taps * torch.cos(radians) - 0.5).long()  # (n, width)
    dy = torch.ceil(taps * torch.sin(radians) - 0.5).long()
    pad = width - 1
    padded = F.pad(x, (pad,) * 4, mode="replicate")  # ImageMagick's default edge virtual pixels
    out = torch.empty_like(x)
    patterns, group_of = torch.unique(torch.cat([dx, dy], 1), dim=0, return_inverse=True)
    for k, pattern in enumerate(patterns.tolist()):  # images whose angles give the same pixel offsets, at once
        members = torch.nonzero(group_of == k).flatten()
        group, total = padded[members], torch.zeros(len(members), c, h, w)
        for t in range(width):
            top, left = pad + pattern[width + t], pad + pattern[t]
            total += weights[t] * group[:, :, top : top + h, left : left + w]
        out[members] = total
    quantum = out.clamp(0, 1).mul(65535).round()  # ImageMagick Q16, then its 8-bit PNG
    return torch.div(quantum, 257, rounding_mode="floor").to(torch.uint8)


def motion_blur(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    radius, sigma = [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)][s]
    return line_blur(x, radius, sigma, _uniform((len(x),), -45, 45, g))


@lru_cache(maxsize=64)
def zoom_matrix(factor: float, size: int = SIZE) -> Tensor:
    """The original's clipped_zoom along one axis as a (size, size) matrix: crop the centre ceil(size/factor)
    pixels, zoom them by `factor` with linear interpolation (SciPy's zoom, corners aligned), keep the centre."""
    crop = int(np.ceil(size / factor))
    top, zoomed = (size - crop) // 2, int(round(crop * factor))
    trim = (zoomed - size) // 2
    matrix = np.zeros((size, size))
    for row in range(size):
        position = (row + trim) * (crop - 1) / (zoomed - 1) if zoomed > 1 else 0.0
        low = int(np.floor(position))
        frac = position - low
        matrix[row, top + low] += 1 - frac
        matrix[row, top + min(low + 1, crop - 1)] += frac
    return torch.from_numpy(matrix).float()


def clipped_zoom(x: Tensor, factor: float) -> Tensor:
    """Zoom the last two axes of every image in by `factor`, keeping the size."""
    matrix = zoom_matrix(float(factor))  # not rounded: 26 * 1.2500000000000002 zooms to 33 pixels, as in SciPy
    return matrix @ x @ matrix.T


ZOOM_BLUR_FACTORS = [np.arange(1, end, 0.01) for end in (1.06, 1.11, 1.16, 1.21, 1.26)]  # np.arange as the original


@lru_cache(maxsize=5)
def zoom_blur_matrix(s: int) -> Tensor:
    """The mean of the image and its zooms as one (1024, 1024) matrix on flattened images: the sum over factors of
    kron(Z, Z), Z the factor's zoom_matrix (one large product instead of two small ones per factor)."""
    factors = ZOOM_BLUR_FACTORS[s]
    total = torch.eye(SIZE * SIZE) + sum(torch.kron(zoom_matrix(float(f)), zoom_matrix(float(f))) for f in factors)
    return total / (len(factors) + 1)


def zoom_blur(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    return (x.reshape(-1, SIZE * SIZE) @ zoom_blur_matrix(s).T).view_as(x)


# Weather


def snow(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    loc, scale, zoom, threshold, radius, sigma, keep = [
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ][s]
    n = len(x)
    flakes = clipped_zoom(torch.randn((n, 1, SIZE, SIZE), generator=g) * scale + loc, zoom)
    flakes = torch.where(flakes < threshold, 0.0, flakes).clamp(0, 1).mul(255).to(torch.uint8).float() / 255
    flakes = line_blur(flakes, radius, sigma, _uniform((n,), -135, -45, g)).float() / 255
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)  # OpenCV's RGB2GRAY
    x = keep * x + (1 - keep) * torch.maximum(x, gray * 1.5 + 0.5)
    return x + flakes + flakes.flip(2, 3)


def frost_folder() -> Path | None:
    """Where the installed imagecorruptions wheel keeps Hendrycks' frost pictures, found without importing it."""
    spec = importlib.util.find_spec("imagecorruptions")
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / "frost"
        if all((folder / name).is_file() for name in FROST_FILES):
            return folder
    return None


@lru_cache(maxsize=1)
def frost_pictures() -> tuple[Tensor, ...]:
    """The five frost pictures, shrunk to 1/5 as the original did, RGB float (H, W, 3) in [0, 255]."""
    folder = frost_folder()
    if folder is None:
        raise DataError(
            "the frost corruption overlays Hendrycks' frost pictures, and none were found: they come with the "
            "imagecorruptions package (its frost/ folder is read, the package is not imported). Fix: pip install "
            '-e ".[robustness]" (or pip install imagecorruptions), or use the official files (robustness=official).'
        )
    pictures = []
    for name in FROST_FILES:
        picture = cv2.imread(str(folder / name))
        if picture is None:
            raise DataError(f"{folder / name} is not a readable image. Fix: reinstall imagecorruptions.")
        picture = cv2.resize(picture, (0, 0), fx=0.2, fy=0.2)[..., ::-1]  # BGR to RGB
        pictures.append(torch.from_numpy(picture.astype(np.float32)))
    return tuple(pictures)


def frost(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    """x blended with a random 32 x 32 crop of one of the five frost pictures."""
    image_weight, frost_weight = [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)][s]
    pictures, n = frost_pictures(), len(x)
    which = torch.randint(len(pictures), (n,), generator=g)
    overlay, span = torch.empty(n, SIZE, SIZE, 3), torch.arange(SIZE)
    for k, picture in enumerate(pictures):
        chosen = torch.nonzero(which == k).flatten()
        top = torch.randint(picture.shape[0] - SIZE, (len(chosen),), generator=g)
        left = torch.randint(picture.shape[1] - SIZE, (len(chosen),), generator=g)
        overlay[chosen] = picture[(top[:, None] + span)[:, :, None], (left[:, None] + span)[:, None, :]]
    return image_weight * x + frost_weight * overlay.permute(0, 3, 1, 2) / 255


def plasma_fractal(n: int, decay: float, g: torch.Generator, size: int = SIZE) -> Tensor:
    """n diamond-square height maps (n, size, size) in [0, 1], the original's wibble schedule, all at once."""
    heights, step, wibble = torch.zeros(n, size, size, dtype=torch.float64), size, 100.0

    def wibbled(total: Tensor) -> Tensor:
        return total / 4 + wibble * _uniform(total.shape, -wibble, wibble, g)

    while step >= 2:
        half = step // 2
        corners = heights[:, ::step, ::step]
        squares = corners + corners.roll(-1, 1)
        heights[:, half::step, half::step] = wibbled(squares + squares.roll(-1, 2))
        centres, corners = heights[:, half::step, half::step], heights[:, ::step, ::step]
        heights[:, ::step, half::step] = wibbled(centres + centres.roll(1, 1) + corners + corners.roll(-1, 2))
        heights[:, half::step, ::step] = wibbled(centres + centres.roll(1, 2) + corners + corners.roll(-1, 1))
        step, wibble = half, wibble / decay
    heights -= heights.amin((1, 2), keepdim=True)
    return (heights / heights.amax((1, 2), keepdim=True)).float()


def fog(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    strength, decay = [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)][s]
    brightest = x.amax((1, 2, 3), keepdim=True)
    x = x + strength * plasma_fractal(len(x), decay, g).unsqueeze(1)
    return x * brightest / (brightest + strength)


# Digital


def brightness(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    """HSV value + c, hue and saturation kept: the same as scaling RGB by V'/V (black becomes grey V')."""
    value = x.amax(1, keepdim=True)
    raised = (value + [0.05, 0.1, 0.15, 0.2, 0.3][s]).clamp(max=1)
    return torch.where(value > 0, x * raised / value.clamp(min=1e-12), raised)


def contrast(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    means = x.mean((2, 3), keepdim=True)
    return (x - means) * [0.75, 0.5, 0.4, 0.3, 0.15][s] + means


def _sample(x: Tensor, columns: Tensor, rows: Tensor, align_corners: bool) -> Tensor:
    """Bilinear samples of x at pixel coordinates (n, H, W), borders reflected (align_corners: about the edge
    pixels' centres, as OpenCV's REFLECT_101; else about their outer edges, as SciPy's 'reflect')."""
    size = x.shape[-1]
    if align_corners:
        grid = torch.stack((columns, rows), -1) * (2 / (size - 1)) - 1
    else:
        grid = (torch.stack((columns, rows), -1) * 2 + 1) / size - 1
    return F.grid_sample(x, grid.float(), "bilinear", "reflection", align_corners=align_corners)


ELASTIC_POINTS = torch.tensor([[26.0, 26.0], [26.0, 6.0], [6.0, 6.0]], dtype=torch.float64)  # centre +- size // 3


def elastic_transform(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    """A random affine warp of three points, then a smooth random displacement field."""
    alpha, smooth, jitter = [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)][
        s
    ]
    alpha, smooth, jitter, n = alpha * SIZE, smooth * SIZE, jitter * SIZE, len(x)
    targets = ELASTIC_POINTS + _uniform((n, 3, 2), -jitter, jitter, g)
    shifts = [_gaussian(_uniform((n, SIZE, SIZE), -1, 1, g), smooth, "reflect", 3.0) * alpha for _ in range(2)]
    return elastic_warp(x, targets, *shifts)


def elastic_warp(x: Tensor, targets: Tensor, dx: Tensor, dy: Tensor) -> Tensor:
    """The original's two steps: OpenCV's warpAffine taking ELASTIC_POINTS to `targets` (n, 3, 2) (bilinear,
    REFLECT_101), then SciPy's map_coordinates at each pixel + (dx, dy) (n, 32, 32) (linear, 'reflect')."""
    n = len(x)
    corners = torch.cat([ELASTIC_POINTS, torch.ones(3, 1, dtype=torch.float64)], 1)
    affine = torch.linalg.solve(corners, targets)  # (n, 3, 2): rows 0-1 the linear part (transposed), row 2 the shift
    rows, columns = torch.meshgrid(torch.arange(float(SIZE)), torch.arange(float(SIZE)), indexing="ij")
    pixels = torch.stack((columns, rows), -1).double().reshape(1, -1, 2) - affine[:, 2:, :]
    back = torch.linalg.solve(affine[:, :2, :].transpose(1, 2), pixels.transpose(1, 2)).transpose(1, 2)
    back = back.reshape(n, SIZE, SIZE, 2)  # where each output pixel comes from: warpAffine inverts the map
    x = _sample(x, back[..., 0], back[..., 1], align_corners=True)
    return _sample(x, columns + dx, rows + dy, align_corners=False)


@lru_cache(maxsize=16)
def box_weights(size_in: int, size_out: int) -> Tensor:
    """Pillow's BOX resampling as a (size_out, size_in) matrix of its 22-bit fixed-point weights."""
    scale = size_in / size_out
    support = 0.5 * max(scale, 1.0)
    matrix = np.zeros((size_out, size_in))
    for out in range(size_out):
        centre = (out + 0.5) * scale
        low, high = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), size_in)
        offsets = (np.arange(low, high) - centre + 0.5) / max(scale, 1.0)
        weights = ((offsets > -0.5) & (offsets <= 0.5)).astype(np.float64)
        matrix[out, low:high] = np.floor(0.5 + weights / weights.sum() * (1 << 22))
    return torch.from_numpy(matrix)


def _box_resize(x: Tensor, size: int) -> Tensor:
    """Pillow's Image.resize(BOX) of 8-bit images (N, C, H, W), as float64: horizontal pass, rounded to 8 bits,
    then vertical; each pass one matrix product over all rows."""
    n, c, h, w = x.shape
    rows = x.reshape(-1, w) @ box_weights(w, size).T
    x = torch.floor((rows + (1 << 21)) / (1 << 22)).clamp(0, 255).view(n, c, h, size)
    columns = x.transpose(2, 3).reshape(-1, h) @ box_weights(h, size).T
    x = torch.floor((columns + (1 << 21)) / (1 << 22)).clamp(0, 255).view(n, c, size, size)
    return x.transpose(2, 3)


def pixelate(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    small = int(SIZE * [0.95, 0.9, 0.85, 0.75, 0.65][s])
    pixels = torch.round(x.double() * 255)
    return _box_resize(_box_resize(pixels, small), SIZE).to(torch.uint8)


def jpeg_compression(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    images = list(torch.round(x * 255).to(torch.uint8))
    encoded = encode_jpeg(images, quality=[80, 65, 58, 50, 40][s])
    return torch.stack(decode_jpeg(encoded))


_FUNCTIONS = {name: globals()[name] for name in CORRUPTIONS}
