"""OOD detection inside evaluate.py: every output for all five default sets (made small) and a user folder, checked
by content (ood.json, every figure a drawn PNG shown once in the report, every table number equal to ood.json's),
every feature detector (ODIN's passes through the network are left to tests/ood/test_detectors.py), and bad `ood`
settings refused before anything is written. The evaluation is conftest.py's, shared with test_saved.py."""

import base64
import json
from pathlib import Path

import numpy as np
import pytest

from cifar_lightning.config.ood import DETECTOR_LABELS
from cifar_lightning.errors import ConfigError, DataError
from cifar_lightning.evaluation import evaluate, run_evaluation
from cifar_lightning.ood.detection import fit_subset
from cifar_lightning.ood.job import DETECTOR_METRICS, LAYER_METRICS, METRICS, ood_settings
from tests.conftest import compose_evaluate
from tests.ood.conftest import (
    DEFAULT_SETS,
    FEATURE_DETECTORS,
    FIRST_OOD,
    FIT_IMAGES,
    FRAME_ID,
    FRAME_OOD,
    ID_FILL,
    PASSES,
    SET_SIZE,
    colour_pixels,
    png_rgb,
)

SETS = [*DEFAULT_SETS, "mine"]
LAYERS = [f"relu{i}" for i in range(1, 5)]
#: The figures: a histogram per layer; the featured detectors' (the report's rule and KNN) scores and galleries.
FIGURES = [
    *(f"ood_hist_{layer}.png" for layer in LAYERS),
    "ood_gallery.png",
    "ood_scores_knn.png",
    "ood_gallery_knn.png",
]


@pytest.fixture(scope="module")
def evaluated(ood_evaluated) -> Path:
    return ood_evaluated[1]


@pytest.fixture(scope="module")
def saved(evaluated) -> dict:
    return json.loads((evaluated / "ood.json").read_text())


def markdown_tables(text: str) -> dict[str, list[list[str]]]:
    """Each `## title` table of a markdown file by its title: header and rows as lists of cells (no separator)."""
    tables = {}
    for block in text.split("\n## ")[1:]:
        title, _, body = block.partition("\n")
        lines = [line.strip() for line in body.splitlines() if line.startswith("|")]
        tables[title] = [
            [cell.strip() for cell in line[1:-1].split(" | ")] for line in lines if set(line) - set("|-: ")
        ]
    return tables


def percent(value: float) -> str:
    return f"{100 * value:.2f}"


def test_each_set_passes_through_the_model_once(evaluated, tiny_run):
    """The test set and the validation split go through the model once each: that pass gives the predictions,
    the calibration's logits and the OOD features; then the fit images and each OOD set once."""
    summary = json.loads((evaluated / "evaluation.json").read_text())
    assert summary["test_acc"] == pytest.approx(tiny_run[1]["test_acc"], abs=1e-6)  # the features' logits predict
    assert summary["confusion"] == tiny_run[1]["test_confusion"]
    images = sorted(count for _, count in PASSES)
    assert images.count(10_000) == 1 and images.count(5_000) == 1, PASSES
    assert sum(images) == 10_000 + 5_000 + FIT_IMAGES + len(DEFAULT_SETS) * SET_SIZE + 3, PASSES


def test_every_figure_is_a_drawn_png_shown_once_in_the_report(evaluated):
    """The OOD figures written are exactly these; each is a PNG of a figure's size that shows what it is for (a
    histogram: the test set filled and the first OOD set's outline; a gallery: images in green ID frames and red OOD
    frames, which the test set's row has both of), and report.html embeds each one's very bytes once."""
    assert sorted(path.name for path in evaluated.glob("ood*.png")) == sorted(FIGURES)
    page = (evaluated / "report.html").read_text()
    for name in FIGURES:
        rgb = png_rgb(evaluated / name)
        assert rgb.shape[1] >= 400 and rgb.shape[0] >= 250, (name, rgb.shape)
        if "gallery" in name:
            assert colour_pixels(rgb, FRAME_ID).sum() > 100 and colour_pixels(rgb, FRAME_OOD).sum() > 100, name
        else:
            assert colour_pixels(rgb, ID_FILL).sum() > 500 and colour_pixels(rgb, FIRST_OOD).sum() > 50, name
        assert page.count(base64.b64encode((evaluated / name).read_bytes()).decode("ascii")) == 1, name


def test_ood_json_covers_every_detector_and_set(saved):
    assert list(saved["sets"]) == SETS
    assert all(saved["sets"][name]["n"] == SET_SIZE for name in DEFAULT_SETS)
    assert [saved["sets"][name]["kind"] for name in SETS] == ["near", "far", "far", "synthetic", "synthetic", "custom"]
    assert saved["sets"]["mine"]["n"] == 3 and "broken.jpg" in saved["sets"]["mine"]["skipped"][0]
    assert set(saved["left_out"]) <= {"she"}  # the tiny model predicts no horse: SHE cannot be fitted
    measured = [name for name in FEATURE_DETECTORS if name not in saved["left_out"]]
    assert list(saved["detectors"]) == [*measured, "mean activation (relu4)"] and len(measured) >= 15
    assert list(saved["detector_seconds"]) == list(saved["detectors"])
    assert all(seconds["fit"] >= 0 and seconds["score"] >= 0 for seconds in saved["detector_seconds"].values())
    assert saved["detector_seconds"]["knn"]["fit"] > 0 and saved["detector_seconds"]["knn"]["score"] > 0
    for name, per_set in saved["detectors"].items():  # OpenOOD's summary: near = cifar100, far = the two MNISTs
        near, far = saved["near_far"][name]["near"], saved["near_far"][name]["far"]
        assert near == {"auroc": per_set["cifar100"]["auroc"], "fpr95": per_set["cifar100"]["fpr95"]}
        assert far["auroc"] == pytest.approx((per_set["mnist"]["auroc"] + per_set["fashion_mnist"]["auroc"]) / 2)
    assert list(saved["layers"]) == LAYERS
    for group in ("detectors", "layers"):
        for per_set in saved[group].values():
            assert list(per_set) == SETS
            for metrics in per_set.values():
                assert set(metrics) >= {"auroc", "aupr_in", "aupr_out", "fpr95", "detection_acc", "threshold"}
                assert all(0.0 <= metrics[key] <= 1.0 for key in DETECTOR_METRICS)
    assert saved["counts"] == {"fit": FIT_IMAGES, "val": 5000, "id_test": 10_000}


def test_every_table_number_is_ood_jsons(evaluated, saved):
    """ood.md and ood_layers.md: a row per detector (per layer), in ood.json's order, whose every number is
    ood.json's, in %; the mean column is the mean over the sets; the summary has the near/far means and seconds."""
    detectors, layers = (evaluated / "ood.md").read_text(), (evaluated / "ood_layers.md").read_text()
    tables = markdown_tables(detectors)
    header = ["detector", *(f"{name} ({saved['sets'][name]['kind']})" for name in SETS), "mean"]
    for metric in DETECTOR_METRICS:
        rows = tables[f"{METRICS[metric][0]} (%, {'higher' if METRICS[metric][1] else 'lower'} is better)"]
        assert rows[0] == header
        assert [row[0] for row in rows[1:]] == list(saved["detectors"])
        for name, *cells in rows[1:]:
            values = [saved["detectors"][name][set_name][metric] for set_name in SETS]
            mean = f"{sum(100 * v for v in values) / len(values):.2f}"  # the mean of the percentages, as shown
            assert cells == [*map(percent, values), mean], (metric, name)
    summary = tables["Summary: mean over the near and the far OOD test halves (%), and seconds per detector"]
    assert summary[0] == [
        "detector",
        "near AUROC",
        "far AUROC",
        "near FPR@95%TPR",
        "far FPR@95%TPR",
        "validation near AUROC",
        "fit (s)",
        "scoring (s)",
    ]
    chosen = saved["validation"]["chosen"]
    assert [row[0] for row in summary[1:]] == [f"{n} (chosen)" if n == chosen else n for n in saved["detectors"]]
    for name, *cells in summary[1:]:
        name = name.removesuffix(" (chosen)")
        near_far, seconds = saved["near_far"][name], saved["detector_seconds"][name]
        numbers = [percent(near_far[kind][metric]) for metric in ("auroc", "fpr95") for kind in ("near", "far")]
        numbers.append(percent(saved["validation"]["near_far"][name]["near"]["auroc"]))
        assert cells == [*numbers, f"{seconds['fit']:.2f}", f"{seconds['score']:.2f}"], name
    assert "synthetic and custom sets are in the per-set tables only" in detectors
    assert "validation split alone (5,000 images)" in detectors
    tables = markdown_tables(layers)
    for metric in LAYER_METRICS:
        rows = tables[f"{METRICS[metric][0]} (%, {'higher' if METRICS[metric][1] else 'lower'} is better)"]
        assert (
            rows[0] == ["layer", *header[1:], "threshold (mean activation)"] and [row[0] for row in rows[1:]] == LAYERS
        )
        for name, *cells in rows[1:]:
            per_set = saved["layers"][name]
            values = [per_set[set_name][metric] for set_name in SETS]
            # The outlier score is the negated mean activation (direction below): the table shows the activation.
            threshold = f"{-per_set['mine']['threshold']:.4g}"
            mean = f"{sum(100 * v for v in values) / len(values):.2f}"
            assert cells == [*map(percent, values), mean, threshold], (metric, name)


def test_the_report_shows_the_ood_results(evaluated):
    page = (evaluated / "report.html").read_text()
    assert "Out-of-distribution detection: detectors x OOD sets" in page
    # per class and the input normalization, calibration, then the summary, 5 detector and 3 layer tables (settings
    # tables have their own class)
    assert page.count("<table>") == 2 + 1 + 6 + 3
    assert all(f'alt="{name}"' in page for name in FIGURES)
    assert "Missing image" not in page


@pytest.mark.parametrize(
    "override, expected",
    [
        ("ood.detectors=[msp,mystery]", "ood.detectors must be all, or a list of distinct names among msp, energy"),
        ("ood.detectors=[msp,msp]", "ood.detectors lists a detector twice"),
        ("ood.threshold.method=eyeball", "ood.threshold.method must be one of percentile, histogram"),
        ("ood.threshold.id_keep=1.5", "ood.threshold.id_keep must be in (0, 1]"),
        ("ood.knn_k=0", "ood.knn_k must be a positive integer"),
        ("ood.mean_activation.direction=sideways", "ood.mean_activation.direction must be one of below, above"),
        ("+ood.sets.mnist.noise=pink", "ood.sets.mnist.noise must be one of gaussian, uniform"),
        ("+ood.sets.mnist.noise=gaussian", "exactly one of `path` and `noise`"),
        ("ood.mean_activation.layer=relu9", "no activation layer 'relu9'"),
        ("ood.download=maybe", "ood.download must be true or false"),
        ("ood.sets.mnist.fetch=svhn", "ood.sets.mnist.fetch must be one of cifar100, mnist, fashion_mnist"),
    ],
)
def test_bad_settings_stop_before_anything_is_written(tiny_run, data_dir, tmp_path, override, expected):
    overrides = [f"run_dir={tiny_run[0]}", f"data.data_dir={data_dir}", override]
    cfg = compose_evaluate(overrides, tmp_path / "out", ood=True)
    with pytest.raises(ConfigError) as info:
        run_evaluation(cfg)
    assert str(info.value).startswith("invalid `ood") and expected in str(info.value)
    assert "Fix the value on the command line (python evaluate.py ood." in str(info.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "override, expected",
    [
        ("ood.gen_gamma=0", "ood.gen_gamma must be a positive number"),
        ("ood.gen_m=0", "ood.gen_m must be a positive integer (or null)"),
        ("ood.weighted_ebo_weights=[1,2]", "ood.weighted_ebo_weights must be null or 10 numbers >= 0"),
        ("ood.weighted_ebo_weights=[0,0,0,0,0,0,0,0,0,0]", "(one per class, not all 0)"),
        ("ood.react_percentile=0", "ood.react_percentile must be in (0, 1]"),
        ("ood.ash_variant=ash-x", "ood.ash_variant must be one of ash-s, ash-p, ash-b"),
        ("ood.ash_percentile=1.0", "ood.ash_percentile must be in [0, 1)"),
        ("ood.scale_percentile=-0.1", "ood.scale_percentile must be in [0, 1)"),
        ("ood.dice_p=1", "ood.dice_p must be in [0, 1)"),
        ("ood.nnguide_k=0", "ood.nnguide_k must be a positive integer"),
        ("ood.nnguide_bank=0", "ood.nnguide_bank must be in (0, 1]"),
        ("ood.gradnorm_temperature=-1", "ood.gradnorm_temperature must be a positive number"),
        ("ood.odin_temperature=inf", "ood.odin_temperature must be a positive number"),
        ("ood.odin_eps=-0.1", "ood.odin_eps must be a number >= 0"),
        ("ood.fit_images=60", "ood.fit_images must be null or an integer >= max(knn_k, nnguide_k, 10) = 100"),
        ("ood.gallery_detectors=[mean_activation,nope]", "ood.gallery_detectors must be a list of names among"),
        ("ood.gallery_size=-1", "ood.gallery_size must be an integer >= 0"),
        ("+ood.mistake=1", "ood has no setting `mistake`"),
    ],
)
def test_each_detector_setting_is_checked(tmp_path, override, expected):
    cfg = compose_evaluate(["ckpt=any.ckpt", override], tmp_path / "out", ood=True)
    with pytest.raises(ConfigError) as info:
        ood_settings(cfg.ood)
    assert str(info.value).startswith("invalid `ood` config: ") and expected in str(info.value)
    assert "python evaluate.py ood." in str(info.value) and str(info.value).endswith("nothing was evaluated.")


def test_the_default_settings_run_every_feature_detector_and_all_adds_the_image_ones(tmp_path):
    """evaluate.py's defaults: every detector that reads the shared features (ODIN and RotPred, a minute each, run
    when named or with ood.detectors=all), and the report's rule and KNN featured in the figures."""
    settings = ood_settings(compose_evaluate(["ckpt=any.ckpt"], tmp_path / "out", ood=True).ood)
    assert settings.detectors == [name for name in DETECTOR_LABELS if name not in ("odin", "rotpred")]
    assert settings.gallery_detectors == ["mean_activation", "knn"]
    for override, expected in (("all", list(DETECTOR_LABELS)), ("[knn,odin]", ["knn", "odin"])):
        cfg = compose_evaluate(["ckpt=any.ckpt", f"ood.detectors={override}"], tmp_path / "out", ood=True)
        assert ood_settings(cfg.ood).detectors == expected
    assert settings.odin_temperature == 1000.0 and settings.dice_p == 0.9 and list(settings.sets) == DEFAULT_SETS
    assert (
        ood_settings(compose_evaluate(["ckpt=any.ckpt", "ood=none"], tmp_path / "out", ood=True).ood).enabled is False
    )


def test_a_missing_ood_set_names_the_path(tiny_run, data_dir, tmp_path):
    cfg = compose_evaluate(
        [f"run_dir={tiny_run[0]}", f"data.data_dir={data_dir}", "ood.data_dir=/nowhere", "ood.download=false"],
        tmp_path / "out",
        ood=True,
    )
    with pytest.raises(DataError, match="/nowhere/cifar100_test.npz does not exist"):
        evaluate(cfg)
    assert not (tmp_path / "out").exists() and not Path("/nowhere").exists()
    folder = tmp_path / "mine"  # a set of the user's own has nothing to be built from
    cfg = compose_evaluate(
        [f"run_dir={tiny_run[0]}", f"data.data_dir={data_dir}", f"+ood.sets.mine.path={folder}"],
        tmp_path / "out",
        ood=True,
    )
    with pytest.raises(DataError, match=f"{folder} does not exist. Fix ood.sets.mine.path.*ood=none"):
        run_evaluation(cfg)
    assert not (tmp_path / "out").exists()


def test_fit_subset_is_seeded():
    labels = np.arange(100)
    assert fit_subset(labels, None, 0).tolist() == list(range(100))
    assert fit_subset(labels, 10, 0).tolist() == fit_subset(labels, 10, 0).tolist()
    assert fit_subset(labels, 10, 0).tolist() != fit_subset(labels, 10, 1).tolist()
    assert len(set(fit_subset(labels, 10, 0).tolist())) == 10


def test_a_fast_net_checkpoint_is_evaluated_with_tta_and_ood(make_cfg, data_dir, tmp_path):
    """The airbench-style net through evaluate.py: TTA on the test set (tta=1: predict's tta=2 is checked in
    test_evaluation.py), OOD on its GELU layers and its head, which has no bias: every feature detector is measured
    (SHE aside, which needs a correct training image of every class)."""
    from cifar_lightning.training import train

    train(
        make_cfg(
            "experiment=fast94",
            "model.widths=[8,16,16]",
            "data.batch_size=128",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1",
            "module.test_tta=0",
            output_dir=tmp_path / "run",
        )
    )
    out = tmp_path / "out"
    summary = evaluate(
        compose_evaluate(
            [
                f"run_dir={tmp_path / 'run'}",
                f"data.data_dir={data_dir}",
                "tta=1",
                "ood.fit_images=500",
                "~ood.sets.cifar100",
                "~ood.sets.mnist",
                "~ood.sets.fashion_mnist",
                "ood.sets.gaussian_noise.n=200",
                "ood.sets.uniform_noise.n=200",
                "gallery.size=4",
                "gradcam.count=1",
                "ood.gallery_size=0",
                f"ood.detectors=[{','.join(FEATURE_DETECTORS)}]",
            ],
            out,
            ood=True,
        )
    )
    assert summary["tta"] == 1 and summary["model"]["_target_"] == "cifar_lightning.models.FastNet"
    saved = json.loads((out / "ood.json").read_text())
    assert set(saved["left_out"]) <= {"she"}
    measured = [name for name in saved["detectors"] if not name.startswith("mean activation")]
    assert measured == [name for name in FEATURE_DETECTORS if name not in saved["left_out"]]
    assert saved["layers"] and all(name.startswith(("act0", "block")) for name in saved["layers"])
    # fast94 holds out no validation split: the thresholds are set on 2% of its training images, and ood.md says so.
    assert saved["counts"]["val"] == 1000 and saved["settings"]["val_trained_on"] is True
    assert "trained on: the run held out no validation split" in (out / "ood.md").read_text()
    assert list(saved["sets"]) == ["gaussian_noise", "uniform_noise"] and (out / "report.html").is_file()
