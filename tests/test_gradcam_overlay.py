"""In-memory Grad-CAM overlays (gradcam.gradcam_pngs, overlay_png), as serve.py sends them: PNG bytes of the
very overlay that gradcam_overlays draws, hot where the image's evidence is, the model left as found."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from cifar_lightning.gradcam import OVERLAY_SIZE, gradcam_overlays, gradcam_pngs, overlay, overlay_png
from tests.test_gradcam import PNG_MAGIC, assert_untouched, cifar_normalize, patch_images, seeded_model


def decode(png: bytes) -> np.ndarray:
    assert png[:8] == PNG_MAGIC
    with Image.open(io.BytesIO(png)) as image:
        assert image.mode == "RGB"
        return np.asarray(image)


def test_pngs_are_the_overlays_gradcam_overlays_draws(tmp_path):
    model, images = seeded_model().eval(), patch_images()
    pngs = gradcam_pngs(model, "conv3", images, cifar_normalize, [3, 5])
    results = gradcam_overlays(model, "conv3", images, cifar_normalize, [3, 5], ["a", "b"], tmp_path, "cam")
    pictures = images.permute(0, 2, 3, 1).numpy().astype(np.float32) / 255.0
    assert len(pngs) == 2
    for png, result, picture in zip(pngs, results, pictures):
        pixels = decode(png)
        assert pixels.shape == (OVERLAY_SIZE, OVERLAY_SIZE, 3)
        np.testing.assert_array_equal(pixels, overlay(picture, result.cam)[1])  # PNG is lossless: the same pixels


def test_overlay_is_hot_where_the_evidence_is():
    first, second = (
        decode(png) for png in gradcam_pngs(seeded_model(), "conv3", patch_images(), cifar_normalize, [3, 3])
    )
    half = OVERLAY_SIZE // 2

    def heat(pixels: np.ndarray) -> np.ndarray:  # the jet colour map: red = hot, blue = cold
        return pixels[..., 0].astype(float) - pixels[..., 2].astype(float)

    assert heat(first)[:half, :half].mean() > heat(first)[half:, half:].mean()
    assert heat(second)[half:, half:].mean() > heat(second)[:half, :half].mean()


def test_overlay_png_of_a_flat_map_keeps_the_image():
    image = np.full((32, 32, 3), 0.5, dtype=np.float32)
    cold = decode(overlay_png(image, np.zeros((32, 32), dtype=np.float32)))
    hot = decode(overlay_png(image, np.ones((32, 32), dtype=np.float32)))
    assert cold.shape == hot.shape == (OVERLAY_SIZE, OVERLAY_SIZE, 3)
    assert cold[..., 2].mean() > cold[..., 0].mean() and hot[..., 0].mean() > hot[..., 2].mean()


@pytest.mark.parametrize("training", [True, False])
def test_model_is_left_as_found(training):
    model = seeded_model().train(training)
    gradcam_pngs(model, "conv3", patch_images(), cifar_normalize, [1, 2])
    assert_untouched(model, training)


def test_bad_inputs_are_refused():
    model = seeded_model()
    with pytest.raises(ValueError, match="no layer 'conv9'"):
        gradcam_pngs(model, "conv9", patch_images(), cifar_normalize, [1, 2])
    with pytest.raises(ValueError, match="one target per image"):
        gradcam_pngs(model, "conv3", patch_images(), cifar_normalize, [1])
    with pytest.raises(ValueError, match=">= 0"):
        gradcam_pngs(model, "conv3", patch_images(), cifar_normalize, [1, -1])
    with pytest.raises(ValueError, match="out of range"):
        gradcam_pngs(model, "conv3", patch_images(), cifar_normalize, [1, 10])
    with pytest.raises(ValueError, match="uint8"):
        gradcam_pngs(model, "conv3", patch_images().float(), cifar_normalize, [1, 2])
    assert gradcam_pngs(model, "conv3", torch.zeros(0, 3, 32, 32, dtype=torch.uint8), cifar_normalize, []) == []
    assert_untouched(model, True)
