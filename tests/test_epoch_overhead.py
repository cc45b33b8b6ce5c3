"""benchmarks/epoch_overhead.py shortened: both models go through train.py's build for two epochs of two batches,
and the report has their rows, whose parts add up to the epoch: the report CNN validates and checkpoints every
epoch (both cost time), fast94_cpu has no validation split (its validation reads 0)."""

import subprocess
import sys

from tests.conftest import ROOT

COLUMNS = ["model", "epoch", "train batches", "epoch s", "training s"]
COLUMNS += [f"{part} {unit}" for part in ("validation", "checkpointing", "logging", "other") for unit in ("s", "%")]
COLUMNS += ["overhead %"]


def first_table(text: str) -> list[dict[str, str]]:
    """The rows of the first Markdown table in `text`, as {column: cell}."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[start:end]]
    assert cells[0] == COLUMNS, cells[0]
    return [dict(zip(COLUMNS, row)) for row in cells[2:]]


def test_epoch_overhead_times_validation_and_checkpoints_of_both_models(data_dir, tmp_path):
    out, runs = tmp_path / "overhead.md", tmp_path / "runs"
    command = [sys.executable, "benchmarks/epoch_overhead.py", "--data-dir", str(data_dir), "--epochs", "2"]
    command += ["--limit-train-batches", "2", "--output-dir", str(runs), "--out", str(out)]
    command += ["--", "trainer.limit_val_batches=1", "data.batch_size=128"]  # small steps: a quick check
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = out.read_text()
    assert report in result.stdout
    rows = {row["model"]: row for row in first_table(report)}
    assert list(rows) == ["report_improved", "fast94_cpu"]
    for row in rows.values():
        assert row["epoch"] == "2/2" and row["train batches"] == "2"
        seconds = [float(row[f"{part} s"]) for part in ("training", "validation", "checkpointing", "logging", "other")]
        assert all(value >= 0 for value in seconds) and abs(sum(seconds) - float(row["epoch s"])) < 0.01
    report_cnn, fast94_cpu = rows["report_improved"], rows["fast94_cpu"]
    for part in ("validation", "checkpointing", "logging"):
        assert float(report_cnn[f"{part} s"]) > 0 and float(report_cnn[f"{part} %"]) > 0, part
    assert float(fast94_cpu["validation s"]) == 0 and float(fast94_cpu["validation %"]) == 0
    assert (runs / "report_improved" / "checkpoints" / "last.ckpt").is_file()  # the real callbacks wrote them
    assert (runs / "report_improved" / "checkpoints" / "best.ckpt").is_file()
    assert "\nMachine: " in report and "Command: `python benchmarks/epoch_overhead.py --data-dir" in report
