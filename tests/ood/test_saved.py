"""ood_detectors.pt: evaluate.py saves every detector it measured; loaded back, each one flags the test and OOD
images exactly as evaluate.py's tables say; files of another checkpoint, tampered files and unknown names are
refused; fit_detector fits the same detector evaluate.py fits; ODIN, which scores images, is handed out only to a
caller that scores images. (The evaluation, every feature detector on small sets, is conftest.py's, shared with
test_job.py; ODIN's cost on 15,000 validation and test images is left to the one test that needs it.)"""

import json
import shutil

import pytest
import torch

from cifar_lightning.config.ood import DetectorHyperparameters
from cifar_lightning.data import load_cifar10
from cifar_lightning.inference import Classifier
from cifar_lightning.ood.detectors import image_state, score_images
from cifar_lightning.ood.protocol import split_halves
from cifar_lightning.ood.saved import (
    DEFAULT_DETECTOR,
    DETECTORS_FILE,
    MEAN_ACTIVATION,
    DetectorsError,
    find_detectors,
    fit_detector,
    load_detector,
    read_detectors,
)
from cifar_lightning.ood.sets import noise_images
from tests.ood.conftest import FEATURE_DETECTORS, FIT_IMAGES


@pytest.fixture(scope="module")
def evaluated(ood_evaluated):
    """(log folder, output folder) of conftest.py's evaluate() run, laid out as logs/evaluate/runs/<run>/."""
    return ood_evaluated


def test_every_saved_detector_flags_as_evaluate_measured(evaluated, classifier, data_dir):
    _, out = evaluated
    ood = json.loads((out / "ood.json").read_text())
    test_images = load_cifar10(str(data_dir)).test_images
    seed = int(ood["sets"]["uniform_noise"]["source"].rsplit("seed=", 1)[1])
    split = ood["validation"]["validation_share"]
    test_half = split_halves(ood["sets"]["uniform_noise"]["n"], split, ood["validation"]["split_seed"])[1]
    noise = noise_images("uniform", ood["sets"]["uniform_noise"]["n"], seed)[test_half]  # tables: test halves
    saved = list(read_detectors(out / DETECTORS_FILE)["detectors"])
    assert saved == [name for name in [*FEATURE_DETECTORS, MEAN_ACTIVATION] if name not in ood["left_out"]]
    assert set(ood["left_out"]) <= {"she"}  # the tiny model predicts no horse: SHE cannot be fitted
    detectors = [load_detector(out / DETECTORS_FILE, classifier, name) for name in saved]
    layers = sorted({layer for detector in detectors for layer in detector.layers})
    id_features, ood_features = classifier.features(test_images, layers), classifier.features(noise, layers)
    for detector in detectors:
        name = detector.name
        row = ood["detectors"][name if name != MEAN_ACTIVATION else f"mean activation ({ood['mean_activation_layer']})"]
        metrics = row["uniform_noise"]
        assert detector.threshold == pytest.approx(metrics["threshold"], rel=1e-12, abs=1e-12), name
        id_scores, ood_scores = detector.score(id_features), detector.score(ood_features)
        assert (~detector.is_ood(id_scores)).double().mean().item() == pytest.approx(metrics["id_kept"], abs=1e-12)
        assert detector.is_ood(ood_scores).double().mean().item() == pytest.approx(metrics["ood_caught"], abs=1e-12)


def test_the_default_is_the_detector_chosen_on_validation_halves_and_found_by_checkpoint(
    evaluated, classifier, tmp_path, tiny_run
):
    log_dir, out = evaluated
    chosen = json.loads((out / "ood.json").read_text())["validation"]["chosen"]
    assert DEFAULT_DETECTOR == "knn"  # ood.fit's, and the fallback when the chosen one scores images (ODIN)
    assert find_detectors(classifier, log_dir) == out / DETECTORS_FILE
    expected = chosen if chosen in read_detectors(out / DETECTORS_FILE)["detectors"] else DEFAULT_DETECTOR
    assert read_detectors(out / DETECTORS_FILE)["default"] == expected
    assert load_detector(out / DETECTORS_FILE, classifier).name == expected
    other_ckpt = tmp_path / "other.ckpt"  # the same weights in a different file: another checkpoint
    checkpoint = torch.load(tiny_run[0] / "checkpoints" / "best.ckpt", weights_only=True)
    checkpoint["epoch"] = 99
    torch.save(checkpoint, other_ckpt)
    other = Classifier.load(other_ckpt, device="cpu")
    assert find_detectors(other, log_dir) is None
    with pytest.raises(DetectorsError, match="fitted for another checkpoint"):
        load_detector(out / DETECTORS_FILE, other)


def test_unknown_name_lists_the_saved_ones(evaluated, classifier):
    with pytest.raises(DetectorsError, match="holds no detector 'odin'; it holds msp, energy"):
        load_detector(evaluated[1] / DETECTORS_FILE, classifier, "odin")


def test_tampered_and_damaged_files_are_refused(evaluated, classifier, tmp_path):
    record = torch.load(evaluated[1] / DETECTORS_FILE, weights_only=True)
    record["detectors"]["knn"]["state"]["hook"] = torch.nn.ReLU()  # an object: unpickling could run code
    torch.save(record, tmp_path / "tampered.pt")
    with pytest.raises(DetectorsError, match="not a safe OOD detectors file"):
        load_detector(tmp_path / "tampered.pt", classifier)
    whole = (evaluated[1] / DETECTORS_FILE).read_bytes()
    (tmp_path / "short.pt").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DetectorsError, match="truncated or corrupt"):
        load_detector(tmp_path / "short.pt", classifier)
    torch.save({"format": "something else"}, tmp_path / "foreign.pt")
    with pytest.raises(DetectorsError, match="not a usable OOD detectors file"):
        load_detector(tmp_path / "foreign.pt", classifier)
    with pytest.raises(DetectorsError, match="does not exist"):
        load_detector(tmp_path / "missing.pt", classifier)


def test_a_newer_unrelated_file_does_not_hide_the_right_one(evaluated, classifier, tmp_path):
    log_dir = tmp_path / "logs"
    right = log_dir / "evaluate" / "runs" / "a" / DETECTORS_FILE
    right.parent.mkdir(parents=True)
    shutil.copy(evaluated[1] / DETECTORS_FILE, right)
    newer = log_dir / "evaluate" / "runs" / "b" / DETECTORS_FILE
    newer.parent.mkdir(parents=True)
    newer.write_bytes(b"damaged")
    assert find_detectors(classifier, log_dir) == right


@pytest.mark.parametrize("name", ["knn", "mahalanobis", MEAN_ACTIVATION])
def test_fit_detector_fits_what_evaluate_saved(evaluated, classifier, data_dir, name):
    saved = load_detector(evaluated[1] / DETECTORS_FILE, classifier, name)
    fitted = fit_detector(classifier, data_dir, name, fit_images=FIT_IMAGES, seed=0)
    assert fitted.source == "fitted now" and fitted.layers == saved.layers
    assert fitted.threshold == pytest.approx(saved.threshold, rel=1e-9)
    images = noise_images("gaussian", 64, 3)
    torch.testing.assert_close(
        fitted.score(classifier.features(images, list(fitted.layers))),
        saved.score(classifier.features(images, list(saved.layers))),
    )


def test_fit_detector_refuses_an_unknown_name(classifier, data_dir):
    with pytest.raises(DetectorsError, match="unknown OOD detector 'mystery'"):
        fit_detector(classifier, data_dir, "mystery")
    with pytest.raises(DetectorsError, match="the odin detector .* scores images.*ood.detector=knn"):
        fit_detector(classifier, data_dir, "odin")
    with pytest.raises(DetectorsError, match="rotpred detector cannot be used with this model: the model has no "):
        fit_detector(classifier, data_dir, "rotpred", from_images=True)


def test_odin_is_handed_out_only_to_a_caller_that_scores_images(evaluated, classifier, tmp_path):
    """A detectors file with ODIN in it: refused to a features-only caller with the fix; given to one that scores
    images, it scores them as ODIN does, and refuses features."""
    record = torch.load(evaluated[1] / DETECTORS_FILE, weights_only=True)
    state = image_state("odin", DetectorHyperparameters())
    record["detectors"]["odin"] = {"threshold": -0.1, "layers": [], "state": state}
    torch.save(record, tmp_path / DETECTORS_FILE)
    with pytest.raises(DetectorsError, match="perturbs every input through the whole network.*ood.detector=knn"):
        load_detector(tmp_path / DETECTORS_FILE, classifier, "odin")
    odin = load_detector(tmp_path / DETECTORS_FILE, classifier, "odin", from_images=True)
    assert odin.needs_images and odin.threshold == -0.1
    images = noise_images("gaussian", 16, 4)
    assert torch.equal(odin.score_images(classifier, images), score_images("odin", state, classifier, images))
    with pytest.raises(ValueError, match="scores images, not features"):
        odin.score(classifier.features(images, []))
    knn = load_detector(tmp_path / DETECTORS_FILE, classifier, "knn", from_images=True)
    assert torch.equal(knn.score_images(classifier, images), knn.score(classifier.features(images, [])))


def test_a_detector_pickles_as_its_state(evaluated, classifier):
    """serve.py's worker processes receive the detector pickled: it travels as tensors and rebuilds its scorer."""
    import pickle

    images = noise_images("gaussian", 32, 5)
    for name in ("knn", MEAN_ACTIVATION):
        detector = load_detector(evaluated[1] / DETECTORS_FILE, classifier, name)
        features = classifier.features(images, list(detector.layers))
        before = detector.score(features)  # the scorer is built: pickling must still leave it out
        copy = pickle.loads(pickle.dumps(detector))
        assert copy == detector and copy.threshold == detector.threshold
        torch.testing.assert_close(copy.score(features), before)
