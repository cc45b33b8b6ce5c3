"""The OpenOOD comparison page: read evaluate.py's folders, show MSP and the detector chosen on the validation halves,
average the seeds of one model, put each detector beside OpenOOD's published row, and refuse folders it cannot use
with a one-line error."""

import json

import pytest

from cifar_lightning.ood.detectors import DETECTOR_LABELS
from cifar_lightning.ood.openood import (
    PUBLISHED,
    ModelBlock,
    OpenOODComparisonError,
    blocks,
    chosen_detector,
    commands,
    detectors_table,
    load_records,
    main,
    models_table,
    read_evaluation,
    save_records,
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
    lines = models_table(blocks(two_models)).splitlines()
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
    lines = models_table(blocks(models)).splitlines()
    model = "| T2FNorm | 3 | 93.00 ± 1.00 | 2 | "
    assert model + "msp | 88.00 ± 2.00 | 90.00 ± 0.00 | 50.00 ± 0.00 | 20.00 ± 0.00 |" in lines
    # each seed's own choice, measured on its test halves: msp 0.86, msp 0.88, knn 0.80
    assert any(line.startswith(model + "chosen on validation (msp x2, knn x1) | 84.67 ± 4.16 |") for line in lines)
    assert (
        "| msp | 88.00 ± 2.00 | 90.00 ± 0.00 | MSP | 88.03 ± 0.25 | 90.73 ± 0.43 |"
        in detectors_table(blocks(models)).splitlines()
    )


def test_the_detectors_table_puts_openoods_row_beside_ours_and_dashes_where_there_is_none(two_models):
    lines = detectors_table(blocks(two_models)).splitlines()
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


def seed_folder(tmp_path, seed, near, test_acc=0.9, name="s"):
    """An evaluation folder of a run trained with seed=<seed>, with its own and its run's overrides."""
    run = tmp_path / "runs" / f"{name}{seed}"
    hydra_overrides(run, f"data.data_dir={tmp_path}", "experiment=fast94_cpu", f"seed={seed}")
    folder = write_evaluation(
        tmp_path / "eval" / f"{name}{seed}",
        "cross_entropy",
        {"msp": summary(near, 0.9), "knn": summary(0.8, 0.9)},
        test_acc=test_acc,
        checkpoint=f"{run}/checkpoints/last.ckpt",
    )
    hydra_overrides(folder, f"run_dir={run}", "tta=2")
    return folder


def test_the_records_file_grows_seed_by_seed_to_the_page_of_all_folders(tmp_path, capsys):
    """A page built in steps through --records (folders evaluated at different times, earlier ones since deleted)
    is the page of all folders at once; the records keep no path of this machine."""
    folders = [
        seed_folder(tmp_path, seed, near, acc) for seed, near, acc in [(0, 0.86, 0.92), (1, 0.88, 0.93), (2, 0.9, 0.94)]
    ]
    records = tmp_path / "docs" / "ood_openood.json"
    assert main([*map(str, folders[:2]), "--labels", "CE", "CE", "--records", str(records)]) == 0
    assert main([str(folders[2]), "--labels", "CE", "--records", str(records)]) == 0
    stepwise = capsys.readouterr().out.split("# OOD detection")[-1]
    assert main([*map(str, folders), "--labels", "CE", "CE", "CE"]) == 0
    assert capsys.readouterr().out.split("# OOD detection")[-1] == stepwise
    assert "| CE | 3 | 93.00 ± 1.00 | 2 | msp | 88.00 ± 2.00 |" in stepwise
    assert "`python train.py experiment=fast94_cpu seed=0,1,2`" in stepwise
    assert str(tmp_path) not in records.read_text()
    # evaluating seed 1 again replaces it rather than adding a fourth seed
    again = seed_folder(tmp_path, 1, 0.9, 0.93, name="again")
    assert main([str(again), "--labels", "CE", "--records", str(records)]) == 0
    assert "| CE | 3 | 93.00 ± 1.00 | 2 | msp | 88.67 ± 2.31 |" in capsys.readouterr().out
    assert [m.seed for m in load_records(records)["CE"]] == ["0", "1", "2"]


def test_a_carried_model_shows_its_rows_as_recorded_until_its_seeds_are_evaluated_again(tmp_path, capsys):
    records = tmp_path / "ood_openood.json"
    carried = ModelBlock(
        "LogitNorm",
        "- LogitNorm: `python train.py loss=logitnorm seed=0,1,2`, then `python evaluate.py run_dir=<run>`",
        [["LogitNorm", 3, "85.26 ± 1.79", 2, "msp", "82.20 ± 1.58", "87.54 ± 1.13", "70.67 ± 3.94", "55.92 ± 3.87"]],
        {"msp": ["82.20 ± 1.58", "87.54 ± 1.13"]},
        "computed on 2026-12-07; the folders are gone",
    )
    save_records(records, {"LogitNorm": carried})
    assert main([str(seed_folder(tmp_path, 0, 0.86)), "--labels", "CE", "--records", str(records)]) == 0
    page = capsys.readouterr().out
    assert (
        "| LogitNorm | 3 | 85.26 ± 1.79 | 2 | msp | 82.20 ± 1.58 | 87.54 ± 1.13 | 70.67 ± 3.94 | 55.92 ± 3.87 |" in page
    )
    assert "| msp | 82.20 ± 1.58 | 87.54 ± 1.13 | 86.00 | 90.00 | MSP |" in page  # carried cells beside CE's
    assert "- LogitNorm: computed on 2026-12-07; the folders are gone" in page
    assert (
        main([str(seed_folder(tmp_path, 0, 0.7, name="ln")), "--labels", "LogitNorm", "--records", str(records)]) == 0
    )
    page = capsys.readouterr().out
    assert (
        "| LogitNorm | 1 | 90.00 | 2 | msp | 70.00 |" in page and "85.26" not in page and "folders are gone" not in page
    )


def test_a_records_file_it_cannot_read_is_refused_in_one_line(tmp_path, capsys):
    records = tmp_path / "ood_openood.json"
    records.write_text(json.dumps({"models": [{"label": "CE", "seeds": [{"tta": 2}]}]}))
    assert main(["--records", str(records)]) == 2
    error = capsys.readouterr().err
    assert "is not a records file this version reads" in error and error.count("\n") == 1
    with pytest.raises(SystemExit):
        main([])
    assert "nothing to show" in capsys.readouterr().err
