"""Resume: a run killed part-way and continued with `resume=<run dir>` ends with the numbers of an
uninterrupted run (CPU); a resume that cannot work stops with one error line and leaves the run as it was."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cifar_lightning.errors import ResumeError
from cifar_lightning.resume import _apply_overrides, _parse_overrides, resume
from cifar_lightning.runs import RunDir, read_metrics
from cifar_lightning.training import train
from tests.conftest import QUIET, compose_train
from tests.helpers import ROOT, assert_refused, run_entry_point, snapshot

SAME = ("test_acc", "test_loss", "best_epoch", "best_val_loss", "epochs_run", "history", "test_confusion")


def same_result(resumed: dict, uninterrupted: dict) -> None:
    for key in SAME:
        assert resumed[key] == uninterrupted[key], key


def train_cli(*overrides: str, log_dir: Path) -> subprocess.Popen:
    """train.py started in the background (to be killed part-way); tests.helpers.run_entry_point waits for its end."""
    return subprocess.Popen(
        [sys.executable, "train.py", f"paths.log_dir={log_dir}", *QUIET, *overrides],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def checkpoint_position(path: Path) -> tuple[int, int] | None:
    """(epoch, global_step) of a checkpoint, or None while it does not exist (it is replaced atomically)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, RuntimeError, EOFError):
        return None
    return checkpoint["epoch"], checkpoint["global_step"]


def scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    """The (step, value) points of a TensorBoard tag over all event files of a folder (repeats merged)."""
    events = EventAccumulator(str(folder))
    events.Reload()
    return sorted({(event.step, event.value) for event in events.Scalars(tag)})


class CrashAfterStep(L.Callback):
    """Raises after optimizer step `step` of a fresh fit (a stand-in for a crash); a resumed fit passes."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.ckpt_path is None and trainer.global_step == self.step:
            raise RuntimeError(f"simulated crash after step {self.step}")


# --- the check: a real process, SIGKILLed during epoch 2, resumed from the command line ----------

BASE_RUN = [
    "experiment=report_base",
    "trainer.max_epochs=3",
    "trainer.limit_train_batches=80",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
]


@pytest.mark.slow  # about 2.5 minutes: three real train.py processes; the mid-epoch tests below cover resume by default
def test_run_killed_in_epoch_2_and_resumed_equals_the_uninterrupted_run(data_dir, tmp_path):
    data = f"data.data_dir={data_dir}"
    # The reference runs beside the run that gets killed (CPU runs repeat exactly under any load).
    reference = train_cli(*BASE_RUN, data, log_dir=tmp_path / "reference")
    killed = train_cli(*BASE_RUN, data, log_dir=tmp_path / "logs")
    runs = tmp_path / "logs" / "train" / "runs"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and killed.poll() is None:
        dirs = list(runs.glob("*")) if runs.is_dir() else []
        if dirs and checkpoint_position(RunDir(dirs[0]).last_checkpoint) is not None:
            break
        time.sleep(0.05)
    assert killed.poll() is None, killed.communicate()[1][-3000:]
    (run_dir,) = runs.iterdir()
    run = RunDir(run_dir)
    assert checkpoint_position(run.last_checkpoint)[0] == 0  # the end of epoch 1 (counted from 0)
    time.sleep(1.0)  # into epoch 2: 80 batches take several seconds
    os.kill(killed.pid, signal.SIGKILL)
    killed.communicate()
    assert killed.returncode == -signal.SIGKILL
    epoch, step = checkpoint_position(run.last_checkpoint)
    assert (epoch, step) == (0, 80), "the kill came after epoch 2 had ended: the machine is too slow for 1 s"
    assert not run.metrics.exists()

    result = run_entry_point("train.py", f"resume={run.root}", f"paths.log_dir={tmp_path / 'logs'}", *QUIET, data)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(runs.iterdir()) == [run.root]  # no new run directory
    resumed = read_metrics(run)
    assert resumed["status"] == "completed" and resumed["resumes"][0]["epoch"] == 1
    (hydra_resume,) = run.hydra.glob("resume-*")
    assert "resume=" in (hydra_resume / "overrides.yaml").read_text()
    assert (run.hydra / "config.yaml").is_file()  # the first start's own record is kept
    assert "resuming" in run.log.read_text()
    assert len({path.name.split(".")[-2] for path in run.tensorboard.glob("events.out.tfevents.*")}) == 2  # 2 pids

    out, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err[-3000:]
    (reference_dir,) = (tmp_path / "reference" / "train" / "runs").iterdir()
    uninterrupted = read_metrics(RunDir(reference_dir))
    same_result(resumed, uninterrupted)
    assert [row["epoch"] for row in resumed["history"]] == [1, 2, 3]
    # One TensorBoard folder with the uninterrupted run's curves: the same points at the same steps.
    for tag in ("train_loss", "val_loss", "lr-SGD/weights"):
        assert scalars(run.tensorboard, tag) == scalars(RunDir(reference_dir).tensorboard, tag), tag


# --- a mid-epoch step checkpoint, dropout + batch norm + augmentation, EMA with a per-step schedule ---

SETUPS = {
    "improved_augmented": [
        "model.batch_norm=all",
        "model.dropout=0.2",
        "data.crop_padding=4",
        "data.flip=true",
        "optim.lr=0.01",
        "seed=5",
    ],
    "ema_warmup_alternating": [
        "averaging=ema",
        "averaging.decay=0.9",
        "scheduler=warmup_cosine",
        "optim.lr=0.05",
        "data.flip=alternating",
        "data.translate=2",
        "model.dropout=0.3",
    ],
}
SHORT = [
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=20",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "callbacks.model_checkpoint.every_n_train_steps=7",
]


@pytest.mark.parametrize("setup", SETUPS)
def test_resume_from_a_mid_epoch_step_checkpoint_equals_the_uninterrupted_run(setup, make_cfg, tmp_path):
    overrides = [*SHORT, *SETUPS[setup]]
    uninterrupted = train(make_cfg(*overrides, output_dir=tmp_path / "uninterrupted"))
    crash = ["+callbacks.crash._target_=tests.test_resume.CrashAfterStep", "+callbacks.crash.step=31"]
    run = RunDir(tmp_path / "crashed")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(make_cfg(*overrides, *crash, output_dir=run.root))
    # last.ckpt was written after step 28: 8 of epoch 2's 20 batches.
    checkpoint = torch.load(run.last_checkpoint, weights_only=True)
    assert (checkpoint["epoch"], checkpoint["global_step"]) == (1, 28)
    assert "unfinished_epoch_metrics" in checkpoint
    assert checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "consumed": 8}]
    if setup == "ema_warmup_alternating":  # a copy of the run, resumed in its new place
        moved = RunDir(tmp_path / "moved")
        shutil.copytree(run.root, moved.root)
        shutil.rmtree(run.root)
        run = moved
    resumed = resume(run.root)
    same_result(resumed, uninterrupted)
    assert resumed["resumes"] == [{"epoch": 2, "global_step": 28, "overrides": []}]
    assert resumed["best_checkpoint"] == str(run.best_checkpoint.resolve())


# --- resumes that cannot work ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, data_dir) -> RunDir:
    """A run of 2 planned epochs that crashed in epoch 2: resumable from the end of epoch 1."""
    root = tmp_path_factory.mktemp("short") / "run"
    overrides = [
        f"data.data_dir={data_dir}",
        *QUIET,
        "experiment=report_base",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "+callbacks.crash._target_=tests.test_resume.CrashAfterStep",
        "+callbacks.crash.step=4",
    ]
    with pytest.raises(RuntimeError):
        train(compose_train(overrides, root))
    return RunDir(root)


def refused(run: RunDir, *overrides: str) -> str:
    before = snapshot(run.root)
    with pytest.raises(ResumeError) as info:
        resume(run.root, overrides)
    assert snapshot(run.root) == before
    message = str(info.value)
    assert "\n" not in message and "Fix:" in message
    return message


def test_overrides_that_could_change_the_result_are_refused(short_run):
    message = refused(short_run, "optim.lr=0.1", "trainer.enable_progress_bar=false")
    assert f"{short_run.root} with optim.lr=0.1:" in message and "enable_progress_bar=false" not in message
    assert "experiment=report_improved" in refused(short_run, "experiment=report_improved")
    assert "seed=1,2" in refused(short_run, "seed=1,2")
    assert "can only extend it" in refused(short_run, "trainer.max_epochs=1")


def test_more_epochs_are_refused_when_the_schedule_spans_the_planned_steps(tmp_path):
    run = RunDir(tmp_path)
    schedule = {"_target_": "cifar_lightning.schedules.WarmupSchedule"}
    config = OmegaConf.create({"trainer": {"max_epochs": 4}, "scheduler": schedule})
    with pytest.raises(ResumeError, match="per-step learning-rate schedule"):
        _apply_overrides(run, config, _parse_overrides(run, ["trainer.max_epochs=6"]))
    assert _apply_overrides(run, config, _parse_overrides(run, ["trainer.max_epochs=4", "data.data_dir=/x"])) == [
        "trainer.max_epochs=4",
        "data.data_dir=/x",
    ]
    assert config.data.data_dir == "/x"


def test_missing_directory_or_checkpoint_is_refused(tmp_path, short_run):
    with pytest.raises(ResumeError, match="no such directory"):
        resume(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResumeError, match="has no checkpoints/last.ckpt"):
        resume(tmp_path / "empty")
    with pytest.raises(ResumeError, match="writes into the run it continues"):
        resume(short_run.root, output_dir=tmp_path / "elsewhere")


def test_a_corrupt_last_checkpoint_stops_the_cli_with_one_line_and_exit_2(short_run, tmp_path):
    copy = RunDir(tmp_path / "copy")
    shutil.copytree(short_run.root, copy.root, symlinks=True)
    content = copy.last_checkpoint.read_bytes()
    copy.last_checkpoint.write_bytes(content[: len(content) // 2])
    before = snapshot(copy.root)
    result = run_entry_point("train.py", f"resume={copy.root}", f"paths.log_dir={tmp_path / 'logs'}", *QUIET)
    assert_refused(result, "truncated or corrupt")
    after = snapshot(copy.root)
    # The run's own files are as they were; only Hydra's record of the attempt and the log were added.
    assert {k: after[k] for k in before if k != "train.log"} == {k: v for k, v in before.items() if k != "train.log"}
    assert all(k in before or k.startswith(".hydra/resume-") or k == "train.log" for k in after)
    assert not copy.metrics.exists()
