"""The OpenOOD comparison page: read evaluate.py's folders, show MSP and the detector chosen on the validation halves,
average the seeds of one model, put each detector beside OpenOOD's published row, and refuse folders it cannot use
with a one-line error."""

import json

import pytest

from cifar_lightning.ood.detectors import DETECTOR_LABELS
from cifar_lightning.ood.openood import (
    PUBLISHED,
    OpenOODComparisonError,
    chosen_detector,
    commands,
    detectors_table,
    main,
    models_table,
    read_evaluation,
)
from cifar_lightning.ood.protocol import TestDataChoiceError


def write_evaluation(folder, loss, near_far, test_acc=0.9, tta=2, chosen="msp", checkpoint="x.ckpt"):
    folder.mkdir(parents=True)
    (folder / "evaluation.json").write_text(
        json.dumps(
            {"test_acc": test_acc, "experiment": "fast94_cpu", "loss": loss, "tta": tta, "checkpoint": checkpoint}
        )
    )
    validation = {"chosen": chosen} if chosen is not None else None
    (folder / "ood.json").write_text(json.dumps({"near_far": near_far, "validation": validation}))
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
        chosen="entropy",  # on the validation halves; knn leads on the test halves, which choose nothing
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


def test_the_chosen_detector_is_the_validation_halves_choice_not_the_best_on_test(two_models):
    ce, logitnorm = two_models
    assert chosen_detector(ce) == "entropy"  # knn has the highest near AUROC on the test halves
    assert chosen_detector(logitnorm) == "msp"


def test_an_evaluation_from_before_the_split_is_refused(tmp_path, capsys):
    old = write_evaluation(tmp_path / "old", "cross_entropy", {"msp": summary(0.85, 0.9)}, chosen=None)
    with pytest.raises(TestDataChoiceError, match="could only be chosen on the test sets"):
        chosen_detector(read_evaluation(old))
    assert main([str(old)]) == 2 and "could only be chosen on the test sets" in capsys.readouterr().err


def test_the_models_table_shows_msp_and_the_chosen_detector_per_model_and_openoods_rows(two_models):
    lines = models_table(two_models).splitlines()
    assert "| fast94_cpu, cross_entropy | 1 | 90.00 | 2 | msp | 85.00 | 90.00 | 50.00 | 20.00 |" in lines
    chosen = "| fast94_cpu, cross_entropy | 1 | 90.00 | 2 | chosen on validation (entropy x1) | 84.00 | 89.00 | 50.00 |"
    assert any(line.startswith(chosen) for line in lines)
    assert (
        "| fast94_cpu, logitnorm | 1 | 89.50 | 2 | chosen on validation (msp x1) | 91.00 | 97.00 | 50.00 | 20.00 |"
        in lines
    )
    openood = (
        "| OpenOOD: ResNet-18, logitnorm | 3 | 94.30 | - | LogitNorm + MSP | 92.33 ± 0.08 | 96.74 ± 0.06 | - | - |"
    )
    assert openood in lines
    assert any(line.startswith("| OpenOOD: ResNet-18, t2fnorm | 3 | 94.69 |") for line in lines)


def test_folders_with_one_label_are_seeds_averaged_with_their_spread(tmp_path):
    seeds = [
        write_evaluation(tmp_path / f"s{i}", "cross_entropy", {"msp": summary(near, 0.9), "knn": summary(0.8, 0.9)},
                         test_acc=acc, chosen=chosen)
        for i, (near, acc, chosen) in enumerate([(0.86, 0.92, "msp"), (0.88, 0.93, "msp"), (0.90, 0.94, "knn")])
    ]  # fmt: skip
    models = [read_evaluation(folder, "T2FNorm") for folder in seeds]
    lines = models_table(models).splitlines()
    model = "| T2FNorm | 3 | 93.00 ± 1.00 | 2 | "
    assert model + "msp | 88.00 ± 2.00 | 90.00 ± 0.00 | 50.00 ± 0.00 | 20.00 ± 0.00 |" in lines
    # each seed's own choice, measured on its test halves: msp 0.86, msp 0.88, knn 0.80
    assert any(line.startswith(model + "chosen on validation (msp x2, knn x1) | 84.67 ± 4.16 |") for line in lines)
    assert (
        "| msp | 88.00 ± 2.00 | 90.00 ± 0.00 | MSP | 88.03 ± 0.25 | 90.73 ± 0.43 |"
        in detectors_table(models).splitlines()
    )


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
    assert "| CE, widths 32 | 1 | 90.00 | 2 | msp |" in page and "| LogitNorm, no smoothing: near |" in page
    assert "fast94_cpu, logitnorm" not in page
    with pytest.raises(SystemExit) as exit_info:
        main([*folders, "--labels", "only one"])
    assert exit_info.value.code == 2 and "give one label per folder" in capsys.readouterr().err


def hydra_overrides(folder, *overrides):
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))


def test_the_page_cites_each_models_commands_with_its_seeds_and_no_paths(tmp_path):
    """Commands from the runs' own .hydra/overrides.yaml: seeds folded into one list, paths left out."""
    folders = []
    for seed in (0, 1):
        run = tmp_path / "runs" / f"t2f_s{seed}"
        hydra_overrides(
            run, f"data.data_dir={tmp_path}", "experiment=fast94_cpu", "module.t2fnorm_tau=0.4", f"seed={seed}"
        )
        folder = write_evaluation(
            tmp_path / "eval" / f"s{seed}",
            "cross_entropy",
            {"msp": summary(0.8, 0.9)},
            checkpoint=f"{run}/checkpoints/last.ckpt",
        )
        hydra_overrides(folder, f"run_dir={run}", f"data.data_dir={tmp_path}", "tta=2", "progress=false")
        folders.append(folder)
    text = commands([read_evaluation(folder, "T2FNorm") for folder in folders])
    assert text == (
        "- T2FNorm: `python train.py experiment=fast94_cpu module.t2fnorm_tau=0.4 seed=0,1`, then "
        "`python evaluate.py run_dir=<run> data.data_dir=../shared/data tta=2`\n"
    )
    assert str(tmp_path) not in text
    (folders[1] / ".hydra" / "overrides.yaml").write_text(f"- run_dir={tmp_path}\n- ood.detectors=[msp]\n")
    text = commands([read_evaluation(folder, "T2FNorm") for folder in folders])
    assert text.endswith(
        ", then seed 0: `python evaluate.py run_dir=<run> data.data_dir=../shared/data tta=2`; seed 1: "
        "`python evaluate.py run_dir=<run> data.data_dir=../shared/data ood.detectors=[msp]`\n"
    )
