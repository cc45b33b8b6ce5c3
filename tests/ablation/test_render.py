"""What is written: ablation.md and ablation.csv values, the figures, the curves and confusion matrices
they draw from, and the names of several sweeps and their jobs."""

import csv
import json
import os

import numpy as np
import pytest

from cifar_lightning.ablation import (
    CSV_COLUMNS,
    REPORT_TEST_ACC,
    aggregate,
    build_table,
    collect_runs,
    epoch_curve,
    render_markdown,
    summed_confusion,
)
from tests.ablation.jobs import PNG_MAGIC, write_job, write_seed_sweep


def read_csv(path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        return {row["configuration"]: row for row in reader}


def test_markdown_and_csv_report_the_values(full_sweep):
    sweep, table = full_sweep
    markdown = (sweep / "ablation.md").read_text()
    assert markdown.startswith(f"Test accuracy per configuration over seeds, sweep {os.path.relpath(sweep)}\n")
    assert "| Base | 61.00 ± 1.00 | 60.92 | -5.50 |" in markdown
    assert "| Improved | 66.50 ± 0.50 | 66.60 | n/a | n/a | n/a | 2.7 | 61 s | 3/3 |" in markdown
    assert "Missing runs: none." in markdown and "Diverged runs: none." in markdown
    assert "summed over each configuration's finished seeds" in markdown
    rows = read_csv(sweep / "ablation.csv")
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


def test_missing_and_diverged_runs_are_written_per_seed(tmp_path):
    write_job(tmp_path, 0, "base", 0, 0.60)
    write_job(tmp_path, 1, "base", 1, None)  # interrupted
    diverged = write_job(tmp_path, 2, "improved", 2, None)
    (diverged / "metrics.json").write_text(
        json.dumps(
            {
                "schema_version": 4,
                "status": "diverged",
                "test_acc": None,
                "seed": 2,
                "ablation": "improved",
                "divergence": {"step": 17, "epoch": 1, "loss": "nan"},
                "history": [],
            }
        )
    )
    write_job(tmp_path, 3, "improved", 0, 0.66)
    write_job(tmp_path, 4, "no_l2", 0, 0.61, planned=4)
    aggregate(tmp_path)
    markdown = (tmp_path / "ablation.md").read_text()
    assert (
        "Missing runs: Base: seed 1 (job 1/ unfinished), seed 2 (no job); Improved: seed 1 (no job); "
        "No L2 Regularization: seed 1 (no job), seed 2 (no job), 1 more (seed unknown)." in markdown
    )
    assert (
        "Diverged runs (non-finite training loss; not in the means, not missing): "
        "Improved: seed 2 (job 2/, loss nan at step 17)." in markdown
    )
    rows = read_csv(tmp_path / "ablation.csv")
    assert (rows["base"]["missing_seeds"], rows["base"]["n_missing"]) == ("1;2", "2")
    assert (rows["improved"]["n_diverged"], rows["improved"]["diverged_seeds"]) == ("1", "2")


def test_one_seed_per_configuration_shows_n_a(tmp_path):
    write_job(tmp_path, 0, "base", 0, 0.61, planned=1)
    write_job(tmp_path, 1, "improved", 0, 0.67, planned=1)
    aggregate(tmp_path)
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


def test_several_sweeps_are_named_with_their_jobs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path / "..")
    first, second = write_seed_sweep(tmp_path / "seed0", 0, ["base", "improved"]), tmp_path / "seed1"
    write_job(second, 0, "base", 1, None)
    write_job(second, 1, "improved", 1, 0.67)
    markdown = render_markdown(build_table(collect_runs([first, second])))
    shown = f"{tmp_path.name}/seed0, {tmp_path.name}/seed1"  # relative to the folder the command ran in
    assert markdown.startswith(f"Test accuracy per configuration over seeds, 2 sweeps: {shown}\n")
    assert "Base: seed 1 (job seed1/0/ unfinished), 1 more (seed unknown)" in markdown
