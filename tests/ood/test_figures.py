"""The OOD gallery draws its images through figures.draw_tile: green frames for ID, red for OOD; a detector's
score histogram is drawn even when some scores are infinite."""

import torch
from matplotlib.image import imread

from cifar_lightning.ood.figures import plot_ood_gallery, plot_score_histogram


def test_the_gallery_frames_id_green_and_ood_red(tmp_path):
    images = {"noise": torch.full((6, 3, 32, 32), 128, dtype=torch.uint8)}  # gray: neither red nor green
    path = plot_ood_gallery(images, {"noise": torch.arange(6) % 2 == 0}, 2, 0, "msp", tmp_path / "g.png")
    rgb = imread(path)[..., :3]
    red = ((rgb[..., 0] > 0.7) & (rgb[..., 1] < 0.35) & (rgb[..., 2] < 0.35)).sum()
    green = ((rgb[..., 1] > 0.5) & (rgb[..., 0] < 0.35) & (rgb[..., 2] < 0.35)).sum()
    assert red > 100 and green > 100


def test_a_score_histogram_takes_infinite_scores(tmp_path):
    """WeightedEBO with a zero weight, say, can give -inf: the finite scores set the bins, the figure is drawn."""
    scores = torch.tensor([0.1, 0.2, float("-inf"), 0.3], dtype=torch.float64)
    path = plot_score_histogram("weighted energy", scores, {"noise": scores + 1}, 0.25, tmp_path / "s.png")
    assert path.is_file() and path.stat().st_size > 0
