"""train.py as a user runs it: bad input stops before training with a one-line reason, a
non-zero exit, and earlier runs untouched."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import QUIET, ROOT

# Downloads through a proxy that refuses every connection: a download fails at once, with or without internet.
NO_NETWORK = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "no_proxy": ""}


def run_train(*overrides: str, log_dir: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train.py", f"paths.log_dir={log_dir}", *QUIET, *overrides],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})},
    )  # fmt: skip


def snapshot(folder: Path) -> dict[str, str]:
    files = (p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture
def log_dir(tmp_path) -> Path:
    """A log folder holding an earlier run, which no failed run may touch."""
    earlier = tmp_path / "logs" / "train" / "runs" / "earlier"
    (earlier / "checkpoints").mkdir(parents=True)
    (earlier / "checkpoints" / "best.ckpt").write_bytes(b"earlier weights")
    (earlier / "metrics.json").write_text('{"test_acc": 0.6}\n')
    return tmp_path / "logs"


def assert_refused(result: subprocess.CompletedProcess, log_dir: Path, before: dict, *expected: str) -> str:
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Epoch" not in result.stdout + result.stderr  # stopped before training
    assert "Traceback" not in result.stderr
    assert snapshot(log_dir / "train" / "runs" / "earlier") == before
    new_runs = [p for p in (log_dir / "train" / "runs").iterdir() if p.name != "earlier"]
    assert not any((p / "checkpoints").exists() for p in new_runs)
    for text in expected:
        assert text in result.stderr, result.stderr
    return result.stderr


SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model.dropout=1.5", ["invalid `model` config", "dropout must be a probability in [0, 1)"]),
        # One CLI start each (about 10 s): the first runs by default, the others with -m slow.
        pytest.param("optim.lr=-1", ["invalid `optim` config", "Invalid learning rate: -1"], marks=SLOW),
        pytest.param("model.batch_norm=some", ["invalid `model` config", "batch_norm must be one of none, first, all"],
                     marks=SLOW),
        pytest.param("loss.label_smoothing=-0.1", ["invalid `loss` config", "label_smoothing must be in [0, 1)"],
                     marks=SLOW),
    ],
)
def test_invalid_value_stops_with_a_one_line_reason(override, expected, data_dir, log_dir):
    before = snapshot(log_dir / "train" / "runs" / "earlier")
    result = run_train(override, f"data.data_dir={data_dir}", log_dir=log_dir)
    stderr = assert_refused(result, log_dir, before, *expected)
    assert result.returncode == 2
    error_lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and all(e in error_lines[0] for e in expected)


@pytest.mark.slow  # one more CLI start: the first error checks run by default
def test_unknown_key_stops(data_dir, log_dir):
    before = snapshot(log_dir / "train" / "runs" / "earlier")
    result = run_train("model.dropot=0.1", f"data.data_dir={data_dir}", log_dir=log_dir)
    assert_refused(result, log_dir, before, "Could not override 'model.dropot'", "Key 'dropot' is not in struct")
    assert result.returncode == 1  # Hydra's own exit status for a bad override, as README says


def test_missing_data_folder_names_the_path_and_the_fix(tmp_path, log_dir):
    before = snapshot(log_dir / "train" / "runs" / "earlier")
    missing = tmp_path / "no-data-here"
    result = run_train(f"data.data_dir={missing}", "data.download=false", log_dir=log_dir)
    assert_refused(result, log_dir, before, str(missing / "cifar-10-batches-py"), "data.data_dir=")
    assert result.returncode == 2


@pytest.mark.slow  # one more CLI start: the first error checks run by default
def test_corrupt_data_file_names_the_path_and_the_fix(data_dir, tmp_path, log_dir):
    before = snapshot(log_dir / "train" / "runs" / "earlier")
    copy = tmp_path / "data"
    shutil.copytree(data_dir / "cifar-10-batches-py", copy / "cifar-10-batches-py")
    corrupt = copy / "cifar-10-batches-py" / "data_batch_1"
    content = bytearray(corrupt.read_bytes())
    content[123456] ^= 0xFF
    corrupt.write_bytes(bytes(content))
    # download=true (the default): the download fails too (no network, whatever the machine has), and the
    # error says so.
    result = run_train(f"data.data_dir={copy}", log_dir=log_dir, env=NO_NETWORK)
    assert_refused(result, log_dir, before, f"{corrupt} is corrupt", "downloading it failed", "data.data_dir=")
    assert result.returncode == 2
    assert corrupt.read_bytes() == bytes(content)  # the user's file is left as it was


def test_a_short_run_succeeds_from_the_command_line(data_dir, tmp_path):
    result = run_train(
        "model.dropout=0.0", "trainer.max_epochs=1", "trainer.limit_train_batches=5", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1", f"data.data_dir={data_dir}", log_dir=tmp_path / "logs",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (run,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    assert (run / "metrics.json").is_file() and (run / "checkpoints" / "best.ckpt").is_file()
    assert "dropout: 0.0" in (run / "config.yaml").read_text()
