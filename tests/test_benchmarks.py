"""benchmarks/fast94.py end to end on the CPU, shortened: both sides run, print their figures,
and (32-bit on a CPU, same seed, same batches) reach exactly the same accuracies; benchmarks/gpu_suite.py
refuses to measure without a GPU, and its --smoke run goes through every part."""

import re
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT


@pytest.mark.slow  # about a minute of training on 2 CPU cores
def test_fast94_benchmark_runs_both_sides_and_they_agree(data_dir, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/fast94.py",
            "--data-dir",
            str(data_dir),
            "--seeds",
            "1",
            "--epochs",
            "2",
            "--train-batches",
            "2",
            "--bare",
            "yes",
            "--tta",
            "0",
            "--target",
            "0.05",
            "--experiment",
            "fast94_cpu",
            "--output-dir",
            str(tmp_path / "out"),
            "--",
            "data.batch_size=128",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    framework, bare = out.split("bare PyTorch loop, same recipe:")
    assert "framework (train.py's build + Trainer, experiment=fast94_cpu)" in framework
    pattern = r"seed 0: test acc (\S+), with TTA (\S+), train (\S+) s, time to 5%: (.+)"
    (framework_run,), (bare_run,) = re.findall(pattern, framework), re.findall(pattern, bare)
    assert framework_run[:2] == bare_run[:2]  # the same recipe: the same accuracies
    assert 0.05 <= float(framework_run[0]) <= 1.0
    curves = re.findall(r"accuracy after each epoch \(training minutes, test acc\): (.+)", out)
    assert len(curves) == 2 and curves[0].split()[2::3] == curves[1].split()[2::3]
    assert len(curves[0].split()) == 6  # two epochs: "<minutes> min <accuracy>" each
    assert re.search(r"framework/bare time ratio: \d+\.\d+", out)
    assert not (tmp_path / "out" / "seed0" / "checkpoints").exists()  # fast94: no checkpoint inside the timed fit


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_gpu_suite_refuses_without_a_gpu_and_writes_nothing(tmp_path):
    out = tmp_path / "gpu.md"
    result = subprocess.run(
        [sys.executable, "benchmarks/gpu_suite.py", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    (message,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]  # one paragraph
    assert message.startswith("error: benchmarks/gpu_suite.py measures GPU figures") and "Fix:" in message
    assert not out.exists()


@pytest.mark.slow  # a few steps of every part on the CPU: several minutes on 2 cores
def test_gpu_suite_smoke_run_goes_through_every_part(data_dir, tmp_path):
    out = tmp_path / "gpu.md"
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/gpu_suite.py",
            "--smoke",
            "--data-dir",
            str(data_dir),
            "--seeds",
            "2",
            "--compile-seeds",
            "1",
            "--resnet-steps",
            "1",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = out.read_text()
    assert report.startswith("# GPU figures (benchmarks/gpu_suite.py) — SMOKE RUN, not a measurement")
    titles = re.findall(r"^## (.+)$", report, flags=re.M)
    assert [title.split(" ")[0] for title in titles] == ["1.", "2.", "3.", "4.", "5.", "Suite"]
    assert "Failed" not in report and "Framework/bare train-time ratio: **" in report
    assert re.search(r"\| test acc\., TTA \(%\) \| \d+\.\d\d \| \d+\.\d\d \| \d+\.\d\d \|", report)


def test_gpu_suite_smoke_never_writes_the_committed_report():
    result = subprocess.run(
        [sys.executable, "benchmarks/gpu_suite.py", "--smoke"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2 and "--smoke writes no measured figures" in result.stderr


@pytest.mark.slow  # a two-step candidate and its validation scores on 2 CPU cores
def test_cpu_recipe_search_scores_candidates_on_the_validation_split_only(data_dir, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/cpu_recipe_search.py",
            "--data-dir",
            str(data_dir),
            "--only",
            "--candidate",
            "tiny",
            "model.widths=[8,8,8]",
            "trainer.max_epochs=2",
            "trainer.limit_train_batches=2",
            "--val-fraction",
            "0.02",
            "--output-dir",
            str(tmp_path / "runs"),
            "--out",
            str(tmp_path / "table.md"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"tiny: \d+\.\d min of training \(\d+\.\d projected on 50,000 images\)", result.stdout)
    assert len(re.findall(r"\d+\.\d min 0\.\d{4}", result.stdout)) == 2  # one point per epoch
    (row,) = [line for line in (tmp_path / "table.md").read_text().splitlines() if line.startswith("| tiny")]
    assert "model.widths=[8,8,8]" in row
    assert "test" not in result.stdout.lower()  # the search never looks at the test set


def test_cpu_recipe_search_refuses_unknown_candidates_and_no_validation_split():
    for args, message in (
        (["--only", "w99x1"], "unknown candidates w99x1"),
        (["--val-fraction", "0"], "--val-fraction must be in (0, 1)"),
    ):
        result = subprocess.run(
            [sys.executable, "benchmarks/cpu_recipe_search.py", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 2 and message in result.stderr


def test_gpu_divergence_check_passes_its_cpu_control():
    """benchmarks/gpu_divergence_check.py (run on a lent GPU) imports and runs here too: its CPU control cases must
    stop at the poisoned step itself, with only finite checkpoints left."""
    result = subprocess.run(
        [sys.executable, "benchmarks/gpu_divergence_check.py"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("cpu ")]
    assert len(lines) == 2 and all(line.endswith(": ok") and "stopped at step 17" in line for line in lines), lines


def test_train_throughput_compares_both_recipes_with_a_bare_loop(data_dir, tmp_path):
    """benchmarks/train_throughput.py shortened: per recipe (the report CNN and fast94_cpu) two runs of each side, and
    the framework/bare time ratios of each side's best run and of the medians, as the runs' figures give them."""
    command = [sys.executable, "benchmarks/train_throughput.py", "--data-dir", str(data_dir), "--steps", "2"]
    command += ["--warmup", "1", "--repeats", "2", "--accelerator", "cpu", "--output-dir", str(tmp_path)]
    result = subprocess.run(
        [*command, "--", "data.batch_size=64"], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for recipe in ("report_improved", "fast94_cpu"):
        assert f"{recipe}: batch 64; 2 timed steps after 1 warm-up steps" in out
        runs = re.findall(rf"run \d, {recipe}: bare (\d+) img/s, framework (\d+) img/s", out)
        bare, framework = ([float(run[side]) for run in runs] for side in (0, 1))
        best, median = re.search(
            rf"{recipe}: framework/bare time ratio: (\S+) of the best runs, (\S+) of the medians", out
        ).groups()
        assert len(runs) == 2 and float(best) == pytest.approx(max(bare) / max(framework), abs=0.02)
        assert float(median) == pytest.approx(sum(bare) / sum(framework), abs=0.02)


def test_train_throughput_refuses_steps_beyond_one_epoch(data_dir, tmp_path):
    """The warm-up and timed steps must fit in one epoch (fast94_cpu's is 48 batches of 1024): said before timing."""
    command = [sys.executable, "benchmarks/train_throughput.py", "--data-dir", str(data_dir), "--recipes", "fast94_cpu"]
    command += ["--steps", "48", "--warmup", "1", "--accelerator", "cpu", "--output-dir", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1
    assert "error: 49 warm-up and timed steps do not fit in one epoch of 48 batches" in result.stderr
