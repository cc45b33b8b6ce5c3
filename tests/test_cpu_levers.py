"""benchmarks/cpu_levers.py end to end on the CPU, shortened: the variants are timed alternately through the
Trainer, each with its own levers (the thread count set for one run and restored after it), scored on the
validation split, and tabled; bad arguments are refused before any work."""

import json
import re

import pytest

from tests.helpers import run_entry_point

HEADER = "| variant | images/s | x fp32 | first step (s) | val acc. (%) |"


def run_levers(data_dir, tmp_path, *args: str, timeout: int = 900):
    result = run_entry_point(
        "benchmarks/cpu_levers.py",
        "--data-dir",
        str(data_dir),
        "--steps",
        "2",
        "--warmup",
        "1",
        "--repeats",
        "2",
        "--accuracy",
        "--accuracy-epochs",
        "1",
        "--accuracy-batches",
        "1",
        "--output-dir",
        str(tmp_path / "out"),
        "--out",
        str(tmp_path / "levers.md"),
        *args,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result, (tmp_path / "levers.md").read_text(), json.loads((tmp_path / "out" / "runs.json").read_text())


def table_rows(report: str, model: str) -> dict[str, list[str]]:
    """The rows of one model's table, by variant, below the expected header."""
    section = report.split(f"### {model}: ")[1]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    assert lines[0] == HEADER
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])}


def test_cpu_levers_alternates_the_variants_and_tables_them_with_validation_accuracy(data_dir, tmp_path):
    result, report, record = run_levers(
        data_dir, tmp_path, "--models", "report-cnn", "--variants", "fp32", "bf16-1-thread"
    )
    (model,) = record["models"]
    order = [(run["round"], run["variant"]) for run in model["runs"]]
    assert order == [(1, "fp32"), (1, "bf16-1-thread"), (2, "fp32"), (2, "bf16-1-thread")]  # round-robin
    progress = re.findall(r"report-cnn round (\d)/2: (\S+) \d+ images/s", result.stderr)
    assert [(int(r), name) for r, name in progress] == order
    threads = {(run["round"], run["variant"]): run["threads"] for run in model["runs"]}
    default = int(re.search(r"(\d+) torch threads", record["machine"]).group(1))
    assert threads[1, "bf16-1-thread"] == 1 and threads[1, "fp32"] == threads[2, "fp32"] == default  # restored
    assert all(run["steps"] == 2 and run["batch"] == 128 and run["images_per_s"] > 0 for run in model["runs"])
    assert set(model["val_acc"]) == {"fp32", "bf16-1-thread"}

    rows = table_rows(report, "report-cnn")
    assert list(rows) == ["fp32", "bf16-1-thread"]
    assert rows["fp32"][1] == "1.00" and float(rows["bf16-1-thread"][1]) > 0
    for name, (images, _, first_step, val_acc) in rows.items():
        assert float(images) > 0 and float(first_step) > 0
        assert float(val_acc) == pytest.approx(100 * model["val_acc"][name], abs=0.005)
        assert 0 <= float(val_acc) <= 100
    assert "experiment=report_improved, batch 128" in report
    assert "accuracy after 1 epochs from seed 0 (at most 1 training batches per epoch, 1 validation batches)" in report
    assert re.search(r"^Machine: .+ CPUs, \d+ torch threads; torch \S+, lightning \S+", report, flags=re.M)
    assert "Command: `python benchmarks/cpu_levers.py --data-dir" in report
    assert report in result.stdout


@pytest.mark.slow  # FastNet at batch 1024 and an inductor compile: minutes on 2 CPU cores
def test_cpu_levers_times_fastnet_compiled_and_reports_its_first_step(data_dir, tmp_path):
    args = ("--models", "fastnet", "--variants", "fp32", "fp32-compiled")
    _, report, record = run_levers(data_dir, tmp_path, *args, timeout=1800)
    rows = table_rows(report, "fastnet")
    assert list(rows) == ["fp32", "fp32-compiled"] and "experiment=fast94_cpu, batch 1024" in report
    runs = record["models"][0]["runs"]
    assert [run["variant"] for run in runs] == ["fp32", "fp32-compiled"] * 2
    assert float(rows["fp32-compiled"][2]) > float(rows["fp32"][2])  # the compile is in the first step


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--variants", "fp64"], "invalid choice: 'fp64'"),
        (["--steps", "0"], "must be at least 1"),
    ],
)
def test_cpu_levers_refuses_unknown_variants_and_empty_runs(args, message, tmp_path):
    result = run_entry_point("benchmarks/cpu_levers.py", *args, "--output-dir", str(tmp_path / "out"), timeout=300)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()
