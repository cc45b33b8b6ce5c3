"""benchmarks/fast94.py end to end on the CPU, shortened: both sides run, print their figures,
and (32-bit on a CPU, same seed, same batches) reach exactly the same accuracies."""

import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow  # about a minute of training on 2 CPU cores
def test_fast94_benchmark_runs_both_sides_and_they_agree(data_dir, tmp_path):
    result = subprocess.run(
        [sys.executable, "benchmarks/fast94.py", "--data-dir", str(data_dir), "--seeds", "1", "--epochs", "2",
         "--train-batches", "2", "--bare", "yes", "--tta", "0", "--target", "0.05", "--experiment", "fast94_cpu",
         "--output-dir", str(tmp_path / "out"), "--", "data.batch_size=128"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
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
    assert (tmp_path / "out" / "seed0" / "checkpoints" / "last.ckpt").is_file()  # the framework side checkpoints
