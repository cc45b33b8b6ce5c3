"""The inference layer: Classifier.load rebuilds a checkpoint's model with its normalization and refuses what it
cannot use; predictions and features match a plain forward pass, batch by batch, at any image size."""

import pytest
import torch
from torch import nn

from cifar_lightning.checkpoints import CheckpointError
from cifar_lightning.data import normalize
from cifar_lightning.images import fit_to_input
from cifar_lightning.inference import Classifier, activation_layers, classifier_head, extract_features, predict
from cifar_lightning.models import ReportCNN

MEAN, STD = torch.tensor([0.49, 0.48, 0.45]), torch.tensor([0.25, 0.24, 0.26])


def normalized(images: torch.Tensor) -> torch.Tensor:
    return normalize(images, MEAN, STD)


def test_report_cnn_layers_and_head():
    model = ReportCNN(batch_norm="all", dropout=0.2)
    assert activation_layers(model) == ["relu1", "relu2", "relu3", "relu4"]
    assert classifier_head(model) is model.fc2


def test_features_match_a_plain_forward_pass():
    torch.manual_seed(0)
    model = ReportCNN(batch_norm="all", dropout=0.5).eval()
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
    features = extract_features(ReportCNN(), torch.zeros(2, 3, 32, 32, dtype=torch.uint8), normalized, layers=[])
    assert features.layer_means == {} and features.penultimate.shape == (2, 64)


def test_a_checkpoint_loads_with_its_normalization(classifier, tiny_run):
    metrics = tiny_run[1]
    assert classifier.normalization == metrics["normalization"]
    assert classifier.classes[0] == "airplane" and len(classifier.classes) == 10
    assert classifier.checkpoint_epoch == 1 and classifier.config["model"]["_target_"].endswith("ReportCNN")
    assert not classifier.model.training and classifier.head is classifier.model.fc2


def test_predictions_and_features_run_the_folded_copy(classifier):
    """predict and features run the batch-norm-folded copy (made once), never the model's own batch norms."""
    calls = []
    for norm in (m for m in classifier.model.modules() if isinstance(m, nn.BatchNorm2d)):
        norm.register_forward_hook(lambda *_: calls.append(1))
    images = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    predictions, features = classifier.predict(images), classifier.features(images, [])
    torch.testing.assert_close(features.logits, predictions.logits)
    assert calls == [] and classifier.inference_model is classifier.inference_model
    assert not any(isinstance(m, nn.BatchNorm2d) for m in classifier.inference_model.modules())


def test_predictions_match_a_plain_forward_pass_in_batches(classifier):
    images = torch.randint(0, 256, (45, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    predictions = classifier.predict(images, batch_size=16)
    mean, std = torch.tensor(classifier.mean), torch.tensor(classifier.std)
    with torch.no_grad():
        expected = classifier.model(normalize(images, mean, std))
    torch.testing.assert_close(predictions.logits, expected)
    torch.testing.assert_close(predictions.probabilities.sum(dim=1), torch.ones(45, dtype=torch.float32))
    probabilities, classes = predictions.top_k(3)
    assert classes.shape == (45, 3) and (probabilities[:, 0] >= probabilities[:, 1]).all()
    assert classes[:, 0].equal(predictions.predicted)


def test_images_of_another_size_are_cropped_and_resized(classifier):
    images = torch.randint(0, 256, (5, 3, 48, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    resized = fit_to_input(images)
    assert resized.shape == (5, 3, 32, 32)
    torch.testing.assert_close(classifier.predict(images).logits, classifier.predict(resized).logits)
    features = classifier.features(images, layers=["relu1"])
    torch.testing.assert_close(features.logits, classifier.predict(resized).logits)


def test_tta_is_the_classifiers(tiny_run, classifier):
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    mirrored = Classifier.load(tiny_run[0] / "checkpoints" / "best.ckpt", device="cpu", tta=1)
    expected = predict(classifier.model, images, classifier.normalize, tta=1)
    torch.testing.assert_close(mirrored.predict(images).logits, expected.logits)


def test_a_model_with_another_number_of_classes_is_refused(tiny_run, tmp_path):
    checkpoint = torch.load(tiny_run[0] / "checkpoints" / "best.ckpt", weights_only=True)
    checkpoint["hyper_parameters"]["run_config"]["model"]["num_classes"] = 5
    five = ReportCNN(num_classes=5, batch_norm="all")
    checkpoint["state_dict"] = {f"model.{k}": v for k, v in five.state_dict().items()}
    torch.save(checkpoint, tmp_path / "five.ckpt")
    with pytest.raises(CheckpointError, match="predicts 5 classes, but CIFAR-10 has 10"):
        Classifier.load(tmp_path / "five.ckpt", device="cpu")
