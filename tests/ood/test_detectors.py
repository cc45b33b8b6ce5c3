"""Every detector on real CIFAR-10: fitted on 2,000 training images, it cannot tell the two halves of the test set
apart (AUROC 0.5 +/- 0.03: nothing leaks from fit to test), yet it does tell a half apart once its features are
shifted (so the first check can fail); its saved state rebuilds the very same scores; and pytorch-ood's refusal to
fit one is reported, not raised.

The feature detectors read the tiny run's penultimate features through a head refitted on them (a linear probe on
the 2,000 fit images): the tiny model itself predicts no horse at all, and SHE needs a correct training image of
every class. ODIN runs on the tiny model itself, through its whole network."""

import pickle

import pytest
import torch
from torch import nn

from cifar_lightning.data import load_cifar10
from cifar_lightning.inference import Features
from cifar_lightning.ood.detection import OODSettings, detect_ood
from cifar_lightning.ood.detectors import (
    DETECTOR_LABELS,
    IMAGE_DETECTORS,
    DetectorFitError,
    DetectorSettings,
    build_detectors,
    fit_state,
    image_state,
    score_images,
    scorer,
)
from cifar_lightning.ood.metrics import ood_metrics
from cifar_lightning.ood.sets import OODSet, noise_images

FIT_IMAGES = 2000
FEATURE_DETECTORS = [name for name in DETECTOR_LABELS if name not in IMAGE_DETECTORS]
SETTINGS = DetectorSettings()  # conf/ood/default.yaml's values


@pytest.fixture(scope="module")
def arrays(data_dir):
    return load_cifar10(str(data_dir))


@pytest.fixture(scope="module")
def halves():
    order = torch.randperm(10_000, generator=torch.Generator().manual_seed(0))
    return order[:5000], order[5000:]


@pytest.fixture(scope="module")
def probed(classifier, arrays, halves):
    """(head, fit features, fit labels, first half, second half, shifted second half): the tiny model's penultimate
    features with logits from a linear probe fitted on the fit images."""
    labels = arrays.train_labels[:FIT_IMAGES]
    fit = classifier.features(arrays.train_images[:FIT_IMAGES], [])
    test = classifier.features(arrays.test_images, [])
    torch.manual_seed(0)
    head = nn.Linear(fit.penultimate.shape[1], len(arrays.classes))
    optimizer = torch.optim.LBFGS(head.parameters(), max_iter=60)
    inputs = fit.penultimate.clone()

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = nn.functional.cross_entropy(head(inputs), labels)
        value.backward()
        return value

    optimizer.step(loss)
    head.eval()

    def through_head(penultimate: torch.Tensor) -> Features:
        with torch.inference_mode():  # as Classifier.features makes them: tensors autograd may not save
            penultimate = penultimate.clone()
            return Features(head(penultimate), penultimate, {})

    first, second = test.penultimate[halves[0]], test.penultimate[halves[1]]
    # Shifted: every feature vector's dimensions permuted and doubled, a different distribution for every detector.
    permutation = torch.randperm(second.shape[1], generator=torch.Generator().manual_seed(1))
    return (head, through_head(fit.penultimate), labels, through_head(first), through_head(second),
            through_head(second[:, permutation] * 2.0))  # fmt: skip


def auroc(id_scores: torch.Tensor, ood_scores: torch.Tensor) -> float:
    return ood_metrics(id_scores, ood_scores)["auroc"]


def test_every_detector_of_the_issue_is_known():
    """pytorch-ood 0.4's post-hoc detectors, all selectable by name (fDBD included: this pytorch-ood has it)."""
    assert set(DETECTOR_LABELS) == {
        "msp", "energy", "max_logit", "mahalanobis", "knn", "vim", "ash", "dice", "entropy", "fdbd", "gen",
        "gradnorm", "kl_matching", "odin", "react", "rmd", "scale", "she", "nnguide", "weighted_ebo",
    }  # fmt: skip


@pytest.mark.parametrize("name", FEATURE_DETECTORS)
def test_two_halves_of_the_test_set_look_alike_and_a_shifted_half_does_not(probed, name):
    head, fit, labels, first, second, shifted = probed
    score = scorer(name, fit_state(name, fit, labels, head, SETTINGS))
    assert abs(auroc(score(first), score(second)) - 0.5) <= 0.03, name
    assert abs(auroc(score(first), score(shifted)) - 0.5) >= 0.06, name  # twice the tolerance, or more


def test_odin_through_the_whole_network(classifier, arrays, halves):
    """ODIN on all 10,000 test images, in two halves; then test images against uniform noise."""
    state = image_state("odin", SETTINGS)
    first, second = (score_images("odin", state, classifier, arrays.test_images[half]) for half in halves)
    assert abs(auroc(first, second) - 0.5) <= 0.03
    noise = score_images("odin", state, classifier, noise_images("uniform", 1000, 0))
    assert abs(auroc(first[:1000], noise) - 0.5) >= 0.15


@pytest.mark.parametrize("name", FEATURE_DETECTORS)
def test_a_saved_state_rebuilds_the_same_scores(probed, name, tmp_path):
    """A state goes through torch.save / weights-only torch.load (as in ood_detectors.pt) and pickle (as to
    serve.py's workers): the rebuilt detector gives bit-identical scores."""
    head, fit, labels, first, _, _ = probed
    state = fit_state(name, fit, labels, head, SETTINGS)
    torch.save({"state": state}, tmp_path / "state.pt")
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)["state"]
    expected = scorer(name, state)(first)
    assert torch.equal(scorer(name, loaded)(first), expected), name
    assert torch.equal(scorer(name, pickle.loads(pickle.dumps(loaded)))(first), expected), name


def test_odin_state_rebuilds_the_same_scores(classifier, arrays, tmp_path):
    state = image_state("odin", SETTINGS)
    torch.save({"state": state}, tmp_path / "state.pt")
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)["state"]
    images = arrays.test_images[:200]
    expected = score_images("odin", state, classifier, images)
    assert torch.equal(score_images("odin", loaded, classifier, images), expected)


def test_a_detector_pytorch_ood_cannot_fit_is_left_out_with_the_reason(probed):
    """SHE needs a correctly classified training image of every class: with a head that never predicts class 7,
    fit_state says why it cannot be fitted, and build_detectors leaves it out instead of stopping."""
    head, fit, labels, _, _, _ = probed
    no_horse = nn.Linear(head.in_features, head.out_features)
    no_horse.load_state_dict(head.state_dict())
    with torch.no_grad():
        no_horse.bias[7] = -1e4
        fit = Features(no_horse(fit.penultimate), fit.penultimate, {})
    with pytest.raises(DetectorFitError, match="she: No correct predictions for class 7"):
        fit_state("she", fit, labels, no_horse, SETTINGS)
    built, left_out = build_detectors(["msp", "she", "knn"], fit, labels, no_horse, SETTINGS)
    assert list(built) == ["msp", "knn"] and list(left_out) == ["she"]


def test_image_and_feature_detectors_are_not_mixed_up(classifier, arrays):
    with pytest.raises(ValueError, match="odin scores images, not features"):
        scorer("odin", image_state("odin", SETTINGS))
    with pytest.raises(ValueError, match="knn scores features, not images"):
        score_images("knn", {}, classifier, arrays.test_images[:2])


def test_detect_ood_scores_odin_from_the_images(classifier, arrays):
    """detect_ood runs ODIN on the validation, test and OOD images themselves, and times it like the others."""
    noise = OODSet("noise", noise_images("gaussian", 300, 2), "synthetic", "test")
    result = detect_ood(
        classifier, fit_images=arrays.train_images[:500], fit_labels=arrays.train_labels[:500],
        val_images=arrays.train_images[45_000:45_500], id_images=arrays.test_images[:1000], ood_sets=[noise],
        settings=OODSettings(detectors=("msp", "odin"), layers=("relu4",)),
    )  # fmt: skip
    assert list(result.detectors) == ["msp", "odin", "mean activation (relu4)"]
    assert result.states["odin"] == {"temperature": 1000.0, "eps": 0.0014}
    expected = score_images("odin", result.states["odin"], classifier, noise.images)
    torch.testing.assert_close(result.scores["odin"].ood["noise"], expected)
    seconds = result.detector_seconds()
    assert seconds["odin"]["fit"] == 0.0 and seconds["odin"]["score"] > 0.0 and seconds["msp"]["score"] >= 0.0
    assert result.feature_seconds > 0.0 and result.seconds >= result.feature_seconds
