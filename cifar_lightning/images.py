"""Any image a user has -> the model's input: uint8 RGB, 3 x 32 x 32. One policy, used by predict.py,
serve.py and the Classifier (for tensors of another size):

1. decode with Pillow, refusing files over `max_pixels` before their pixels are decoded (decompression bombs);
2. apply the EXIF orientation (phone photos are stored sideways);
3. convert to 8-bit RGB: grayscale is repeated over the channels, 16-bit values are scaled by 255/65535,
   transparency (RGBA, LA, palette with a transparent colour) is composited onto white, CMYK and YCbCr
   go through Pillow's conversion;
4. crop the centred square (CIFAR-10's objects are centred; stretching would distort them), then resize it
   to 32 x 32 with antialiased bilinear interpolation (torchvision), rounded to uint8.

An image that is already 32 x 32 RGB passes unchanged, so CIFAR-10 test images saved as PNG give exactly
the pixels evaluate.py sees.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from cifar_lightning.errors import CifarLightningError

#: The model's input side, in pixels.
INPUT_SIZE = 32
#: Default limit on decoded pixels (width x height): 40 megapixels, a large phone photo.
MAX_PIXELS = 40_000_000
#: Extensions predict.py reads from a folder (anything else in it is listed as skipped, not read).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")


class ImageError(CifarLightningError):
    """An image cannot be read or is refused; the message says why in one sentence."""


def _open(source: str | Path | bytes, max_pixels: int) -> Image.Image:
    """The opened (not yet decoded) image; its size is checked from the header alone."""
    if isinstance(source, bytes) and not source:
        raise ImageError("the upload is empty (0 bytes)")
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(stream)
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        if isinstance(exc, UnidentifiedImageError):
            raise ImageError("not an image Pillow can read (unknown or damaged format)") from exc
        raise ImageError(f"refused as a decompression bomb ({exc})") from exc
    except FileNotFoundError as exc:
        raise ImageError("the file does not exist") from exc
    except OSError as exc:
        raise ImageError(f"cannot be opened ({exc})") from exc
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(
            f"{width} x {height} pixels is over the limit of {max_pixels:,} pixels (max_pixels); a larger "
            f"image gains nothing at 32 x 32"
        )
    if width == 0 or height == 0:
        raise ImageError(f"the image has no pixels ({width} x {height})")
    return image


def _to_rgb(image: Image.Image) -> np.ndarray:
    """8-bit RGB (H, W, 3) of a decoded image in any mode (policy step 3)."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):  # 16-bit (or 32-bit int) grayscale
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode != "I" or values.max(initial=0) > 255 else 255.0
        gray = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode == "F":  # float grayscale: values in [0, 1] are scaled, others clipped to [0, 255]
        values = np.asarray(image, dtype=np.float64)
        values = values * 255.0 if values.max(initial=0) <= 1.0 else values
        return np.repeat(np.clip(np.rint(values), 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    if image.mode == "P" and "transparency" in image.info or image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def decode_image(source: str | Path | bytes, max_pixels: int = MAX_PIXELS) -> Tensor:
    """A file (path) or its bytes -> uint8 RGB (3, H, W) at its own size, EXIF-oriented (policy steps 1-3).

    Raises ImageError, naming the reason, for anything that is not a whole readable image within max_pixels.
    """
    image = _open(source, max_pixels)
    try:
        with image:
            image.seek(0)  # the first frame of an animation
            image = ImageOps.exif_transpose(image)
            image.load()
            pixels = _to_rgb(image)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # truncated or damaged data
        raise ImageError(f"the image data is damaged or truncated ({exc})") from exc
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).contiguous()


def fit_to_input(images: Tensor, size: int = INPUT_SIZE) -> Tensor:
    """uint8 images (3, H, W) or (N, 3, H, W) -> (..., 3, size, size): the centred square, resized with
    antialiasing (policy step 4). Images already size x size are returned unchanged."""
    if images.dtype != torch.uint8 or images.dim() not in (3, 4) or images.shape[-3] != 3:
        raise ValueError(f"expected uint8 images (3, H, W) or (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    height, width = images.shape[-2:]
    if (height, width) == (size, size):
        return images
    side = min(height, width)
    square = TF.center_crop(images, [side, side])
    return TF.resize(square, [size, size], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)


def load_image(source: str | Path | bytes, max_pixels: int = MAX_PIXELS) -> Tensor:
    """A file or its bytes -> the model's input, uint8 (3, 32, 32), by the policy above."""
    return fit_to_input(decode_image(source, max_pixels))
