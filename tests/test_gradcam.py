"""Grad-CAM on a small random ReportCNN: maps in [0, 1] that depend on the image, overlays written,
the model left as it was found (modes, hooks, gradients), and bad layers or targets refused."""

import pytest
import torch
from torch import nn

from cifar_lightning.data import normalize
from cifar_lightning.gradcam import CamResult, gradcam_layer, gradcam_overlays
from cifar_lightning.models import ReportCNN

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MEAN, STD = torch.tensor([0.49, 0.48, 0.45]), torch.tensor([0.25, 0.24, 0.26])


def cifar_normalize(images: torch.Tensor) -> torch.Tensor:
    return normalize(images, MEAN.to(images.device), STD.to(images.device))


def seeded_model() -> ReportCNN:
    torch.manual_seed(0)
    return ReportCNN(batch_norm="all", dropout=0.2)


def patch_images() -> torch.Tensor:
    """Two black images with a white square: top-left in the first, bottom-right in the second."""
    images = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    images[0, :, 2:14, 2:14] = 255
    images[1, :, 18:30, 18:30] = 255
    return images


def explain(model: nn.Module, tmp_path, layer: str = "conv3", images: torch.Tensor | None = None, **kwargs):
    images = patch_images() if images is None else images
    targets = kwargs.pop("targets", [3] * len(images))
    captions = [f"image {i}" for i in range(len(images))]
    return gradcam_overlays(model, layer, images, cifar_normalize, targets, captions, tmp_path, "cam", **kwargs)


def assert_untouched(model: nn.Module, training: bool) -> None:
    assert all(module.training == training for module in model.modules())
    assert all(not module._forward_hooks and not module._backward_hooks for module in model.modules())
    assert all(parameter.grad is None for parameter in model.parameters())


def test_maps_and_overlays(tmp_path):
    results = explain(seeded_model(), tmp_path, explained="label")
    assert [result.path for result in results] == [tmp_path / "cam_0.png", tmp_path / "cam_1.png"]
    for result in results:
        assert isinstance(result, CamResult)
        assert result.cam.shape == (32, 32)
        assert result.cam.min() >= 0.0 and result.cam.max() <= 1.0 and result.cam.max() > 0.5
        assert (result.target, result.explained) == (3, "label")
        assert result.path.read_bytes()[:8] == PNG_MAGIC
        assert result.path.stat().st_size > 5_000


def test_maps_follow_the_image(tmp_path):
    first, second = explain(seeded_model(), tmp_path)
    assert abs(first.cam - second.cam).max() > 0.05
    # each map is hottest on its own square's side of the image
    assert first.cam[:16, :16].mean() > first.cam[16:, 16:].mean()
    assert second.cam[16:, 16:].mean() > second.cam[:16, :16].mean()


@pytest.mark.parametrize("training", [True, False])
def test_model_is_left_as_found(tmp_path, training):
    model = seeded_model().train(training)
    explain(model, tmp_path)
    assert_untouched(model, training)
    assert not model.get_submodule("conv3")._forward_hooks


def test_works_under_inference_mode(tmp_path):
    model = seeded_model().eval()
    expected = explain(model, tmp_path / "plain")
    with torch.inference_mode():
        results = explain(model, tmp_path / "inference")
    assert all(abs(a.cam - b.cam).max() < 1e-5 for a, b in zip(expected, results))


def test_unknown_layer_names_the_layers(tmp_path):
    model = seeded_model()
    layers = "conv1, bn1, relu1, pool1, conv2, .*conv3, .*fc1, relu4, dropout, fc2$"
    with pytest.raises(ValueError, match=f"no layer 'conv9'.*: {layers}"):
        explain(model, tmp_path, layer="conv9")
    assert_untouched(model, True)


def test_bad_targets_and_explained_are_refused(tmp_path):
    model = seeded_model()
    with pytest.raises(ValueError, match="out of range"):
        explain(model, tmp_path, targets=[3, 10])
    with pytest.raises(ValueError, match=">= 0"):
        explain(model, tmp_path, targets=[3, -1])
    with pytest.raises(ValueError, match="predicted, label"):
        explain(model, tmp_path, explained="guessed")
    assert_untouched(model, True)


def test_no_images_no_overlays(tmp_path):
    assert explain(seeded_model(), tmp_path, images=torch.zeros(0, 3, 32, 32, dtype=torch.uint8)) == []


def test_the_layer_is_the_one_named_or_the_last_conv():
    assert gradcam_layer(ReportCNN()) == "conv3"
    assert gradcam_layer(ReportCNN(batch_norm="all"), None) == "conv3"
    assert gradcam_layer(ReportCNN(), "conv2") == "conv2"
    with pytest.raises(ValueError, match="no Conv2d layer; its layers are: 0, 1"):
        gradcam_layer(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))
    with pytest.raises(ValueError, match="no layer 'conv9'"):
        gradcam_layer(ReportCNN(), "conv9")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu(tmp_path):
    on_cpu = explain(seeded_model().eval(), tmp_path / "cpu")
    model = seeded_model().eval().cuda()
    on_gpu = explain(model, tmp_path / "gpu")
    assert all(abs(a.cam - b.cam).max() < 1e-3 for a, b in zip(on_cpu, on_gpu))
    assert_untouched(model, False)
