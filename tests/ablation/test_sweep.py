"""Reading sweeps: names and seeds from Hydra's unresolved config, grouping without the ablation group,
several directories read as one study, and the repeats and mix-ups refused with one-paragraph errors."""

import json

import pytest

from cifar_lightning.ablation import SweepError, collect_runs
from cifar_lightning.errors import CifarLightningError
from tests.ablation.jobs import write_job, write_seed_sweep


def test_names_come_from_hydra_config_without_resolving_it(tmp_path):
    write_job(tmp_path, 0, "no_dropout", 5, None)
    runs = collect_runs(tmp_path)
    assert runs.finished == []
    assert [(r.name, r.seed, r.planned_seeds, r.directory.name) for r in runs.unfinished] == [("no_dropout", 5, 3, "0")]
    assert runs.sweep_dirs == (tmp_path,)


def test_a_sweep_without_the_ablation_group_is_named_by_its_experiment(tmp_path):
    """train.yaml gives every run ablation.name null and ablation.seeds 3: that is no plan."""
    job_dir = write_job(tmp_path, 0, "improved", 0, 0.66)
    metrics = json.loads((job_dir / "metrics.json").read_text())
    metrics.update(ablation=None, experiment="report_improved")
    (job_dir / "metrics.json").write_text(json.dumps(metrics))
    plain_run = "seed: 0\nexperiment_name: report_improved\nablation:\n  name: null\n  seeds: 3\n"
    (job_dir / "config.yaml").write_text(plain_run)
    (job_dir / ".hydra" / "config.yaml").write_text(plain_run)
    (run,) = collect_runs(tmp_path).finished
    assert (run.name, run.seed, run.planned_seeds) == ("report_improved", 0, None)


def test_several_sweeps_are_read_as_one(tmp_path):
    sweeps = [write_seed_sweep(tmp_path / f"seed{seed}", seed, ["base", "improved"]) for seed in range(3)]
    runs = collect_runs(sweeps)
    assert runs.sweep_dirs == tuple(sweeps)
    assert sorted((run.name, run.seed) for run in runs.finished) == [
        (name, seed) for name in ("base", "improved") for seed in range(3)
    ]


def test_a_seed_with_results_in_two_sweeps_is_refused_naming_both_jobs(tmp_path):
    first = write_seed_sweep(tmp_path / "a", 0, ["base", "improved"])
    second = write_seed_sweep(tmp_path / "b", 0, ["improved"])
    with pytest.raises(SweepError) as caught:
        collect_runs([first, second])
    message = str(caught.value)
    assert "'improved' with seed 0 has a result in two jobs" in message
    assert str(first / "1") in message and str(second / "0") in message and "Fix:" in message
    assert "\n" not in message and caught.value.exit_code == 2 and isinstance(caught.value, CifarLightningError)


def test_an_unfinished_job_beside_a_finished_one_of_the_same_seed_is_no_repeat(tmp_path):
    """A seed whose job was killed and then run again in a second sweep: one result, so no error."""
    first = tmp_path / "a"
    write_job(first, 0, "base", 1, None)
    second = write_seed_sweep(tmp_path / "b", 1, ["base"])
    runs = collect_runs([first, second])
    assert [(run.name, run.seed) for run in runs.finished] == [("base", 1)] and len(runs.unfinished) == 1


def test_a_diverged_job_beside_a_finished_one_of_the_same_seed_is_no_repeat(tmp_path):
    """`optim.lr=50,0.001`: one job diverges, the other finishes; only the finished one enters the mean."""
    diverged = write_job(tmp_path, 0, "base", 0, None, planned=1)
    (diverged / "metrics.json").write_text(
        json.dumps(
            {
                "schema_version": 4,
                "status": "diverged",
                "test_acc": None,
                "seed": 0,
                "ablation": "base",
                "divergence": {"step": 3, "epoch": 0, "loss": "nan"},
                "history": [],
            }
        )
    )
    write_job(tmp_path, 1, "base", 0, 0.61, planned=1)
    runs = collect_runs(tmp_path)
    assert [run.directory.name for run in runs.finished] == ["1"] and [r.directory.name for r in runs.diverged] == ["0"]


def test_the_same_directory_twice_is_refused(tmp_path):
    sweep = write_seed_sweep(tmp_path / "a", 0, ["base"])
    with pytest.raises(SweepError, match="is given twice"):
        collect_runs([sweep, tmp_path / "a" / ".." / "a"])


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_a_folder_without_jobs_is_refused(tmp_path, make):
    sweep = tmp_path / "sweep"
    if make == "empty":
        (sweep / "not-a-job").mkdir(parents=True)
    with pytest.raises(SweepError, match="Fix:") as caught:
        collect_runs([write_seed_sweep(tmp_path / "good", 0, ["base"]), sweep])
    assert str(sweep) in str(caught.value)
