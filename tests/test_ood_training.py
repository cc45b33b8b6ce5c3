"""The training-time OOD methods (ood_training.py): T2FNorm's head input in training and evaluation, RotPred's
rotations, loss and score against hand computations, and both surviving a checkpoint through train.py."""

import copy
import math
from functools import partial

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from cifar_lightning.config.ood import OODSettings
from cifar_lightning.inference import Classifier
from cifar_lightning.models import ReportCNN, classifier_head
from cifar_lightning.module import ClassifierModule
from cifar_lightning.ood.detectors import DetectorFitError, image_state, score_images
from cifar_lightning.ood_training import (
    ROTATION_HEAD,
    attach_t2fnorm,
    head_inputs,
    rotated,
    rotpred_forward,
    rotpred_scores,
)
from tests.conftest import QUIET, TINY_RUN, compose_train, fit_on_one_batch


def small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3))


def test_t2fnorm_normalizes_the_head_input_in_training_and_only_divides_it_in_evaluation():
    net, tau, x = small_net(), 0.1, torch.randn(5, 3, 2, 2)
    raw = net[:3](x)
    attach_t2fnorm(net, tau)
    with head_inputs(net) as seen:
        net.train()(x)
        net.eval()(x)
    trained, evaluated = seen
    assert torch.allclose(trained.norm(dim=1), torch.full((5,), 1 / tau))
    assert torch.allclose(trained, F.normalize(raw, dim=1) / tau)
    assert torch.allclose(evaluated, raw / tau)


def test_no_tau_leaves_the_model_alone():
    net, x = small_net(), torch.randn(5, 3, 2, 2)
    before = net(x)
    assert torch.equal(attach_t2fnorm(net, None)(x), before)


def test_rotated_stacks_the_four_quarter_turns_with_their_labels():
    images = torch.arange(2 * 1 * 2 * 2.0).view(2, 1, 2, 2)  # [[0, 1], [2, 3]] and [[4, 5], [6, 7]]
    stacked, labels = rotated(images)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert stacked[0, 0].tolist() == [[0, 1], [2, 3]]
    assert stacked[2, 0].tolist() == [[1, 3], [0, 2]]  # a quarter turn counter-clockwise
    assert stacked[4, 0].tolist() == [[3, 2], [1, 0]]
    assert stacked[7, 0].tolist() == [[6, 4], [7, 5]]


def test_rotpred_score_matches_the_hand_computation():
    """OpenOOD's score, negated: KL(uniform || p) of the unrotated image minus its mean rotation cross-entropy."""
    class_logits = torch.tensor([[2.0, 0.0, -1.0], [0.1, 0.1, 0.1]] + [[9.0, 9.0, 9.0]] * 6)  # only rows 0-1 count
    rotation_logits = torch.tensor([[3.0, 0.0, 0.0, 0.0]] * 2 + [[0.0, 1.0, 0.0, 0.0]] * 2 + [[0.5, 0, 2.0, 0]] * 4)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])

    def by_hand(i):
        logits = class_logits[i].tolist()
        total = sum(math.exp(v) for v in logits)
        kl = sum(1 / 3 * (math.log(1 / 3) - (v - math.log(total))) for v in logits)
        rotation_ce = []
        for k in range(4):
            row, target = rotation_logits[k * 2 + i].tolist(), k
            rotation_ce.append(math.log(sum(math.exp(v) for v in row)) - row[target])
        return -(kl - sum(rotation_ce) / 4)

    scores = rotpred_scores(class_logits, rotation_logits, labels)
    assert scores.tolist() == pytest.approx([by_hand(0), by_hand(1)], rel=1e-9)
    assert scores[0] < scores[1]  # the confident image is the less foreign


def test_a_rotpred_step_adds_the_weighted_rotation_loss_and_trains_the_rotation_head():
    torch.manual_seed(0)
    optimizer = partial(torch.optim.SGD, lr=0.05)
    module = ClassifierModule(ReportCNN(), optimizer, channels_last=False, rotpred_weight=0.5)
    images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    start = module.rotation_head.weight.detach().clone()
    with torch.no_grad():
        stacked, rotations = rotated(images)
        with head_inputs(module.model) as seen:
            logits = module.model(stacked)
        expected = F.cross_entropy(logits[:8], labels) + 0.5 * F.cross_entropy(module.rotation_head(seen[0]), rotations)
    losses = fit_on_one_batch(module, images, labels, steps=2)
    assert losses[0] == pytest.approx(expected.item(), rel=1e-5)
    assert not torch.equal(module.rotation_head.weight, start)


@pytest.mark.slow
def test_both_methods_survive_a_checkpoint_through_train_py(data_dir, tmp_path):
    """Built from the checkpoint's config, the model gets T2FNorm back; the rotation head stays out of the model."""
    from cifar_lightning.training import train

    overrides = [f"data.data_dir={data_dir}", *QUIET, *TINY_RUN, "module.t2fnorm_tau=0.5", "module.rotpred_weight=1"]
    train(compose_train(overrides, tmp_path))
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    state_dict = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert {f"{ROTATION_HEAD}.weight", f"{ROTATION_HEAD}.bias"} <= set(state_dict)
    classifier = Classifier.load(checkpoint, "cpu")
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    features = classifier.features(images, [])
    head = classifier.head
    with torch.no_grad():
        assert torch.allclose(features.logits, F.linear(features.penultimate, head.weight, head.bias), atol=1e-5)
    state = image_state("rotpred", OODSettings(), checkpoint)
    assert torch.equal(state["w"], state_dict[f"{ROTATION_HEAD}.weight"])
    rotation = nn.Linear(*reversed(state["w"].shape))
    rotation.load_state_dict({"weight": state["w"], "bias": state["b"]})
    with torch.no_grad():
        by_hand = rotpred_scores(*rotpred_forward(classifier.model, rotation, classifier.normalize(images)))
    assert torch.allclose(score_images("rotpred", state, classifier, images, batch_size=8), by_hand.double())
    unhooked = copy.deepcopy(classifier.model)
    classifier_head(unhooked)._forward_pre_hooks.clear()
    with torch.no_grad():
        raw = unhooked(classifier.normalize(images))
    assert torch.allclose(features.logits - head.bias, (raw - head.bias) / 0.5, atol=1e-4)  # W (h / tau) + b


def test_rotpred_is_left_out_for_a_model_without_a_rotation_head(tiny_run):
    checkpoint = tiny_run[0] / "checkpoints" / "best.ckpt"
    with pytest.raises(DetectorFitError, match="module.rotpred_weight=1"):
        image_state("rotpred", OODSettings(), checkpoint)
