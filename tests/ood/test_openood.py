"""The OpenOOD comparison page: read evaluate.py's folders, pick MSP and the best near detector, put each
detector beside OpenOOD's published row, and refuse folders it cannot use with a one-line error."""

import json

import pytest

from cifar_lightning.ood.detectors import DETECTOR_LABELS
from cifar_lightning.ood.openood import (
    PUBLISHED,
    OpenOODComparisonError,
    best_near_detector,
    detectors_table,
    main,
    models_table,
    read_evaluation,
)


def write_evaluation(folder, loss, near_far, test_acc=0.9, tta=2):
    folder.mkdir(parents=True)
    (folder / "evaluation.json").write_text(
        json.dumps({"test_acc": test_acc, "experiment": "fast94_cpu", "loss": loss, "tta": tta, "checkpoint": "x.ckpt"})
    )
    (folder / "ood.json").write_text(json.dumps({"near_far": near_far}))
    return folder


def summary(near_auroc, far_auroc, near_fpr=0.5, far_fpr=0.2):
    return {"near": {"auroc": near_auroc, "fpr95": near_fpr}, "far": {"auroc": far_auroc, "fpr95": far_fpr}}


@pytest.fixture
def two_models(tmp_path):
    ce = write_evaluation(
        tmp_path / "ce",
        "cross_entropy",
        {
            "msp": summary(0.85, 0.90),
            "knn": summary(0.88, 0.95, 0.40),
            "entropy": summary(0.84, 0.89),
            "mean activation (relu4)": {"near": summary(0.6, 0.7)["near"], "far": None},
        },
    )
    logitnorm = write_evaluation(
        tmp_path / "ln", "logitnorm", {"msp": summary(0.91, 0.97), "knn": summary(0.9, 0.96)}, test_acc=0.895
    )
    return read_evaluation(ce), read_evaluation(logitnorm)


def test_every_published_row_names_one_of_our_detectors_and_a_plausible_figure():
    assert set(PUBLISHED) <= set(DETECTOR_LABELS)
    assert PUBLISHED["knn"].near == 90.64 and PUBLISHED["fdbd"].near == 90.42  # the figures the issue cites
    for row in PUBLISHED.values():
        assert 50 <= row.near <= 100 and 50 <= row.far <= 100 and row.near_std >= 0 and row.far_std >= 0


def test_the_best_near_detector_is_the_one_with_the_highest_near_auroc(two_models):
    ce, logitnorm = two_models
    assert best_near_detector(ce) == "knn"
    assert best_near_detector(logitnorm) == "msp"


def test_the_models_table_shows_msp_and_the_best_detector_per_model_and_openoods_logitnorm(two_models):
    table = models_table(two_models)
    lines = table.splitlines()
    assert "| fast94_cpu, cross_entropy | 90.00 | 2 | msp | 85.00 | 90.00 | 50.00 | 20.00 |" in lines
    best = "| fast94_cpu, cross_entropy | 90.00 | 2 | knn (highest near AUROC) | 88.00 | 95.00 | 40.00 | 20.00 |"
    assert best in lines
    # MSP is LogitNorm's best: one row, not two
    assert [line for line in lines if "logitnorm" in line and "fast94_cpu" in line] == [
        "| fast94_cpu, logitnorm | 89.50 | 2 | msp (highest near AUROC) | 91.00 | 97.00 | 50.00 | 20.00 |"
    ]
    assert "| OpenOOD: ResNet-18, logitnorm | 94.30 | - | msp | 92.33 ± 0.08 | 96.74 ± 0.06 | - | - |" in lines


def test_the_detectors_table_puts_openoods_row_beside_ours_and_dashes_where_there_is_none(two_models):
    lines = detectors_table(two_models).splitlines()
    assert "| knn | 88.00 | 95.00 | 90.00 | 96.00 | KNN | 90.64 ± 0.20 | 92.96 ± 0.14 |" in lines
    assert "| entropy | 84.00 | 89.00 | - | - | - | - | - |" in lines  # only one model has it; OpenOOD has none
    assert "| mean activation (relu4) | 60.00 | - | - | - | - | - | - |" in lines  # no far set of that kind


def test_the_cli_writes_the_page_with_the_set_differences(two_models, tmp_path, capsys):
    out = tmp_path / "docs" / "ood_openood.md"
    assert main([str(model.folder) for model in two_models] + ["--out", str(out)]) == 0
    page = out.read_text()
    assert page == capsys.readouterr().out
    assert "TinyImageNet" in page and "Fashion-MNIST" in page and "95.06" in page


def test_a_folder_without_ood_results_is_refused_in_one_line(tmp_path, capsys):
    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "evaluation.json").write_text(json.dumps({"test_acc": 0.9}))
    with pytest.raises(OpenOODComparisonError, match="ood=none writes no ood.json"):
        read_evaluation(folder)
    assert main([str(folder)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1


def test_a_corrupt_ood_json_is_refused(tmp_path):
    folder = write_evaluation(tmp_path / "eval", "cross_entropy", {})
    (folder / "ood.json").write_text("{not json")
    with pytest.raises(OpenOODComparisonError, match="cannot be read"):
        read_evaluation(folder)


def test_labels_name_the_models_and_must_match_the_folders(two_models, capsys):
    folders = [str(model.folder) for model in two_models]
    assert main([*folders, "--labels", "CE, widths 32", "LogitNorm, no smoothing"]) == 0
    page = capsys.readouterr().out
    assert "| CE, widths 32 | 90.00 | 2 | msp |" in page and "| LogitNorm, no smoothing: near |" in page
    assert "fast94_cpu, logitnorm" not in page
    with pytest.raises(SystemExit) as exit_info:
        main([*folders, "--labels", "only one"])
    assert exit_info.value.code == 2 and "give one label per folder" in capsys.readouterr().err
