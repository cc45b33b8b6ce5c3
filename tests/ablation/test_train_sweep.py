"""`python train.py -m +ablation=...` end to end: seven configurations, aggregation at the end,
and a failed job that does not stop the others."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from cifar_lightning.ablation import aggregate
from tests.conftest import QUIET, ROOT


def run_sweep(*overrides: str, log_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train.py", "-m", f"paths.log_dir={log_dir}", "trainer.fast_dev_run=true", *QUIET, *overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )


def only_sweep_dir(log_dir: Path) -> Path:
    (sweep,) = (log_dir / "train" / "multiruns").iterdir()
    return sweep


@pytest.mark.slow  # seven jobs (~45 s alone); the default run keeps the failed-job sweep below
def test_ablation_all_runs_seven_configurations_and_aggregates(data_dir, tmp_path):
    result = run_sweep("+ablation=all", "ablation.seeds=1", f"data.data_dir={data_dir}", log_dir=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = only_sweep_dir(tmp_path)
    with (sweep / "ablation.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["configuration"] for row in rows] == [
        "base",
        "improved",
        "literal_improved",
        "no_scheduler",
        "no_l2",
        "no_batchnorm",
        "no_dropout",
    ]
    assert all(row["n_finished"] == "1" and row["n_missing"] == "0" for row in rows)
    table = (sweep / "ablation.md").read_text()
    table_lines = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    assert len(table_lines) == 8  # header + seven rows
    assert (sweep / "curves.png").is_file() and (sweep / "confusion.png").is_file()
    # Each job ran its own configuration.
    configs = {p.parent.name: p.read_text() for p in sweep.glob("*/config.yaml")}
    assert len(configs) == 7
    assert sum("batch_norm: none" in text for text in configs.values()) == 2  # base and no_batchnorm
    assert sum("batch_norm: first" in text for text in configs.values()) == 1  # literal_improved
    assert sum("weight_decay: 0.0\n" in text for text in configs.values()) == 2  # base and no_l2


def test_a_failed_job_does_not_stop_the_sweep(data_dir, tmp_path):
    # Job 0 gets a seed train.py refuses; job 1 must still run, and the summary must say what is missing.
    result = run_sweep(
        "+ablation=improved", "ablation.seeds=2", "seed=1.5,0", f"data.data_dir={data_dir}", log_dir=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = only_sweep_dir(tmp_path)
    assert not (sweep / "0" / "metrics.json").exists()
    assert "seed must be an integer" in (sweep / "0" / "train.log").read_text()
    assert (sweep / "1" / "metrics.json").is_file()
    table = aggregate(sweep)
    (row,) = table.rows
    assert (row.name, row.n, row.n_missing) == ("improved", 1, 1)
    assert [run.directory.name for run in row.unfinished] == ["0"]
    assert "job 0/ unfinished" in (sweep / "ablation.md").read_text()
