"""benchmarks/commit_epoch_time.py: epoch seconds read from train.log's epoch lines (the first epoch left out), and
a real side-by-side run of two trees."""

import subprocess
import sys

import pytest

from benchmarks.commit_epoch_time import epoch_seconds, figures
from tests.conftest import ROOT

LOG = """[2026-12-07 09:18:11,196][cifar_lightning.callbacks][INFO] - epoch 1/3: val_acc=0.47 val_loss=1.665
[2026-12-07 09:18:20,000][cifar_lightning.data][INFO] - something else
[2026-12-07 09:18:35,696][cifar_lightning.callbacks][INFO] - epoch 2/3: val_acc=0.64 val_loss=1.061
[2026-12-07 09:19:00,946][cifar_lightning.callbacks][INFO] - epoch 3/3: val_acc=0.66 val_loss=1.001
"""


def test_epoch_seconds_are_the_gaps_between_epoch_lines():
    assert epoch_seconds(LOG) == [24.5, 25.25]  # epoch 1 (start-up) is not timed
    assert figures(LOG.splitlines()[-1].split(" - ")[1]) == "val_acc=0.66 val_loss=1.001"


@pytest.mark.slow  # four tiny train.py runs (about 2 minutes)
def test_two_trees_run_alternately_and_the_same_code_computes_the_same(data_dir):
    tiny = ["trainer.limit_train_batches=3", "trainer.limit_val_batches=1", "data.val_fraction=0.02"]
    command = [sys.executable, "benchmarks/commit_epoch_time.py", "--data-dir", str(data_dir), "--commit", "HEAD"]
    result = subprocess.run(
        [*command, "--epochs", "2", "--repeats", "2", *tiny], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rounds = [line for line in result.stderr.splitlines() if line.startswith("round ")]
    assert [line.split(":")[0] for line in rounds] == [
        "round 1, here",
        "round 1, HEAD",
        "round 2, here",
        "round 2, HEAD",
    ]
    rows = {line.split("|")[1].strip(): line for line in result.stdout.splitlines() if line.startswith("| ")}
    assert rows["here"].split("|")[4] == rows["HEAD"].split("|")[4]  # same seed, same code: same validation figures
    assert "here / HEAD: " in result.stdout
