"""The OOD gallery draws its images through figures.tile_canvas: green frames for ID, red for OOD; a detector's
score histogram draws both sets, left and right as their scores lie, even when some scores are infinite."""

import numpy as np
import torch
from matplotlib.image import imread

from cifar_lightning.ood.figures import plot_ood_gallery, plot_value_histogram
from tests.ood.conftest import FIRST_OOD, ID_FILL, colour_pixels, png_rgb


def test_the_gallery_frames_id_green_and_ood_red(tmp_path):
    images = {"noise": torch.full((6, 3, 32, 32), 128, dtype=torch.uint8)}  # gray: neither red nor green
    path = plot_ood_gallery(images, {"noise": torch.arange(6) % 2 == 0}, 2, 0, "msp", tmp_path / "g.png")
    rgb = imread(path)[..., :3]
    red = ((rgb[..., 0] > 0.7) & (rgb[..., 1] < 0.35) & (rgb[..., 2] < 0.35)).sum()
    green = ((rgb[..., 1] > 0.5) & (rgb[..., 0] < 0.35) & (rgb[..., 2] < 0.35)).sum()
    assert red > 100 and green > 100


def test_a_score_histogram_takes_infinite_scores(tmp_path):
    """WeightedEBO with a zero weight, say, can give -inf: the finite scores set the bins and both sets are drawn,
    the ID scores as a filled histogram (light C0 blue) left of the OOD set's outline (C1 orange), whose scores are
    higher."""
    generator = torch.Generator().manual_seed(0)
    inside = torch.cat([torch.randn(300, generator=generator, dtype=torch.float64), torch.tensor([-torch.inf])])
    outside = torch.cat([torch.randn(300, generator=generator, dtype=torch.float64) + 4, torch.tensor([-torch.inf])])
    texts = "OOD above", "score", "weighted energy"
    path = plot_value_histogram(inside, {"noise": outside}, 1.6, texts, tmp_path / "s.png")
    rgb = png_rgb(path)
    assert rgb.shape == (420, 750, 3)
    filled, outline = colour_pixels(rgb, ID_FILL), colour_pixels(rgb, FIRST_OOD)
    assert filled.sum() > 2000 and outline.sum() > 300
    assert np.nonzero(outline)[1].mean() > np.nonzero(filled)[1].mean() + 100
