"""Every detector on real CIFAR-10: fitted on 2,000 training images, it cannot tell the two halves of the test set
apart (AUROC 0.5 +/- 0.03: nothing leaks from fit to test), yet it does tell a half apart once its features are
shifted (so the first check can fail); its saved state rebuilds the very same scores; and pytorch-ood's refusal to
fit one is reported, not raised.

The feature detectors read the tiny run's penultimate features through a head refitted on them (a linear probe on
the 2,000 fit images): the tiny model itself predicts no horse at all, and SHE needs a correct training image of
every class. ODIN runs on the tiny model itself, through its whole network.

Two checks that a detector is the one it is named after, not a stub or one scoring the wrong way round:
- its scores equal those of pytorch-ood's own class, built on a small deterministic CNN and fitted with
  fit(loader) as pytorch-ood documents it, with hyperparameters that are nobody's defaults (so each one must be
  passed on);
- on penultimate features made of well-separated class clusters, points far from every cluster score as outliers
  (higher = more likely OOD, pytorch-ood's convention and the project's): AUROC > 0.9. ODIN perturbs images through
  a network's gradient, so it is checked on images of a tiny linear model instead, whose classes are image patterns.
"""

import inspect
import pickle

import pytest
import pytorch_ood.detector as pod
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cifar_lightning.config.ood import DetectorHyperparameters
from cifar_lightning.data import CIFAR10_CLASSES, load_cifar10
from cifar_lightning.inference import Classifier, Features
from cifar_lightning.ood.detection import OODSettings, detect_ood, ood_metrics
from cifar_lightning.ood.detectors import (
    DETECTOR_LABELS,
    IMAGE_DETECTORS,
    DetectorFitError,
    build_detectors,
    fit_state,
    image_state,
    score_images,
    scorer,
)
from cifar_lightning.ood.sets import OODSet, noise_images

FIT_IMAGES = 2000
FEATURE_DETECTORS = [name for name in DETECTOR_LABELS if name not in IMAGE_DETECTORS]
SETTINGS = DetectorHyperparameters()  # conf/ood/default.yaml's values


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
    return (
        head,
        through_head(fit.penultimate),
        labels,
        through_head(first),
        through_head(second),
        through_head(second[:, permutation] * 2.0),
    )


def auroc(id_scores: torch.Tensor, ood_scores: torch.Tensor) -> float:
    return ood_metrics(id_scores, ood_scores)["auroc"]


def test_every_detector_of_the_issue_is_known():
    """pytorch-ood 0.4's post-hoc detectors, all selectable by name (fDBD included: this pytorch-ood has it), and
    RotPred's score, which needs a model trained with its rotation head (ood_training.py)."""
    assert set(DETECTOR_LABELS) - {"rotpred"} == {
        "msp",
        "energy",
        "max_logit",
        "mahalanobis",
        "knn",
        "vim",
        "ash",
        "dice",
        "entropy",
        "fdbd",
        "gen",
        "gradnorm",
        "kl_matching",
        "odin",
        "react",
        "rmd",
        "scale",
        "she",
        "nnguide",
        "weighted_ebo",
    }


@pytest.mark.parametrize("name", FEATURE_DETECTORS)
def test_two_halves_of_the_test_set_look_alike_and_a_shifted_half_does_not(probed, name):
    head, fit, labels, first, second, shifted = probed
    score = scorer(name, fit_state(name, fit, labels, head, SETTINGS))
    assert abs(auroc(score(first), score(second)) - 0.5) <= 0.03, name
    assert abs(auroc(score(first), score(shifted)) - 0.5) >= 0.06, name  # twice the tolerance, or more


def test_odin_through_the_whole_network(classifier, arrays, halves):
    """ODIN on 2,500 images of each half of the test set (ODIN's gradient pass is the costly one; its scores are
    checked against pytorch-ood's and for their direction below); then test images against uniform noise."""
    state = image_state("odin", SETTINGS)
    first, second = (score_images("odin", state, classifier, arrays.test_images[half[:2500]]) for half in halves)
    assert abs(auroc(first, second) - 0.5) <= 0.03
    noise = score_images("odin", state, classifier, noise_images("uniform", 500, 0))
    assert abs(auroc(first[:500], noise) - 0.5) >= 0.15


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
        classifier,
        fit_images=arrays.train_images[:500],
        fit_labels=arrays.train_labels[:500],
        val_images=arrays.train_images[45_000:45_500],
        id_images=arrays.test_images[:1000],
        ood_sets=[noise],
        settings=OODSettings(detectors=["msp", "odin"], mean_activation={"layers": ["relu4"]}),
    )
    assert list(result.detectors) == ["msp", "odin", "mean activation (relu4)"]
    assert result.states["odin"] == {"temperature": 1000.0, "eps": 0.0014}
    expected = score_images("odin", result.states["odin"], classifier, noise.images)
    torch.testing.assert_close(result.scores["odin"].ood["noise"], expected)
    seconds = result.detector_seconds()
    assert seconds["odin"]["fit"] == 0.0 and seconds["odin"]["score"] > 0.0 and seconds["msp"]["score"] >= 0.0
    assert result.feature_seconds > 0.0 and result.seconds >= result.feature_seconds


# pytorch-ood's own classes as their documentation builds them, on a small deterministic model.

#: Hyperparameters that are neither the project's defaults (DetectorHyperparameters()) nor pytorch-ood's (KNN k=50, GEN
#: gamma=0.1 M=None, ReAct 0.9, ASH ash-s 0.65, SCALE 0.65, NNGuide k=10, GradNorm T=1, ODIN T=1000 eps=0.0014):
#: a detector that dropped one of them would score differently from pytorch-ood's class built with it.
ODD = DetectorHyperparameters(
    knn_k=7,
    vim_dim=12,
    gen_gamma=0.3,
    gen_m=4,
    weighted_ebo_weights=[0.2 + 0.15 * k for k in range(10)],
    react_percentile=0.8,
    ash_variant="ash-p",
    ash_percentile=0.7,
    scale_percentile=0.75,
    dice_p=0.7,
    nnguide_k=9,
    nnguide_bank=0.5,
    gradnorm_temperature=2.5,
    odin_temperature=7.0,
    odin_eps=0.01,
)
REFERENCE_FIT, REFERENCE_TEST = 300, 100  # CIFAR-10 training images the detectors learn from; test images scored


class TinyNet(nn.Module):
    """A small CNN with the parts pytorch-ood's classes are built from: `features` (pooled ReLU features, the
    encoder), `maps` (the same as N x D x 1 x 1 feature maps, the backbone of ReAct, ASH and SCALE) and `head`."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 5, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.head = nn.Linear(width, len(CIFAR10_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def maps(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[:, :, None, None]

    def on_maps(self, maps: torch.Tensor) -> torch.Tensor:
        return self.head(maps.flatten(1))


@pytest.fixture(scope="module")
def tiny_net(arrays):
    """(classifier, fit images, fit labels, test images): a seeded TinyNet whose head is fitted (LBFGS) on the fit
    images' features, so that it classifies a training image of every class correctly (SHE needs one)."""
    torch.manual_seed(0)
    model = TinyNet().eval()
    classifier = Classifier(model, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26), CIFAR10_CLASSES, torch.device("cpu"))
    fit_images, fit_labels = arrays.train_images[:REFERENCE_FIT], arrays.train_labels[:REFERENCE_FIT]
    with torch.no_grad():
        features = model.features(classifier.normalize(fit_images))
    optimizer = torch.optim.LBFGS(model.head.parameters(), max_iter=100)

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = nn.functional.cross_entropy(model.head(features), fit_labels)
        value.backward()
        return value

    optimizer.step(loss)
    model.requires_grad_(False)
    correct = model.head(features).argmax(dim=1) == fit_labels
    assert set(fit_labels[correct].tolist()) == set(range(10))
    return classifier, fit_images, fit_labels, arrays.test_images[:REFERENCE_TEST]


def reference(name: str, classifier: Classifier, fit_images: torch.Tensor, fit_labels: torch.Tensor):
    """pytorch-ood's class for `name`, built on the whole model with ODD's hyperparameters and fitted with
    fit(loader) on the normalized fit images, as its documentation shows. NNGuide's bank is the project's seeded
    draw of a share of the fit images (DetectorSettings.nnguide_bank)."""
    model = classifier.model
    encoder, head, weight, bias = model.features, model.head, model.head.weight, model.head.bias

    def loader(images: torch.Tensor, labels: torch.Tensor) -> DataLoader:
        return DataLoader(TensorDataset(classifier.normalize(images), labels), batch_size=64)

    fit = loader(fit_images, fit_labels)
    count = max(ODD.nnguide_k, round(ODD.nnguide_bank * len(fit_images)))
    bank = torch.randperm(len(fit_images), generator=torch.Generator().manual_seed(0))[:count]
    build = {
        "msp": lambda: pod.MaxSoftmax(model),
        "energy": lambda: pod.EnergyBased(model),
        "max_logit": lambda: pod.MaxLogit(model),
        "entropy": lambda: pod.Entropy(model),
        "gen": lambda: pod.GEN(model, gamma=ODD.gen_gamma, M=ODD.gen_m),
        "weighted_ebo": lambda: pod.WeightedEBO(model, torch.tensor(ODD.weighted_ebo_weights)),
        "kl_matching": lambda: pod.KLMatching(model).fit(fit),
        "mahalanobis": lambda: pod.Mahalanobis(encoder).fit(fit),
        "rmd": lambda: pod.RMD(encoder).fit(fit),
        "knn": lambda: pod.KNN(encoder, k=ODD.knn_k).fit(fit),
        "vim": lambda: pod.ViM(encoder, d=ODD.vim_dim, w=weight, b=bias).fit(fit),
        "she": lambda: pod.SHE(encoder, head).fit(fit),
        "nnguide": lambda: pod.NNGuide(encoder, head, k=ODD.nnguide_k).fit(loader(fit_images[bank], fit_labels[bank])),
        "fdbd": lambda: pod.fDBD(encoder, head).fit(fit),
        "react": lambda: pod.ReAct(model.maps, model.on_maps, percentile=ODD.react_percentile).fit(fit),
        "ash": lambda: pod.ASH(model.maps, model.on_maps, variant=ODD.ash_variant, percentile=ODD.ash_percentile),
        "scale": lambda: pod.SCALE(model.maps, model.on_maps, percentile=ODD.scale_percentile),
        "dice": lambda: pod.DICE(encoder, weight, bias, p=ODD.dice_p).fit(fit),
        "gradnorm": lambda: pod.GradNorm(
            model, param_filter=lambda parameter: parameter == "head.weight", temperature=ODD.gradnorm_temperature
        ),
        "odin": lambda: pod.ODIN(
            model, eps=ODD.odin_eps, temperature=ODD.odin_temperature, norm_std=list(classifier.std)
        ),
    }
    return build[name]()


def test_the_reference_settings_are_nobodys_defaults():
    """Every hyperparameter of ODD differs from the project's default and from the default of pytorch-ood's class,
    so that one dropped on the way is seen."""
    defaults = DetectorHyperparameters()
    assert all(getattr(ODD, key) != getattr(defaults, key) for key in DetectorHyperparameters.model_fields)
    pytorch_ood_defaults = {
        "knn_k": (pod.KNN, "k"),
        "gen_gamma": (pod.GEN, "gamma"),
        "gen_m": (pod.GEN, "M"),
        "react_percentile": (pod.ReAct, "percentile"),
        "ash_variant": (pod.ASH, "variant"),
        "ash_percentile": (pod.ASH, "percentile"),
        "scale_percentile": (pod.SCALE, "percentile"),
        "nnguide_k": (pod.NNGuide, "k"),
        "gradnorm_temperature": (pod.GradNorm, "temperature"),
        "odin_temperature": (pod.ODIN, "temperature"),
        "odin_eps": (pod.ODIN, "eps"),
    }
    for key, (detector, parameter) in pytorch_ood_defaults.items():
        assert getattr(ODD, key) != inspect.signature(detector).parameters[parameter].default, key


@pytest.mark.parametrize("name", [name for name in DETECTOR_LABELS if name != "rotpred"])  # RotPred: test_ood_training
def test_scores_equal_pytorch_oods_own_detector(tiny_net, name, tmp_path):
    """Each detector as evaluate.py builds it (build_detectors on extracted features; score_images for ODIN), and
    again rebuilt from its saved state, gives pytorch-ood's own scores for the same images (small batches: the
    batching is checked too)."""
    classifier, fit_images, fit_labels, test_images = tiny_net
    with torch.no_grad():
        expected = reference(name, classifier, fit_images, fit_labels).predict(classifier.normalize(test_images))
    expected = expected.detach().double()
    assert expected.std() > 0, name  # the scores tell the images apart, so that a constant stub cannot match them
    if name in IMAGE_DETECTORS:
        state = image_state(name, ODD)
        scores = score_images(name, state, classifier, test_images, batch_size=32)

        def rebuilt(loaded):
            return score_images(name, loaded, classifier, test_images, batch_size=32)

    else:
        fit = classifier.features(fit_images, [], batch_size=128)
        built, left_out = build_detectors([name], fit, fit_labels, classifier.head, ODD)
        assert not left_out
        test = classifier.features(test_images, [], batch_size=32)
        state, scores = built[name].state, built[name].score(test)

        def rebuilt(loaded):
            return scorer(name, loaded)(test)

    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-7)
    torch.save({"state": state}, tmp_path / "state.pt")
    torch.testing.assert_close(
        rebuilt(torch.load(tmp_path / "state.pt", weights_only=True)["state"]), expected, rtol=1e-5, atol=1e-7
    )


# The direction: well-separated class clusters of non-negative (ReLU-like) penultimate features, each class
# active on its own block of dimensions that the head reads; far points are active on blocks no class uses, or
# on none (near the origin).
CLASSES, BLOCK, DIMENSIONS, LEVEL, SPREAD = 10, 8, 104, 4.0, 0.5


def mann_whitney_auroc(inside: torch.Tensor, outside: torch.Tensor) -> float:
    """P(an outside score > an inside score), ties counting half: the AUROC with OOD as the positive class and
    higher = more OOD, computed here so that it does not lean on the project's metrics."""
    above = (outside[:, None] > inside[None, :]).double().mean()
    return (above + 0.5 * (outside[:, None] == inside[None, :]).double().mean()).item()


@pytest.fixture(scope="module")
def clusters():
    """(head, fit features, fit labels, in-distribution features, far features)."""
    generator = torch.Generator().manual_seed(0)

    def points(blocks: list[int | None]) -> torch.Tensor:
        values = SPREAD * torch.randn(len(blocks), DIMENSIONS, generator=generator).abs()
        for row, block in enumerate(blocks):
            if block is not None:
                values[row, block * BLOCK : (block + 1) * BLOCK] += LEVEL * (
                    1 + 0.1 * torch.randn(BLOCK, generator=generator)
                )
        return values

    head = nn.Linear(DIMENSIONS, CLASSES)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        for k in range(CLASSES):
            head.weight[k, k * BLOCK : (k + 1) * BLOCK] = 1.0
    head.requires_grad_(False)

    def features(values: torch.Tensor) -> Features:
        return Features(head(values), values, {})

    fit_labels, id_labels = torch.arange(600) % CLASSES, torch.arange(300) % CLASSES
    unused = range(CLASSES, DIMENSIONS // BLOCK)  # blocks no class is active on
    far = [CLASSES + index % len(unused) for index in range(150)] + [None] * 150
    return (
        head,
        features(points(fit_labels.tolist())),
        fit_labels,
        features(points(id_labels.tolist())),
        features(points(far)),
    )


@pytest.mark.parametrize("name", FEATURE_DETECTORS)
def test_points_far_from_every_class_cluster_score_as_outliers(clusters, name):
    head, fit, labels, inside, far = clusters
    score = scorer(name, fit_state(name, fit, labels, head, SETTINGS))
    assert mann_whitney_auroc(score(inside), score(far)) > 0.9, name


class PatternNet(nn.Module):
    """A tiny image model for ODIN: one ReLU feature per class, the image's correlation with that class's +/-1
    pixel pattern, read by the head as that class's logit."""

    def __init__(self, patterns: torch.Tensor):
        super().__init__()
        self.features = nn.Sequential(
            nn.Flatten(), nn.Linear(patterns[0].numel(), len(patterns), bias=False), nn.ReLU()
        )
        self.head = nn.Linear(len(patterns), len(patterns))
        with torch.no_grad():
            self.features[1].weight.copy_(patterns.flatten(1) / patterns[0].numel() ** 0.5)
            self.head.weight.copy_(0.2 * torch.eye(len(patterns)))
            self.head.bias.zero_()
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def test_odin_scores_images_far_from_every_class_as_outliers():
    """Images of a class (its pattern on mid-gray, plus noise) against plain mid-gray noise, far from every class
    pattern, through ODIN with the default settings."""
    generator = torch.Generator().manual_seed(0)
    patterns = torch.randint(0, 2, (10, 3, 32, 32), generator=generator).float() * 2 - 1

    def images(classes: list[int | None]) -> torch.Tensor:
        noise = torch.randint(-12, 13, (len(classes), 3, 32, 32), generator=generator)
        drawn = [48 * patterns[k] if k is not None else torch.zeros(3, 32, 32) for k in classes]
        return (128 + torch.stack(drawn) + noise).clamp(0, 255).to(torch.uint8)

    classifier = Classifier(
        PatternNet(patterns).eval(), (0.5, 0.5, 0.5), (0.2, 0.2, 0.2), CIFAR10_CLASSES, torch.device("cpu")
    )
    state = image_state("odin", SETTINGS)
    inside = score_images("odin", state, classifier, images([k % 10 for k in range(100)]))
    outside = score_images("odin", state, classifier, images([None] * 100))
    assert mann_whitney_auroc(inside, outside) > 0.9
