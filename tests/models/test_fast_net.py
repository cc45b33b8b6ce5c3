import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cifar_lightning.models import MODELS, FastNet
from cifar_lightning.models.fast_net import PatchWhitening, identity_init, image_patches, patch_eigenbasis


def test_registry_holds_the_fast_net():
    assert MODELS["fast_net"] is FastNet


def test_shapes_follow_airbench94():
    model = FastNet().eval()
    sizes = {}
    for name in ("whiten", "block1", "block2", "block3", "flatten"):
        model.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: sizes.__setitem__(name, o.shape))
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert sizes["whiten"] == (2, 24, 31, 31)  # 2x2 patches, +/- 12 directions
    assert sizes["block1"] == (2, 64, 15, 15) and sizes["block2"] == (2, 256, 7, 7)
    assert sizes["block3"] == (2, 256, 3, 3) and sizes["flatten"] == (2, 256)
    assert [name for name, _ in model.block1.named_children()] == [
        "conv1",
        "pool",
        "bn1",
        "act1",
        "conv2",
        "bn2",
        "act2",
    ]


def test_head_is_the_last_linear_its_output_the_logits_and_the_scale_comes_before_it():
    model = FastNet(widths=[8, 16, 32]).eval()
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert linears[-1][0] == "fc" and list(model.named_children())[-1][0] == "fc" and model.fc.bias is None
    seen = {}
    model.flatten.register_forward_hook(lambda m, i, o: seen.update(features=o))
    model.fc.register_forward_hook(lambda m, i, o: seen.update(fc_input=i[0], fc_output=o))
    logits = model(torch.randn(3, 3, 32, 32))
    assert torch.equal(seen["fc_output"], logits)
    assert torch.allclose(seen["fc_input"], seen["features"] / 9)
    assert torch.allclose(logits, seen["features"] @ model.fc.weight.T / 9, atol=1e-6)


def test_frozen_parts_do_not_train():
    model = FastNet(widths=[8, 16, 32])
    frozen = sorted(name for name, p in model.named_parameters() if not p.requires_grad)
    assert frozen == [
        "block1.bn1.weight",
        "block1.bn2.weight",
        "block2.bn1.weight",
        "block2.bn2.weight",
        "block3.bn1.weight",
        "block3.bn2.weight",
        "whiten.weight",
    ]
    assert model.whiten.bias.requires_grad
    assert model.block1.bn1.momentum == pytest.approx(0.4)  # keeps 0.6 of the old statistics


def test_whitening_decorrelates_the_patches():
    generator = torch.Generator().manual_seed(0)
    # Correlated "images": smooth noise with channels mixed, so patches are far from white.
    raw = torch.randn(200, 3, 16, 16, generator=generator)
    images = F.avg_pool2d(raw, 3, stride=1, padding=1) @ torch.eye(16) + 0.5 * raw.mean(dim=1, keepdim=True)
    layer = PatchWhitening(patch_size=2, eps=1e-6)
    layer.init_from_data(images)
    assert torch.equal(layer.weight[12:], -layer.weight[:12])  # each direction with both signs
    with torch.no_grad():
        out = F.conv2d(images, layer.weight[:12])  # without the bias
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12).double()
    second_moment = flat.T @ flat / len(flat)
    eigenvalues, _ = patch_eigenbasis(images, 2)
    expected = torch.diag((eigenvalues / (eigenvalues + 1e-6)).double())
    assert torch.allclose(second_moment, expected, atol=1e-3)
    assert torch.allclose(second_moment, torch.eye(12, dtype=torch.float64), atol=2e-3)


def test_init_from_data_sets_only_the_whitening():
    torch.manual_seed(0)
    model = FastNet(widths=[8, 16, 32])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.init_from_data(torch.randn(50, 3, 32, 32))
    after = model.state_dict()
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == ["whiten.weight"]


def test_later_convs_start_as_partial_identities():
    model = FastNet(widths=[8, 16, 32])
    conv = model.block2.conv1  # 8 -> 16 channels
    x = torch.randn(2, 8, 7, 7)
    with torch.no_grad():
        assert torch.allclose(conv(x)[:, :8], x, atol=1e-6)  # the first 8 filters pass their channel through
    lone = nn.Conv2d(16, 8, 3, padding=1, bias=False)
    identity_init(lone)  # more inputs than outputs: each output passes one input channel
    y = torch.randn(2, 16, 5, 5)
    with torch.no_grad():
        assert torch.allclose(lone(y), y[:, :8], atol=1e-6)
    assert not torch.equal(model.block2.conv1.weight[8:], torch.zeros_like(model.block2.conv1.weight[8:]))


@pytest.mark.parametrize("size", [1, 2, 3])
def test_image_patches_match_unfold(size):
    x = torch.randn(5, 3, 9, 8)
    assert torch.equal(image_patches(x, size), F.unfold(x, size).transpose(1, 2).reshape(-1, 3 * size * size))
