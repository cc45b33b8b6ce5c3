"""Feature extraction: logits, penultimate features and per-layer mean activations match a plain forward pass."""

import torch
from torch import nn

from cifar_lightning.data import normalize
from cifar_lightning.inference import activation_layers, classifier_head, extract_features
from cifar_lightning.models import SeedCNN

MEAN, STD = torch.tensor([0.49, 0.48, 0.45]), torch.tensor([0.25, 0.24, 0.26])


def normalized(images: torch.Tensor) -> torch.Tensor:
    return normalize(images, MEAN, STD)


def test_seed_cnn_layers_and_head():
    model = SeedCNN(batch_norm="all", dropout=0.2)
    assert activation_layers(model) == ["relu1", "relu2", "relu3", "relu4"]
    assert classifier_head(model) is model.fc2


def test_features_match_a_plain_forward_pass():
    torch.manual_seed(0)
    model = SeedCNN(batch_norm="all", dropout=0.5).eval()
    images = torch.randint(0, 256, (37, 3, 32, 32), dtype=torch.uint8)
    features = extract_features(model, images, normalized, batch_size=16)  # 3 batches, the last one short
    x = normalized(images)
    with torch.no_grad():
        expected_means = {}
        for name, module in model.named_children():
            x = module(x)
            if name.startswith("relu"):
                expected_means[name] = x.flatten(1).mean(dim=1)
            if name == "relu4":
                penultimate = x.clone()  # dropout is the identity in eval mode
        logits = x
    torch.testing.assert_close(features.logits, logits)
    torch.testing.assert_close(features.penultimate, penultimate)
    assert list(features.layer_means) == ["relu1", "relu2", "relu3", "relu4"]
    for name, means in expected_means.items():
        torch.testing.assert_close(features.layer_means[name], means)
    assert len(features) == 37


def test_a_module_used_twice_is_reported_per_use():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.act = nn.ReLU()
            self.head = nn.Linear(3 * 32 * 32, 2)

        def forward(self, x):
            return self.head(self.act(self.act(x) - 1.0).flatten(1))

    images = torch.full((4, 3, 32, 32), 255, dtype=torch.uint8)
    features = extract_features(Shared(), images, lambda batch: batch.float() / 255.0)
    assert set(features.layer_means) == {"act@1", "act@2"}
    assert features.layer_means["act@1"].eq(1.0).all() and features.layer_means["act@2"].eq(0.0).all()


def test_no_layers_means_no_hooks():
    features = extract_features(SeedCNN(), torch.zeros(2, 3, 32, 32, dtype=torch.uint8), normalized, layers=[])
    assert features.layer_means == {} and features.penultimate.shape == (2, 64)
