"""The ablation summary on synthetic sweeps whose numbers are known: table values, missing runs,
written files, the CLI's error path and the Hydra callback."""

import csv
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy import stats

from cifar_lightning.ablation import (
    CSV_COLUMNS,
    REPORT_TEST_ACC,
    AggregateAblation,
    aggregate,
    build_table,
    collect_runs,
    epoch_curve,
    main,
    summed_confusion,
)

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Test accuracy of seeds 0, 1, 2 per configuration (fractions; multiples of 1/1000 so the
# confusion matrices reproduce them exactly).
ACCURACIES = {
    "base": [0.600, 0.610, 0.620],
    "improved": [0.660, 0.670, 0.665],
    "literal_improved": [0.640, 0.650, 0.645],
    "no_scheduler": [0.620, 0.625, 0.615],
    "no_l2": [0.615, 0.610, 0.620],
    "no_batchnorm": [0.605, 0.600, 0.610],
    "no_dropout": [0.625, 0.630, 0.620],
}


def confusion(accuracy: float) -> list[list[int]]:
    """1000 test images per class, `accuracy` of them right, the rest taken for the next class."""
    right = round(1000 * accuracy)
    matrix = np.zeros((10, 10), dtype=int)
    for true in range(10):
        matrix[true, true] = right
        matrix[true, (true + 1) % 10] = 1000 - right
    return matrix.tolist()


def history(epochs: int, accuracy: float) -> list[dict]:
    return [
        {"epoch": e, "train_loss": 2.0 / e, "train_acc": accuracy * e / epochs, "val_loss": 2.2 / e,
         "val_acc": accuracy * e / epochs - 0.01, "lr": 0.001}
        for e in range(1, epochs + 1)
    ]  # fmt: skip


def hydra_config(name: str, seed: int, planned: int) -> str:
    """Hydra's own copy: plain name and seed, interpolations left unresolved."""
    return (
        f"seed: {seed}\nexperiment_name: ${{ablation.name}}\n"
        f"ablation:\n  name: {name}\n  seeds: {planned}\n"
        "paths:\n  output_dir: ${hydra:runtime.output_dir}\n"
    )


def write_job(sweep: Path, job: int, name: str, seed: int, accuracy: float | None, planned: int = 3,
              epochs: int = 4) -> Path:  # fmt: skip
    """One Hydra job directory; accuracy None leaves it unfinished (no config.yaml, no metrics.json)."""
    job_dir = sweep / str(job)
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "config.yaml").write_text(hydra_config(name, seed, planned))
    (job_dir / ".hydra" / "overrides.yaml").write_text(f"- seed={seed}\n- ablation={name}\n")
    if accuracy is None:
        return job_dir
    resolved = {"seed": seed, "experiment_name": name, "ablation": {"name": name, "seeds": planned}}
    (job_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)))
    metrics = {
        "test_acc": accuracy,
        "test_loss": 1.0,
        "best_val_loss": 1.1,
        "best_epoch": epochs - 1,
        "epochs_run": epochs,
        "train_seconds": 60.0 + seed,
        "seed": seed,
        "ablation": name,
        "test_confusion": confusion(accuracy),
        "classes": CLASSES,
        "history": history(epochs, accuracy),
    }
    (job_dir / "metrics.json").write_text(json.dumps(metrics))
    return job_dir


@pytest.fixture(scope="module")
def full_sweep(tmp_path_factory):
    """Seven configurations x three seeds, all finished; 'improved' seed 2 stopped early (3 epochs)."""
    sweep = tmp_path_factory.mktemp("sweep")
    job = 0
    for name, accuracies in ACCURACIES.items():
        for seed, accuracy in enumerate(accuracies):
            write_job(sweep, job, name, seed, accuracy, epochs=3 if (name, seed) == ("improved", 2) else 4)
            job += 1
    return sweep, aggregate(sweep)


def welch_by_hand(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """p-value and 95% CI of mean(a) - mean(b), from the Welch formulas written out."""
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    delta = np.mean(a) - np.mean(b)
    p = 2 * stats.t.sf(abs(delta) / se, df)
    half = stats.t.ppf(0.975, df) * se
    return p, delta - half, delta + half


def test_rows_follow_the_report_order_with_known_means_and_stds(full_sweep):
    _, table = full_sweep
    assert [row.name for row in table.rows] == list(REPORT_TEST_ACC)
    base = table.row("base")
    assert base.n == 3 and base.planned == 3 and base.n_missing == 0
    assert base.acc_mean == pytest.approx(0.61)
    assert base.acc_std == pytest.approx(0.01)
    assert table.row("improved").acc_std == pytest.approx(0.005)
    assert base.report == 0.6092 and base.label == "Base"
    assert base.best_epoch_mean == pytest.approx(3.0)
    assert base.train_seconds_mean == pytest.approx(61.0)


def test_difference_to_improved_has_welch_p_value_and_ci(full_sweep):
    _, table = full_sweep
    assert table.row("improved").difference is None
    diff = table.row("base").difference
    assert diff.delta == pytest.approx(0.61 - 0.665)
    p, low, high = welch_by_hand(ACCURACIES["base"], ACCURACIES["improved"])
    assert diff.p_value == pytest.approx(p, rel=1e-6)
    assert 0.001 < diff.p_value < 0.01  # t = -8.5 with about 2.9 degrees of freedom
    assert diff.ci95 == pytest.approx((low, high), rel=1e-6)
    assert diff.ci95[0] < diff.delta < diff.ci95[1] < 0


def test_markdown_and_csv_report_the_values(full_sweep):
    sweep, table = full_sweep
    markdown = (sweep / "ablation.md").read_text()
    assert "| Base | 61.00 ± 1.00 | 60.92 | -5.50 |" in markdown
    assert "| Improved | 66.50 ± 0.50 | 66.60 | n/a | n/a | n/a | 2.7 | 61 s | 3/3 |" in markdown
    assert "Missing runs: none." in markdown and "Diverged runs: none." in markdown
    assert "summed over each configuration's finished seeds" in markdown
    with (sweep / "ablation.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = {row["configuration"]: row for row in reader}
    assert tuple(reader.fieldnames) == CSV_COLUMNS
    assert list(rows) == list(REPORT_TEST_ACC)
    assert float(rows["no_dropout"]["test_acc_mean"]) == pytest.approx(0.625)
    assert float(rows["no_dropout"]["delta_vs_improved"]) == pytest.approx(-0.04)
    assert float(rows["base"]["delta_p_value"]) == pytest.approx(table.row("base").difference.p_value)
    assert rows["improved"]["delta_p_value"] == "" and rows["base"]["finished_seeds"] == "0;1;2"


def test_figures_are_written_as_png(full_sweep):
    sweep, table = full_sweep
    for name in ("curves.png", "confusion.png"):
        data = (sweep / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    assert set(table.files) == {"csv", "markdown", "curves", "confusion"}


def test_curves_average_the_seeds_that_reached_each_epoch(full_sweep):
    _, table = full_sweep
    epochs, mean, low, high = epoch_curve(table.row("improved").runs, "val_loss")
    assert epochs.tolist() == [1, 2, 3, 4]
    assert mean.tolist() == pytest.approx([2.2, 1.1, 2.2 / 3, 0.55])  # epoch 4: only two seeds
    epochs, mean, low, high = epoch_curve(table.row("improved").runs, "train_acc")
    # Epoch 3: seeds 0 and 1 are at 3/4 of their accuracy, seed 2 (3 epochs) at all of it.
    assert mean[2] == pytest.approx(np.mean([0.66 * 0.75, 0.67 * 0.75, 0.665]))
    assert low[2] == pytest.approx(0.66 * 0.75) and high[2] == pytest.approx(0.665)


def test_confusion_is_summed_over_seeds(full_sweep):
    _, table = full_sweep
    counts = summed_confusion(table.row("base").runs)
    assert counts.shape == (10, 10)
    assert counts[0, 0] == 600 + 610 + 620 and counts[0, 1] == 400 + 390 + 380
    assert counts.sum(axis=1).tolist() == [3000] * 10


def test_missing_runs_are_listed_per_configuration_and_seed(tmp_path):
    write_job(tmp_path, 0, "base", 0, 0.60)
    write_job(tmp_path, 1, "base", 1, None)  # interrupted: only .hydra/config.yaml
    # base seed 2 has no job directory at all
    for seed, accuracy in enumerate([0.66, 0.67, 0.665]):
        write_job(tmp_path, 2 + seed, "improved", seed, accuracy)
    write_job(tmp_path, 5, "no_l2", 0, 0.61, planned=4)
    write_job(tmp_path, 6, "no_l2", 1, 0.62, planned=4)
    table = aggregate(tmp_path)
    base = table.row("base")
    assert (base.n, base.planned, base.n_missing) == (1, 3, 2)
    assert [run.seed for run in base.unfinished] == [1] and base.absent_seeds == (2,)
    assert table.row("improved").n_missing == 0
    no_l2 = table.row("no_l2")
    assert (no_l2.n_missing, no_l2.absent_seeds) == (2, (2,))
    markdown = (tmp_path / "ablation.md").read_text()
    assert (
        "Missing runs: Base: seed 1 (job 1/ unfinished), seed 2 (no job); "
        "No L2 Regularization: seed 2 (no job), 1 more (seed unknown)." in markdown
    )
    assert "| Base | 60.00 ± n/a |" in markdown and "| 1/3 |" in markdown
    with (tmp_path / "ablation.csv").open(newline="") as handle:
        rows = {row["configuration"]: row for row in csv.DictReader(handle)}
    assert rows["base"]["missing_seeds"] == "1;2" and rows["base"]["n_missing"] == "2"


def test_diverged_runs_are_listed_apart_from_missing_ones(tmp_path):
    write_job(tmp_path, 0, "base", 0, 0.60)
    diverged = write_job(tmp_path, 1, "base", 1, None)
    (diverged / "metrics.json").write_text(json.dumps({
        "schema_version": 2, "status": "diverged", "test_acc": None, "seed": 1, "ablation": "base",
        "divergence": {"step": 17, "epoch": 1, "loss": "nan"}, "history": [],
    }))  # fmt: skip
    write_job(tmp_path, 2, "base", 2, None)  # interrupted
    for seed, accuracy in enumerate([0.66, 0.67, 0.665]):
        write_job(tmp_path, 3 + seed, "improved", seed, accuracy)
    table = aggregate(tmp_path)
    base = table.row("base")
    assert (base.n, base.n_missing, table.n_diverged) == (1, 1, 1)
    assert [run.seed for run in base.diverged] == [1] and [run.seed for run in base.unfinished] == [2]
    assert base.acc_mean == pytest.approx(0.60)  # the diverged run is in no mean
    markdown = (tmp_path / "ablation.md").read_text()
    assert "Missing runs: Base: seed 2 (job 2/ unfinished)." in markdown
    assert "Diverged runs (non-finite training loss; not in the means, not missing): " \
           "Base: seed 1 (job 1/, loss nan at step 17)." in markdown  # fmt: skip
    with (tmp_path / "ablation.csv").open(newline="") as handle:
        rows = {row["configuration"]: row for row in csv.DictReader(handle)}
    base_row = rows["base"]
    assert (base_row["n_diverged"], base_row["diverged_seeds"], base_row["missing_seeds"]) == ("1", "1", "2")
    assert rows["improved"]["n_diverged"] == "0"


def test_names_come_from_hydra_config_without_resolving_it(tmp_path):
    write_job(tmp_path, 0, "no_dropout", 5, None)
    runs = collect_runs(tmp_path)
    assert runs.finished == []
    assert [(r.name, r.seed, r.planned_seeds, r.directory.name) for r in runs.unfinished] == [
        ("no_dropout", 5, 3, "0")
    ]


def test_an_explicit_seed_list_beats_ablation_seeds(tmp_path):
    for seed in range(3):  # python train.py -m +ablation=all seed=0,1,2 with ablation.seeds=2
        write_job(tmp_path, seed, "base", seed, ACCURACIES["base"][seed], planned=2)
    write_job(tmp_path, 3, "improved", 0, 0.66, planned=2)
    write_job(tmp_path, 4, "improved", 1, 0.67, planned=2)
    table = build_table(collect_runs(tmp_path), tmp_path)
    assert (table.row("base").planned, table.row("base").n_missing) == (3, 0)
    improved = table.row("improved")
    assert (improved.planned, improved.n_missing, improved.absent_seeds) == (3, 1, (2,))


def test_a_sweep_without_the_ablation_group_is_grouped_by_experiment(tmp_path):
    """train.yaml gives every run ablation.name null and ablation.seeds 3: that is no plan."""
    for seed in range(2):
        job_dir = write_job(tmp_path, seed, "improved", seed, 0.66)
        metrics = json.loads((job_dir / "metrics.json").read_text())
        metrics.update(ablation=None, experiment="seed_improved")
        (job_dir / "metrics.json").write_text(json.dumps(metrics))
        plain_run = f"seed: {seed}\nexperiment_name: seed_improved\nablation:\n  name: null\n  seeds: 3\n"
        (job_dir / "config.yaml").write_text(plain_run)
        (job_dir / ".hydra" / "config.yaml").write_text(plain_run)
    table = build_table(collect_runs(tmp_path), tmp_path)
    assert [(row.name, row.n, row.planned, row.n_missing) for row in table.rows] == [("seed_improved", 2, None, 0)]


def test_unknown_configurations_come_after_the_report_ones_alphabetically(tmp_path):
    for job, name in enumerate(["zeta", "no_l2", "alpha", "base"]):
        write_job(tmp_path, job, name, 0, None)
    table = build_table(collect_runs(tmp_path), tmp_path)
    assert [row.name for row in table.rows] == ["base", "no_l2", "alpha", "zeta"]
    assert table.row("alpha").label == "alpha" and table.row("alpha").report is None


def test_one_seed_per_configuration_shows_n_a(tmp_path):
    write_job(tmp_path, 0, "base", 0, 0.61, planned=1)
    write_job(tmp_path, 1, "improved", 0, 0.67, planned=1)
    table = aggregate(tmp_path)
    base = table.row("base")
    assert base.acc_std is None
    assert base.difference.delta == pytest.approx(-0.06)
    assert base.difference.p_value is None and base.difference.ci95 is None
    markdown = (tmp_path / "ablation.md").read_text()
    assert "| Base | 61.00 ± n/a | 60.92 | -6.00 | n/a | n/a | 3.0 | 60 s | 1/1 |" in markdown
    assert (tmp_path / "confusion.png").read_bytes().startswith(PNG_MAGIC)


def test_no_finished_run_still_writes_the_table_of_missing_runs(tmp_path):
    write_job(tmp_path, 0, "base", 0, None)
    write_job(tmp_path, 1, "improved", 0, None)
    table = aggregate(tmp_path)
    assert [row.n for row in table.rows] == [0, 0]
    markdown = (tmp_path / "ablation.md").read_text()
    assert "Missing runs: Base: seed 0 (job 0/ unfinished), 2 more (seeds unknown)" in markdown
    assert "No run finished" in markdown
    assert (tmp_path / "ablation.csv").read_text().count("\n") == 3
    assert not (tmp_path / "curves.png").exists() and not (tmp_path / "confusion.png").exists()


def test_cli_prints_the_table(tmp_path, capsys):
    write_job(tmp_path, 0, "improved", 0, 0.67)
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| Improved | 67.00 ± n/a | 66.60 |" in out


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_cli_refuses_a_folder_without_jobs_with_one_line(tmp_path, capsys, make):
    sweep = tmp_path / "sweep"
    if make == "empty":
        (sweep / "not-a-job").mkdir(parents=True)
    assert main([str(sweep)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert str(sweep) in lines[0] and "Fix:" in lines[0]


def test_callback_aggregates_at_the_end_of_a_multirun(tmp_path, caplog):
    write_job(tmp_path, 0, "base", 0, 0.61)
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    with caplog.at_level(logging.INFO, logger="cifar_lightning.ablation"):
        AggregateAblation().on_multirun_end(config)
    assert "| Base | 61.00 ± n/a |" in (tmp_path / "ablation.md").read_text()
    assert (tmp_path / "curves.png").read_bytes().startswith(PNG_MAGIC)
    assert str(tmp_path / "ablation.md") in caplog.text


def test_callback_logs_instead_of_raising(tmp_path, caplog):
    missing = tmp_path / "gone"
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(missing)}}})
    with caplog.at_level(logging.ERROR, logger="cifar_lightning.ablation"):
        AggregateAblation().on_multirun_end(config)
    assert "ablation summary not written" in caplog.text and str(missing) in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="cifar_lightning.ablation"):
        AggregateAblation().on_multirun_end(OmegaConf.create({}))  # no hydra.sweep.dir at all
    assert "ablation summary failed" in caplog.text
