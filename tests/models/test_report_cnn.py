import re

import pytest
import torch
from omegaconf import OmegaConf

from cifar_lightning.config import check
from cifar_lightning.config.model import ReportCNNSettings
from cifar_lightning.errors import ConfigError
from cifar_lightning.models import MODELS, ReportCNN

# conv1 3*32*25+32, conv2 32*32*25+32, conv3 32*64*25+64, fc1 576*64+64, fc2 64*10+10
BASE_PARAMS = 2432 + 25632 + 51264 + 36928 + 650


def count(model):
    return sum(p.numel() for p in model.parameters())


def test_registry_holds_the_report_cnn():
    assert MODELS["report_cnn"] is ReportCNN


@pytest.mark.parametrize("batch_norm, extra", [("none", 0), ("first", 2 * 32), ("all", 2 * (32 + 32 + 64))])
def test_parameter_count(batch_norm, extra):
    assert count(ReportCNN(batch_norm=batch_norm)) == BASE_PARAMS + extra == 116906 + extra


def test_shapes_follow_unpadded_pooling():
    model = ReportCNN(batch_norm="all", dropout=0.2).eval()
    sizes = {}
    for name in ("pool1", "pool2", "pool3", "relu4"):
        model.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: sizes.__setitem__(name, o.shape))
    out = model(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 10)
    assert sizes["pool1"] == (4, 32, 15, 15)
    assert sizes["pool2"] == (4, 32, 7, 7)
    assert sizes["pool3"] == (4, 64, 3, 3)
    assert sizes["relu4"] == (4, 64)
    assert model.fc1.in_features == 576


def test_layer_names_are_stable():
    names = [name for name, _ in ReportCNN(batch_norm="all").named_children()]
    assert names == [
        "conv1",
        "bn1",
        "relu1",
        "pool1",
        "conv2",
        "bn2",
        "relu2",
        "pool2",
        "conv3",
        "bn3",
        "relu3",
        "pool3",
        "flatten",
        "fc1",
        "relu4",
        "dropout",
        "fc2",
    ]
    first = [name for name, _ in ReportCNN(batch_norm="first").named_children()]
    assert "bn1" in first and "bn2" not in first and "bn3" not in first


def test_dropout_sits_before_the_last_layer():
    model = ReportCNN(dropout=0.3)
    children = list(model.named_children())
    assert children[-2][0] == "dropout" and children[-2][1].p == 0.3 and children[-1][0] == "fc2"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dropout": 1.5}, "dropout must be in [0, 1), got 1.5"),
        ({"dropout": -0.1}, "dropout must be in [0, 1)"),
        ({"dropout": "high"}, "dropout must be in [0, 1), got 'high'"),
        ({"batch_norm": "some"}, "batch_norm must be one of none, first, all"),
        ({"num_classes": 1}, "num_classes must be an integer >= 2"),
        ({"width": 8}, "has no setting `width`"),
    ],
)
def test_invalid_options_are_refused(kwargs, message):
    node = OmegaConf.create({"model": {"_target_": ReportCNNSettings.target, **kwargs}})
    with pytest.raises(ConfigError, match=re.escape(message)):
        check(node, "train", "nothing was trained")
