"""images.py's one policy, on real files written with Pillow: every mode converts as documented, damaged and
non-image files raise ImageError with a reason, a decompression bomb is refused before decoding, and a
32 x 32 RGB image passes unchanged."""

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from cifar_lightning.images import INPUT_SIZE, MAX_PIXELS, ImageError, _decode, fit_to_input, load_image
from tests.helpers import png_chunk

RNG = np.random.default_rng(0)


def decode_image(path: Path) -> torch.Tensor:
    """A file at its own full size, EXIF-oriented (the policy's steps 1, 3 and 4, not step 2's reduced scale)."""
    return _decode(path, MAX_PIXELS, draft_side=None)


def hwc(image: torch.Tensor) -> np.ndarray:
    """A (3, H, W) tensor as an (H, W, 3) array, to compare with Pillow's."""
    return image.permute(1, 2, 0).numpy()


def raw_png(width: int, height: int, bit_depth: int, colour_type: int, pixels: np.ndarray | None) -> bytes:
    """A PNG written by hand (Pillow cannot write 16-bit colour): signature, IHDR, IDAT when pixels are given
    (big-endian samples, filter 0 per row), IEND. Without pixels it is a header claiming width x height."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
    if pixels is not None:
        data += png_chunk(b"IDAT", zlib.compress(b"".join(b"\x00" + row.tobytes() for row in pixels)))
    return data + png_chunk(b"IEND", b"")


def gradient(width: int, height: int) -> np.ndarray:
    """A smooth RGB image (H, W, 3), so JPEG keeps it close."""
    y, x = np.mgrid[0:height, 0:width]
    channels = [x * 255 // (width - 1), y * 255 // (height - 1), (x + y) * 255 // (width + height - 2)]
    return np.stack(channels, -1).astype(np.uint8)


def write_every_format(folder: Path) -> dict[str, str]:
    """One file per mode and format of the policy, plus a truncated JPEG and a text file: {name: "ok" | reason
    text expected in its ImageError}. Used by the predict.py tests too."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 256, (30, 40), dtype=np.uint8)).save(folder / "gray.png")
    Image.fromarray(RNG.integers(0, 65536, (32, 32), dtype=np.uint16)).save(folder / "gray16.png")
    (folder / "rgb16.png").write_bytes(raw_png(33, 20, 16, 2, RNG.integers(0, 65536, (20, 33, 3)).astype(">u2")))
    Image.fromarray(RNG.integers(0, 256, (32, 48, 4), dtype=np.uint8), "RGBA").save(folder / "rgba.png")
    palette = Image.fromarray(RNG.integers(0, 4, (32, 32), dtype=np.uint8), "P")
    palette.putpalette([10, 20, 30, 200, 100, 50, 0, 255, 0, 255, 255, 255])
    palette.save(folder / "palette.gif")
    Image.new("CMYK", (50, 40), (255, 0, 0, 0)).save(folder / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(gradient(48, 32)).save(folder / "rotated.jpg", exif=exif)
    Image.fromarray(RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / "photo.webp", lossless=True)
    Image.fromarray(gradient(1200, 900)).save(folder / "big.jpg", quality=90)
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / "whole.jpg")
    whole = (folder / "whole.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "whole.jpg").unlink()
    (folder / "notes.txt").write_text("not an image\n")
    expected = {path.name: "ok" for path in folder.iterdir()}
    expected.update({"truncated.jpg": "damaged or truncated", "notes.txt": "not an image Pillow can read"})
    return expected


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("formats")
    write_every_format(folder)
    return folder


def test_rgb_32x32_passes_unchanged(tmp_path):
    pixels = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "cifar.png")
    image = load_image(tmp_path / "cifar.png")
    assert image.dtype == torch.uint8 and image.shape == (3, INPUT_SIZE, INPUT_SIZE)
    np.testing.assert_array_equal(hwc(image), pixels)
    assert torch.equal(load_image((tmp_path / "cifar.png").read_bytes()), image)  # bytes read as the file


def test_grayscale_is_repeated_over_the_channels(files):
    gray = np.asarray(Image.open(files / "gray.png"))
    image = decode_image(files / "gray.png")
    assert image.shape == (3, 30, 40)
    for channel in image:
        np.testing.assert_array_equal(channel.numpy(), gray)


def test_16_bit_grayscale_is_scaled(files):
    values = np.asarray(Image.open(files / "gray16.png"), dtype=np.float64)
    assert Image.open(files / "gray16.png").mode == "I;16"
    expected = np.rint(values * 255 / 65535).astype(np.uint8)
    image = load_image(files / "gray16.png")
    for channel in image:
        np.testing.assert_array_equal(channel.numpy(), expected)


def test_16_bit_colour_keeps_the_high_byte(tmp_path):
    samples = np.array([[[0, 25_900, 65_535], [1_000, 30_000, 60_000]]], dtype=">u2")
    (tmp_path / "rgb16.png").write_bytes(raw_png(2, 1, 16, 2, samples))
    image = hwc(decode_image(tmp_path / "rgb16.png"))
    np.testing.assert_array_equal(image, samples // 256)
    assert np.abs(image.astype(int) - np.rint(samples.astype(float) * 255 / 65535)).max() <= 1


def test_transparency_is_composited_onto_white(tmp_path):
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[..., :3] = (200, 40, 10)
    rgba[:, :8, 3] = 0  # transparent: white
    rgba[:, 8:16, 3] = 255  # opaque: the colour
    rgba[:, 16:, 3] = 128  # half: halfway to white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    image = hwc(load_image(tmp_path / "rgba.png")).astype(int)
    assert (image[:, :8] == 255).all()
    assert (image[:, 8:16] == (200, 40, 10)).all()
    halfway = np.array([200, 40, 10]) * 128 / 255 + 255 * (1 - 128 / 255)
    assert np.abs(image[:, 16:] - halfway).max() <= 1


def test_palette_colours_and_a_transparent_palette_entry(files, tmp_path):
    indices = np.asarray(Image.open(files / "palette.gif"))
    colours = np.array([[10, 20, 30], [200, 100, 50], [0, 255, 0], [255, 255, 255]])
    np.testing.assert_array_equal(hwc(load_image(files / "palette.gif")), colours[indices])
    palette = Image.open(files / "palette.gif").convert("P")
    palette.save(tmp_path / "transparent.png", transparency=1)  # entry 1 is see-through
    expected = colours[indices]
    expected[indices == 1] = 255
    np.testing.assert_array_equal(hwc(load_image(tmp_path / "transparent.png")), expected)


def test_cmyk_goes_through_pillows_conversion(tmp_path):
    cmyk = Image.new("CMYK", (32, 32), (255, 0, 0, 0))
    cmyk.paste((0, 0, 0, 255), (0, 0, 16, 32))  # left half: black ink only
    cmyk.save(tmp_path / "cmyk.tif")
    image = hwc(load_image(tmp_path / "cmyk.tif"))
    assert (image[:, :16] == 0).all() and (image[:, 16:] == (0, 255, 255)).all()  # cyan ink: no red


def test_exif_orientation_6_rotates_clockwise(files):
    stored = np.asarray(Image.open(files / "rotated.jpg").convert("RGB"))  # 48 wide, 32 high, as stored
    image = decode_image(files / "rotated.jpg")
    assert stored.shape == (32, 48, 3) and image.shape == (3, 48, 32)
    np.testing.assert_array_equal(hwc(image), np.rot90(stored, k=-1))


def test_webp_reads(files):
    np.testing.assert_array_equal(hwc(load_image(files / "photo.webp")), np.asarray(Image.open(files / "photo.webp")))


def test_the_centred_square_is_resized():
    image = torch.full((3, 64, 128), 10, dtype=torch.uint8)
    image[:, :, 32:96] = 200  # the centred 64 x 64 square
    assert fit_to_input(image).eq(200).all() and fit_to_input(image).shape == (3, 32, 32)


def test_a_large_jpeg_decoded_at_reduced_scale_matches_the_full_decode(files):
    reduced, full = load_image(files / "big.jpg"), fit_to_input(decode_image(files / "big.jpg"))
    assert (reduced.int() - full.int()).abs().max() <= 2


def test_an_animation_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (32, 32), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert (hwc(load_image(tmp_path / "anim.gif")) == (255, 0, 0)).all()


@pytest.mark.parametrize(
    ("name", "reason"), [("truncated.jpg", "damaged or truncated"), ("notes.txt", "not an image Pillow can read")]
)
def test_unreadable_files_raise_image_error_with_a_reason(files, name, reason):
    with pytest.raises(ImageError, match=reason):
        load_image(files / name)


def test_missing_and_empty_sources(tmp_path):
    with pytest.raises(ImageError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")


@pytest.mark.parametrize(("side", "reason"), [(20_000, "decompression bomb"), (8_000, "over the limit of 40,000,000")])
def test_a_decompression_bomb_is_refused_before_decoding(tmp_path, monkeypatch, side, reason):
    """A PNG header claiming side x side pixels, with no pixel data: refused from the header (decoding it
    would fail as truncated instead, and is made to fail the test)."""
    (tmp_path / "bomb.png").write_bytes(raw_png(side, side, 8, 2, None))

    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageError, match=reason):
        load_image(tmp_path / "bomb.png")


def test_max_pixels_is_the_limit(tmp_path):
    Image.new("RGB", (11, 10)).save(tmp_path / "small.png")
    assert load_image(tmp_path / "small.png", max_pixels=110).shape == (3, 32, 32)
    with pytest.raises(ImageError, match="11 x 10 pixels are over the limit of 109"):
        load_image(tmp_path / "small.png", max_pixels=109)
