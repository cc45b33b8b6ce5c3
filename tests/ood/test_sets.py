"""Loading OOD sets: .npz files (RGB or 28x28 grayscale), image folders with unreadable files, seeded noise."""

import numpy as np
import pytest
import torch
from PIL import Image

from cifar_lightning.config.schema import problems
from cifar_lightning.errors import DataError
from cifar_lightning.ood.sets import load_folder, load_npz, load_set, noise_images, to_rgb32


def test_grayscale_28x28_becomes_32x32_rgb():
    gray = np.zeros((5, 28, 28), dtype=np.uint8)
    gray[:, 10:18, 10:18] = 200
    rgb = to_rgb32(gray)
    assert rgb.shape == (5, 3, 32, 32) and rgb.dtype == torch.uint8
    assert torch.equal(rgb[:, 0], rgb[:, 1]) and torch.equal(rgb[:, 1], rgb[:, 2])
    assert rgb[:, :, 16, 16].eq(200).all() and rgb[:, :, 0, 0].eq(0).all()  # the square stays in the middle


def test_rgb_32x32_is_kept_pixel_for_pixel():
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    assert torch.equal(to_rgb32(images), torch.from_numpy(images).permute(0, 3, 1, 2))


def test_a_constant_image_stays_constant_when_resized():
    assert to_rgb32(np.full((2, 64, 48, 3), 77, dtype=np.uint8)).eq(77).all()


@pytest.mark.parametrize("bad", [np.zeros((2, 32, 32, 3), dtype=np.float32), np.zeros((2, 32, 32, 4), dtype=np.uint8)])
def test_wrong_dtype_or_channels_are_refused(bad):
    with pytest.raises(ValueError):
        to_rgb32(bad)


def test_load_npz_and_its_errors(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, images=np.zeros((3, 28, 28), dtype=np.uint8), labels=np.arange(3))
    loaded = load_npz(good, "good", "far")
    assert loaded.images.shape == (3, 3, 32, 32) and loaded.kind == "far" and loaded.source == str(good)
    with pytest.raises(DataError, match="does not exist"):
        load_npz(tmp_path / "missing.npz", "missing")
    np.savez(tmp_path / "nokey.npz", pictures=np.zeros((1, 32, 32, 3), dtype=np.uint8))
    with pytest.raises(DataError, match="no `images` array"):
        load_npz(tmp_path / "nokey.npz", "nokey")
    np.savez(tmp_path / "objects.npz", images=np.array([{"code": 1}], dtype=object))
    with pytest.raises(DataError, match="could not be read"):  # pickled objects are never loaded
        load_npz(tmp_path / "objects.npz", "objects")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(DataError, match="could not be read"):
        load_npz(tmp_path / "text.npz", "text")
    np.savez(tmp_path / "floats.npz", images=np.zeros((1, 32, 32, 3)))
    with pytest.raises(DataError, match="must be uint8"):
        load_npz(tmp_path / "floats.npz", "floats")


def test_folder_skips_unreadable_files(tmp_path):
    Image.fromarray(np.full((40, 40, 3), 255, dtype=np.uint8)).save(tmp_path / "white.png")
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(tmp_path / "black.jpg")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "notes.txt").write_text("not an image, not even looked at")
    loaded = load_folder(tmp_path, "mine")
    assert loaded.images.shape == (2, 3, 32, 32)
    assert loaded.images[0].max() == 0 and loaded.images[1].min() == 255  # sorted: black.jpg, white.png
    assert len(loaded.skipped) == 1 and "broken.png" in loaded.skipped[0]


def test_folder_without_readable_images_is_an_error(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"nope")
    with pytest.raises(DataError, match="none of its 1 image files could be read"):
        load_folder(tmp_path, "mine")
    with pytest.raises(DataError, match="is not a folder"):
        load_folder(tmp_path / "absent", "mine")


def test_noise_is_seeded():
    for noise in ("gaussian", "uniform"):
        a, b, c = noise_images(noise, 50, 1), noise_images(noise, 50, 1), noise_images(noise, 50, 2)
        assert a.shape == (50, 3, 32, 32) and a.dtype == torch.uint8
        assert torch.equal(a, b) and not torch.equal(a, c)
    gaussian = noise_images("gaussian", 200, 0).double() / 255
    assert gaussian.mean().item() == pytest.approx(0.5, abs=0.01)
    assert 0.22 < gaussian.std().item() < 0.25  # clipping to [0, 1] trims the tails


def test_set_entries(tmp_path):
    assert load_set("g", {"noise": "uniform", "n": 7}, seed=0).kind == "synthetic"
    assert torch.equal(load_set("g", {"noise": "uniform", "n": 7, "seed": 3}, 0).images, noise_images("uniform", 7, 3))
    for spec, problem in [
        ({"noise": "pink", "n": 5}, "ood.sets.x.noise must be one of gaussian, uniform"),
        ({"noise": "uniform", "n": 0}, "ood.sets.x.n must be a positive integer"),
        ({"noise": "uniform"}, "noise needs n"),
        ({"path": "a.npz", "noise": "uniform", "n": 5}, "exactly one of `path` and `noise`"),
        ({"pth": "a.npz"}, "ood.sets.x has no setting `pth`"),
    ]:
        assert problem in problems({"ood": {"sets": {"x": spec}}})[0][1]
    assert "no OOD sets are configured" in problems({"ood": {"sets": {}}})[0][1]
    assert problems({"ood": {"enabled": False, "sets": {}}}) == []  # ood=none needs no set
