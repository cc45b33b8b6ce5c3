"""Any image a user has -> the model's input, uint8 RGB 3 x 32 x 32, by one policy (predict.py, serve.py, the
Classifier for tensors of another size, evaluate.py's OOD sets):

1. open with Pillow, which recognizes the format from the content, and refuse an image over `max_pixels`
   (width x height) from its header, before any pixel is decoded (decompression bombs);
2. decode the first frame (of an animated GIF or WebP); a JPEG much larger than 32 x 32 is decoded by libjpeg at
   1/2, 1/4 or 1/8 scale, never below 128 pixels on its shorter side (step 5 averages those pixels anyway);
3. apply the EXIF orientation (phone photos are stored sideways); an unreadable EXIF block is ignored;
4. convert to 8-bit RGB: grayscale is repeated over the channels; 16-bit grayscale is scaled by 255/65535;
   16-bit colour keeps each channel's high byte (Pillow's reading); transparency is composited onto white;
5. crop the centred square (CIFAR-10's objects are centred; stretching would distort them) and resize it to
   32 x 32, antialiased bilinear on float values, rounded to uint8.

A 32 x 32 RGB image passes unchanged, so CIFAR-10 test images saved as PNG give exactly the pixels evaluate.py
sees. Anything that is not a whole readable image raises ImageError, naming the reason in one sentence.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor
from torch.nn import functional as F
from torchvision.transforms.v2 import functional as TF

from cifar_lightning.config.inference import MAX_PIXELS
from cifar_lightning.errors import CifarLightningError

#: The model's input side, in pixels.
INPUT_SIZE = 32
#: load_image lets libjpeg decode at reduced scale down to this shorter side (policy step 2).
DRAFT_SIDE = 4 * INPUT_SIZE
#: Modes of 16-bit (or 32-bit integer) grayscale images.
INTEGER_GRAY = ("I;16", "I;16L", "I;16B", "I;16N", "I")
#: Modes with an alpha channel.
ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")


class ImageError(CifarLightningError):
    """An image cannot be read or is refused; the message says why in one sentence."""


def _reason(exc: BaseException) -> str:
    """The exception's type and first line, for a one-sentence reason."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _open(source: str | Path | bytes, max_pixels: int) -> Image.Image:
    """The opened (not yet decoded) image; its size is checked from the header alone (policy step 1)."""
    if isinstance(source, bytes) and not source:
        raise ImageError("the upload is empty (0 bytes)")
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():  # between 89 and 179 megapixels Pillow only warns; max_pixels decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(stream)
    except UnidentifiedImageError as exc:
        raise ImageError("it is not an image Pillow can read (unknown format, or a damaged header)") from exc
    except Image.DecompressionBombError as exc:
        raise ImageError(f"it was refused before decoding as a decompression bomb ({exc})") from exc
    except FileNotFoundError as exc:
        raise ImageError("the file does not exist") from exc
    except OSError as exc:
        raise ImageError(f"it cannot be opened ({_reason(exc)})") from exc
    width, height = image.size
    if width * height > max_pixels or width == 0 or height == 0:
        image.close()
        if width == 0 or height == 0:
            raise ImageError(f"the image has no pixels ({width} x {height})")
        raise ImageError(
            f"its {width} x {height} pixels are over the limit of {max_pixels:,} (max_pixels), so it was refused "
            f"before decoding; a larger image gains nothing at {INPUT_SIZE} x {INPUT_SIZE}"
        )
    return image


def _to_rgb(image: Image.Image) -> np.ndarray:
    """8-bit RGB (H, W, 3), a writable array of its own, of a decoded image in any mode (policy step 4)."""
    if image.mode in INTEGER_GRAY:
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode != "I" or values.max(initial=0) > 255 else 255.0
        gray = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode == "F":  # float grayscale: values in [0, 1] are scaled, others clipped to [0, 255]
        values = np.asarray(image, dtype=np.float64)
        values = values * 255.0 if values.max(initial=0) <= 1.0 else values
        return np.repeat(np.clip(np.rint(values), 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    if image.mode in ALPHA or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.array(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.array(image.convert("RGB"))


def _decode(source: str | Path | bytes, max_pixels: int, draft_side: int | None) -> Tensor:
    image = _open(source, max_pixels)
    with image:
        try:
            if draft_side is not None and image.format == "JPEG":
                image.draft(None, (draft_side, draft_side))  # libjpeg's reduced-scale decoding (policy step 2)
            image.load()
        except Exception as exc:  # Pillow's decoders raise many types on bad data (OSError, SyntaxError, ...)
            raise ImageError(f"the image data is damaged or truncated ({_reason(exc)})") from exc
        try:
            oriented = ImageOps.exif_transpose(image)
        except Exception:  # a malformed EXIF block: the pixels are fine, use them as stored
            oriented = image
        try:
            pixels = _to_rgb(oriented)
        except (ValueError, OSError) as exc:
            raise ImageError(f"its colour mode {oriented.mode} cannot be converted to RGB ({_reason(exc)})") from exc
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def fit_to_input(images: Tensor, size: int = INPUT_SIZE) -> Tensor:
    """uint8 images (3, H, W) or (N, 3, H, W) -> (..., 3, size, size): the centred square, resized with
    antialiasing (policy step 5). Images already size x size are returned unchanged."""
    if images.dtype != torch.uint8 or images.dim() not in (3, 4) or images.shape[-3] != 3:
        raise ValueError(f"expected uint8 images (3, H, W) or (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    height, width = images.shape[-2:]
    if (height, width) == (size, size):
        return images
    side = min(height, width)
    square = TF.center_crop(images, [side, side])
    batch = square if square.dim() == 4 else square.unsqueeze(0)
    resized = torch.cat(
        [
            F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            .round_()
            .clamp_(0, 255)
            .to(torch.uint8)
            for chunk in batch.split(2048)  # bounded float memory for large sets
        ]
    )
    return resized if square.dim() == 4 else resized[0]


def load_image(source: str | Path | bytes, max_pixels: int = MAX_PIXELS) -> Tensor:
    """A file or its bytes -> the model's input, uint8 (3, 32, 32), by the policy above."""
    return fit_to_input(_decode(source, max_pixels, draft_side=DRAFT_SIDE))
