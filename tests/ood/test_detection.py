"""OOD scoring on a real (tiny) checkpoint's features, extracted once: no leakage (two halves of the CIFAR-10 test
set are indistinguishable to every detector and layer), and thresholds that depend on the validation split alone.
detect_ood (extraction, then this scoring) runs in tests/ood/test_detectors.py and through evaluate.py in
test_job.py; ODIN, which runs on images through the whole network, is left to tests/ood/test_detectors.py."""

import pytest
import torch
from pytorch_ood.detector import MaxSoftmax

from cifar_lightning.checkpoints import build_model, load_checkpoint, normalization
from cifar_lightning.config.ood import OODSettings, ThresholdSettings
from cifar_lightning.data import CIFAR10DataModule
from cifar_lightning.inference import classifier_head, extract_features
from cifar_lightning.ood.detection import mean_activation_name, percentile_threshold, score_ood
from cifar_lightning.ood.detectors import DETECTOR_LABELS, IMAGE_DETECTORS
from cifar_lightning.ood.sets import noise_images

FIT_IMAGES = 5000  # of the training split: enough for 10 class means, KNN and ViM, and quick
FEATURE_DETECTORS = tuple(name for name in DETECTOR_LABELS if name not in IMAGE_DETECTORS)


@pytest.fixture(scope="module")
def model_and_data(tiny_run, data_dir):
    path = tiny_run[0] / "checkpoints" / "best.ckpt"
    checkpoint = load_checkpoint(path)
    datamodule = CIFAR10DataModule(str(data_dir), download=False)
    datamodule.load_state_dict(normalization(checkpoint, path))
    datamodule.setup()
    return build_model(checkpoint, path), datamodule


@pytest.fixture(scope="module")
def extracted(model_and_data):
    """Features of the fit/validation splits, the test set and two noise sets, extracted once."""
    model, datamodule = model_and_data
    arrays = datamodule.arrays

    def features(images):
        return extract_features(model, images, datamodule.normalize)

    return {
        "fit": features(arrays.train_images[datamodule.train_idx[:FIT_IMAGES]]),
        "fit_labels": arrays.train_labels[datamodule.train_idx[:FIT_IMAGES]],
        "val": features(arrays.train_images[datamodule.val_idx]),
        "test": features(arrays.test_images),
        "uniform": features(noise_images("uniform", 500, 0)),
        "gaussian": features(noise_images("gaussian", 800, 1)),
    }


def score(model_and_data, extracted, id_test, ood, settings=OODSettings(detectors=["msp"])):
    return score_ood(
        classifier_head(model_and_data[0]),
        fit=extracted["fit"],
        fit_labels=extracted["fit_labels"],
        val=extracted["val"],
        id_test=id_test,
        ood=ood,
        sets={name: {} for name in ood},
        settings=settings,
    )


def test_two_halves_of_the_test_set_are_indistinguishable(model_and_data, extracted):
    test = extracted["test"]
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))
    half = {"other half": test.subset(order[5000:])}
    result = score(
        model_and_data, extracted, test.subset(order[:5000]), half, OODSettings(detectors=list(FEATURE_DETECTORS))
    )
    # The tiny model predicts no horse: SHE (a mean feature per correctly classified class) cannot be fitted.
    assert set(result.left_out) <= {"she"}
    assert set(result.detectors) == {*FEATURE_DETECTORS, mean_activation_name("relu4")} - set(result.left_out)
    assert set(result.layers) == {"relu1", "relu2", "relu3", "relu4"}
    for group in (result.detectors, result.layers):
        for name, per_set in group.items():
            assert abs(per_set["other half"]["auroc"] - 0.5) <= 0.03, (name, per_set["other half"])
            # A validation-chosen threshold keeps about 95% of either half.
            assert per_set["other half"]["id_kept"] == pytest.approx(0.95, abs=0.02), name


@pytest.mark.parametrize("method", ["percentile", "histogram"])
def test_thresholds_see_only_the_validation_split(model_and_data, extracted, method):
    settings = OODSettings(detectors=["msp"], threshold=ThresholdSettings(method=method))
    test = extracted["test"]
    first = score(model_and_data, extracted, test.subset(slice(0, 2000)), {"noise": extracted["uniform"]}, settings)
    other_sets = {"noise": extracted["gaussian"], "part of test": test.subset(slice(2000, 3000))}
    second = score(model_and_data, extracted, test.subset(slice(5000, 8000)), other_sets, settings)
    assert first.thresholds == second.thresholds
    assert first.detectors["msp"]["noise"] != second.detectors["msp"]["noise"]  # the metrics did change


def test_the_threshold_is_the_validation_percentile(model_and_data, extracted):
    result = score(model_and_data, extracted, extracted["test"], {"noise": extracted["uniform"]})
    expected = percentile_threshold(MaxSoftmax.score(extracted["val"].logits).double(), 0.95)
    assert result.thresholds["detectors"]["msp"] == pytest.approx(expected)
    layer_expected = percentile_threshold(-extracted["val"].layer_means["relu2"].double(), 0.95)
    assert result.thresholds["layers"]["relu2"] == pytest.approx(layer_expected)
    assert result.counts == {"fit": FIT_IMAGES, "val": 5000, "id_test": 10_000}


def test_direction_above_flips_the_mean_activation_score(model_and_data, extracted):
    below = score(model_and_data, extracted, extracted["test"], {"noise": extracted["uniform"]})
    above = score(
        model_and_data,
        extracted,
        extracted["test"],
        {"noise": extracted["uniform"]},
        OODSettings(detectors=["msp"], mean_activation={"direction": "above", "layers": ["relu4"]}),
    )
    assert list(above.layers) == ["relu4"]
    assert above.layers["relu4"]["noise"]["auroc"] == pytest.approx(1 - below.layers["relu4"]["noise"]["auroc"])
