"""The table's rows: report order, means, the difference to Improved, missing and diverged runs, plans,
and one table of several one-seed sweeps."""

import json

import pytest

from cifar_lightning.ablation import REPORT_TEST_ACC, build_table, collect_runs
from tests.ablation.jobs import ACCURACIES, write_job, write_seed_sweep


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


def test_difference_to_improved(full_sweep):
    _, table = full_sweep
    assert table.row("improved").difference is None
    diff = table.row("base").difference
    assert diff.delta == pytest.approx(0.61 - 0.665)
    assert 0.001 < diff.p_value < 0.01  # t = -8.5 with about 2.9 degrees of freedom
    assert diff.ci95[0] < diff.delta < diff.ci95[1] < 0


def test_missing_runs_are_listed_per_configuration_and_seed(tmp_path):
    write_job(tmp_path, 0, "base", 0, 0.60)
    write_job(tmp_path, 1, "base", 1, None)  # interrupted: only .hydra/config.yaml
    # base seed 2 has no job directory at all
    for seed, accuracy in enumerate([0.66, 0.67, 0.665]):
        write_job(tmp_path, 2 + seed, "improved", seed, accuracy)
    write_job(tmp_path, 5, "no_l2", 0, 0.61, planned=4)
    write_job(tmp_path, 6, "no_l2", 1, 0.62, planned=4)
    table = build_table(collect_runs(tmp_path))
    base = table.row("base")
    assert (base.n, base.planned, base.n_missing) == (1, 3, 2)
    assert [run.seed for run in base.unfinished] == [1] and base.absent_seeds == (2,)
    assert table.row("improved").n_missing == 0
    no_l2 = table.row("no_l2")
    assert (no_l2.n_missing, no_l2.absent_seeds) == (2, (2,))


def test_diverged_runs_are_counted_apart_from_missing_ones(tmp_path):
    write_job(tmp_path, 0, "base", 0, 0.60)
    diverged = write_job(tmp_path, 1, "base", 1, None)
    (diverged / "metrics.json").write_text(
        json.dumps(
            {
                "schema_version": 4,
                "status": "diverged",
                "test_acc": None,
                "seed": 1,
                "ablation": "base",
                "divergence": {"step": 17, "epoch": 1, "loss": "nan"},
                "history": [],
            }
        )
    )
    write_job(tmp_path, 2, "base", 2, None)  # interrupted
    for seed, accuracy in enumerate([0.66, 0.67, 0.665]):
        write_job(tmp_path, 3 + seed, "improved", seed, accuracy)
    table = build_table(collect_runs(tmp_path))
    base = table.row("base")
    assert (base.n, base.n_missing, table.n_diverged) == (1, 1, 1)
    assert [run.seed for run in base.diverged] == [1] and [run.seed for run in base.unfinished] == [2]
    assert base.acc_mean == pytest.approx(0.60)  # the diverged run is in no mean


def test_an_explicit_seed_list_beats_ablation_seeds(tmp_path):
    for seed in range(3):  # python train.py -m +ablation=all seed=0,1,2 with ablation.seeds=2
        write_job(tmp_path, seed, "base", seed, ACCURACIES["base"][seed], planned=2)
    write_job(tmp_path, 3, "improved", 0, 0.66, planned=2)
    write_job(tmp_path, 4, "improved", 1, 0.67, planned=2)
    table = build_table(collect_runs(tmp_path))
    assert (table.row("base").planned, table.row("base").n_missing) == (3, 0)
    improved = table.row("improved")
    assert (improved.planned, improved.n_missing, improved.absent_seeds) == (3, 1, (2,))


def test_a_sweep_without_the_ablation_group_has_no_plan(tmp_path):
    for seed in range(2):
        job_dir = write_job(tmp_path, seed, "improved", seed, 0.66)
        metrics = json.loads((job_dir / "metrics.json").read_text())
        metrics.update(ablation=None, experiment="report_improved")
        (job_dir / "metrics.json").write_text(json.dumps(metrics))
        plain_run = f"seed: {seed}\nexperiment_name: report_improved\nablation:\n  name: null\n  seeds: 3\n"
        (job_dir / "config.yaml").write_text(plain_run)
        (job_dir / ".hydra" / "config.yaml").write_text(plain_run)
    table = build_table(collect_runs(tmp_path))
    assert [(row.name, row.n, row.planned, row.n_missing) for row in table.rows] == [("report_improved", 2, None, 0)]


def test_unknown_configurations_come_after_the_report_ones_alphabetically(tmp_path):
    for job, name in enumerate(["zeta", "no_l2", "alpha", "base"]):
        write_job(tmp_path, job, name, 0, None)
    table = build_table(collect_runs(tmp_path))
    assert [row.name for row in table.rows] == ["base", "no_l2", "alpha", "zeta"]
    assert table.row("alpha").label == "alpha" and table.row("alpha").report is None


def test_three_one_seed_sweeps_make_the_table_of_one_three_seed_sweep(tmp_path, full_sweep):
    """The report's Table 1 run in parts (seed=0, then 1, then 2) gives the numbers of one sweep of all."""
    _, whole = full_sweep
    parts = [write_seed_sweep(tmp_path / f"seed{seed}", seed) for seed in range(3)]
    table = build_table(collect_runs(parts))
    assert table.sweep_dirs == tuple(parts)
    for row in table.rows:
        same = whole.row(row.name)
        assert (row.n, row.planned, row.n_missing) == (3, 3, 0)
        assert row.acc_mean == pytest.approx(same.acc_mean) and row.acc_std == pytest.approx(same.acc_std)
    assert table.row("base").difference.p_value == pytest.approx(whole.row("base").difference.p_value)


def test_a_seed_missing_from_one_part_is_named(tmp_path):
    parts = [write_seed_sweep(tmp_path / "seed0", 0), write_seed_sweep(tmp_path / "seed1", 1, ["base", "improved"])]
    table = build_table(collect_runs(parts))
    assert (table.row("base").n, table.row("base").n_missing) == (2, 1)  # planned 3: ablation.seeds
    assert table.row("no_l2").absent_seeds == (1,) and table.row("no_l2").n_missing == 2
