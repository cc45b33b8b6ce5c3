import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from cifar_lightning.config import check
from cifar_lightning.config.model import ResNet18Settings
from cifar_lightning.errors import ConfigError
from cifar_lightning.models import MODELS, ResNet18


def test_registry_holds_resnet18():
    assert MODELS["resnet18"] is ResNet18


def test_parameter_count_is_the_cifar_resnet18s():
    # The CIFAR ResNet-18 of DeVries & Taylor / kuangliu: 11,173,962 parameters with 10 classes.
    assert sum(p.numel() for p in ResNet18().parameters()) == 11_173_962


def test_shapes_stem_keeps_32_pixels_and_stages_halve_them():
    model = ResNet18().eval()
    sizes = {}
    for name in ("relu", "layer1", "layer2", "layer3", "layer4", "flatten"):
        model.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: sizes.__setitem__(name, o.shape))
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert sizes["relu"] == (2, 64, 32, 32)  # 3x3 stride-1 stem, no max-pool
    assert sizes["layer1"] == (2, 64, 32, 32) and sizes["layer2"] == (2, 128, 16, 16)
    assert sizes["layer3"] == (2, 256, 8, 8) and sizes["layer4"] == (2, 512, 4, 4)
    assert sizes["flatten"] == (2, 512)


def test_head_is_the_last_linear_and_gives_the_logits():
    model = ResNet18(num_classes=7).eval()
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert linears[-1][0] == "fc" and list(model.named_children())[-1][0] == "fc"
    features = {}
    model.fc.register_forward_hook(lambda m, i, o: features.update(input=i[0], output=o))
    x = torch.randn(3, 3, 32, 32)
    logits = model(x)
    assert torch.equal(features["output"], logits) and features["input"].shape == (3, 512)
    assert [name for name, _ in model.named_children()] == [
        "conv1",
        "bn1",
        "relu",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
        "avgpool",
        "flatten",
        "fc",
    ]


def test_blocks_add_the_shortcut():
    model = ResNet18()
    block = model.layer1[0]
    assert isinstance(block.shortcut, nn.Identity)
    assert isinstance(model.layer2[0].shortcut, nn.Sequential) and model.layer2[0].shortcut.conv.stride == (2, 2)
    with torch.no_grad():
        for p in (block.bn2.weight, block.bn2.bias):
            p.zero_()  # the residual branch now adds nothing: the block is ReLU(x)
    block.eval()
    x = torch.randn(2, 64, 8, 8)
    assert torch.equal(block(x), torch.relu(x))


@pytest.mark.parametrize("kwargs", [{"widths": [64, 128]}, {"widths": [64, 0, 256, 512]}, {"num_classes": 1}])
def test_invalid_options_are_refused(kwargs):
    node = OmegaConf.create({"model": {"_target_": ResNet18Settings.target, **kwargs}})
    with pytest.raises(ConfigError, match=f"model.{next(iter(kwargs))} must be"):
        check(node, "train", "nothing was trained")
