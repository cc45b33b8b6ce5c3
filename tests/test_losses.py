"""LogitNorm against a hand computation on a tiny batch: the paper's formula written out with Python floats."""

import math
from functools import partial

import pytest
import torch

from cifar_lightning.losses import logitnorm, loss_name
from cifar_lightning.models import ReportCNN
from cifar_lightning.module import ClassifierModule
from tests.conftest import fit_on_one_batch

LOGITS = [[2.0, -1.0, 0.5], [0.1, 0.2, -3.0]]
TARGETS = [0, 2]


def logitnorm_by_hand(logits, targets, tau, smoothing=0.0):
    """-log softmax(f / (tau * ||f||)) at the target, mixed with the uniform target by `smoothing`, averaged."""
    losses = []
    for row, target in zip(logits, targets):
        norm = math.sqrt(sum(v * v for v in row)) + 1e-7
        scaled = [v / (tau * norm) for v in row]
        log_total = math.log(sum(math.exp(v) for v in scaled))
        log_probs = [v - log_total for v in scaled]
        k = len(row)
        losses.append(-sum(((1 - smoothing) * (i == target) + smoothing / k) * lp for i, lp in enumerate(log_probs)))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("tau", [0.04, 1.0])
def test_logitnorm_matches_the_hand_computation(tau):
    loss = logitnorm(temperature=tau)(torch.tensor(LOGITS, dtype=torch.float64), torch.tensor(TARGETS))
    assert loss.item() == pytest.approx(logitnorm_by_hand(LOGITS, TARGETS, tau), rel=1e-9)


def test_logitnorm_with_a_recipes_label_smoothing_matches_the_hand_computation():
    loss = logitnorm(0.04, label_smoothing=0.2)(torch.tensor(LOGITS, dtype=torch.float64), torch.tensor(TARGETS))
    assert loss.item() == pytest.approx(logitnorm_by_hand(LOGITS, TARGETS, 0.04, smoothing=0.2), rel=1e-9)


def test_logitnorm_ignores_the_logits_scale_and_cross_entropy_does_not():
    """The point of LogitNorm: growing the logits of right predictions cannot lower the loss."""
    logits, targets = torch.tensor(LOGITS), torch.tensor([0, 1])  # each row's largest logit
    normalized, cross_entropy = logitnorm(), torch.nn.CrossEntropyLoss()
    assert normalized(10 * logits, targets).item() == pytest.approx(normalized(logits, targets).item(), rel=1e-5)
    assert cross_entropy(10 * logits, targets).item() < cross_entropy(logits, targets).item()


def test_the_module_trains_with_the_given_loss():
    """training_step, run by Lightning, takes the given loss (LogitNorm, not cross-entropy) and lowers it."""
    torch.manual_seed(0)
    module = ClassifierModule(ReportCNN(), partial(torch.optim.SGD, lr=0.05, momentum=0.9), None, loss=logitnorm())
    images, labels = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    with torch.no_grad():
        logits = module(images)  # no dropout or batch norm: the first step's logits
    losses = fit_on_one_batch(module, images, labels, steps=8)
    normalized = logitnorm()(logits, labels).item()
    cross_entropy = torch.nn.CrossEntropyLoss()(logits, labels).item()
    assert losses[0] == pytest.approx(normalized, rel=1e-5) and losses[0] != pytest.approx(cross_entropy, rel=1e-2)
    assert losses[-1] < losses[0]


def test_a_loss_node_is_named_by_its_target():
    """evaluation.json's `loss` names the run's loss from its config's `_target_`."""
    assert loss_name({"_target_": "cifar_lightning.losses.logitnorm", "temperature": 0.04}) == "logitnorm"
    assert loss_name({"_target_": "torch.nn.CrossEntropyLoss"}) == loss_name(None) == "cross_entropy"
