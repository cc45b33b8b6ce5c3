"""Per-epoch overhead of train.py's fit: what validation, checkpointing and logging cost against an epoch.

For each model (by default the report's CNN, experiment=report_improved, and fast94_cpu), train.py's own config
(conf/train.yaml composed by Hydra) is built by cifar_lightning.training.build with all its callbacks (RunCheckpoint
writing best.ckpt and last.ckpt with the RNG and loader state, early stopping, the LR monitor, the progress bar, ...)
and its loggers (TensorBoard), and fitted for --epochs epochs. A callback times each epoch from its start to the next
epoch's start (the last one: to the end of training), so epoch-end hooks and checkpoint writes count, and the epoch
is split into exclusive parts (time inside a nested part counts for that part only):

- training: Lightning's batch loop (fetch, augment, forward, backward, optimizer step, per-step hooks)
- validation: the validation loop
- checkpointing: the checkpoint callbacks' hooks (best.ckpt, last.ckpt, their state and file writes)
- logging: the loggers' calls (metrics, hyperparameters, flushes to disk, also those inside checkpoint hooks)
- other: the rest (other callbacks' epoch hooks, epoch schedulers, the loader's per-epoch set-up)

Reported per model: the median epoch after the first (the first pays for warm-up), by epoch time, and every epoch.
fast94_cpu trains on all 50,000 images (data.val_fraction=0) with no checkpoint inside its fit: its validation and
checkpointing read 0. On a GPU the device is synchronized at epoch boundaries and around the per-epoch parts.

    python benchmarks/epoch_overhead.py --data-dir ../shared/data [--epochs 3] [--out FILE] [-- trainer.foo=bar ...]
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import shlex
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig, OmegaConf, open_dict  # noqa: E402

from cifar_lightning.tables import markdown_table  # noqa: E402
from cifar_lightning.training import build  # noqa: E402

MODELS = ["report_improved", "fast94_cpu"]
PARTS = ["validation", "checkpointing", "logging", "other"]


class Stopwatch:
    """Exclusive wall time per named part: a part's time inside another part is taken out of the outer one, so the
    parts never count a second twice and the epoch's remainder is well defined."""

    def __init__(self, synchronize) -> None:
        self.synchronize = synchronize
        self.totals: dict[str, float] = defaultdict(float)
        self._nested: list[float] = []  # per open part: the time of the parts inside it so far

    @contextmanager
    def part(self, name: str, synced: bool = False):
        if synced:
            self.synchronize()
        start = time.perf_counter()
        self._nested.append(0.0)
        try:
            yield
        finally:
            if synced:
                self.synchronize()
            elapsed = time.perf_counter() - start
            self.totals[name] += elapsed - self._nested.pop()
            if self._nested:
                self._nested[-1] += elapsed

    def wrap(self, owner: Any, method: str, name: str, synced: bool = False) -> None:
        """Time every call of owner.method as part `name` (Lightning calls hooks and loops by attribute)."""
        original = getattr(owner, method)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            with self.part(name, synced):
                return original(*args, **kwargs)

        setattr(owner, method, timed)

    def reset(self) -> None:
        self.totals.clear()


class EpochClock(L.Callback):
    """Each epoch's wall time, from its start to the next epoch's start (the last: to the end of training), with
    the stopwatch's parts of that span. Put first among the callbacks, so that the others' hooks fall inside."""

    def __init__(self, stopwatch: Stopwatch) -> None:
        self.stopwatch = stopwatch
        self.epochs: list[dict[str, float]] = []
        self._start: float | None = None

    def _close_epoch(self) -> None:
        self.stopwatch.synchronize()
        now = time.perf_counter()
        if self._start is not None:
            self.epochs.append({"seconds": now - self._start, **self.stopwatch.totals})
        self.stopwatch.reset()  # what ran before the first epoch (the sanity check) is not counted
        self._start = now

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close_epoch()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close_epoch()
        self._start = None


def instrument(trainer: L.Trainer, stopwatch: Stopwatch) -> None:
    """Attach the stopwatch to the batch loop, the validation loop, the checkpoint callbacks and the loggers."""
    epoch_loop = trainer.fit_loop.epoch_loop
    stopwatch.wrap(epoch_loop, "run", "training", synced=True)
    stopwatch.wrap(epoch_loop.val_loop, "run", "validation", synced=True)
    for callback in trainer.checkpoint_callbacks:
        stopwatch.wrap(callback, "on_train_batch_end", "checkpointing")  # every step: no device sync
        for hook in ("on_train_epoch_end", "on_validation_end"):
            stopwatch.wrap(callback, hook, "checkpointing", synced=True)
    for logger in trainer.loggers:
        for method in ("log_metrics", "log_hyperparams", "save", "after_save_checkpoint", "finalize"):
            stopwatch.wrap(logger, method, "logging")
        experiment = logger.experiment  # created now rather than at the first log (as train.py's log_hyperparams)
        if hasattr(experiment, "flush"):  # RunCheckpoint flushes the writer before each last.ckpt
            stopwatch.wrap(experiment, "flush", "logging")


def compose_config(model: str, args: argparse.Namespace, output_dir: Path) -> DictConfig:
    """train.py's config for this model, as `python train.py experiment=<model> ...` composes it."""
    overrides = [
        f"experiment={model}",
        f"data.data_dir={args.data_dir}",
        "data.download=false",
        f"trainer.max_epochs={args.epochs}",
        *([f"trainer.limit_train_batches={args.limit_train_batches}"] if args.limit_train_batches else []),
        *args.overrides,
    ]
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def measure(cfg: DictConfig) -> tuple[list[dict[str, float]], int]:
    """Fit as train.py does (build, hyperparameters to the loggers, fit) and return every epoch's parts and the
    training batches per epoch."""
    datamodule, module, trainer, _ = build(cfg)
    datamodule.prepare_data()
    device = trainer.strategy.root_device
    stopwatch = Stopwatch(lambda: torch.cuda.synchronize(device) if device.type == "cuda" else None)
    clock = EpochClock(stopwatch)
    trainer.callbacks.insert(0, clock)
    instrument(trainer, stopwatch)
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    trainer.fit(module, datamodule=datamodule)
    return clock.epochs, int(trainer.num_training_batches)


def typical_epoch(epochs: list[dict[str, float]]) -> int:
    """The index of the median epoch by time among those after the first (the lower one of an even count)."""
    candidates = list(range(1, len(epochs))) or [0]
    ranked = sorted(candidates, key=lambda i: epochs[i]["seconds"])
    return ranked[(len(ranked) - 1) // 2]


def table_row(model: str, index: int, epochs: int, batches: int, epoch: dict[str, float]) -> list[str]:
    """One table row: the epoch's seconds, its training steps, and each overhead part in seconds and percent."""
    seconds = epoch["seconds"]
    parts = {name: epoch.get(name, 0.0) for name in ("training", *PARTS[:-1])}
    parts["other"] = seconds - sum(parts.values())
    row = [model, f"{index + 1}/{epochs}", str(batches), f"{seconds:.3f}", f"{parts['training']:.3f}"]
    for name in PARTS:
        row += [f"{parts[name]:.4f}", f"{100 * parts[name] / seconds:.2f}"]
    return row + [f"{100 * (seconds - parts['training']) / seconds:.2f}"]


def header() -> list[str]:
    columns = ["model", "epoch", "train batches", "epoch s", "training s"]
    for name in PARTS:
        columns += [f"{name} s", f"{name} %"]
    return columns + ["overhead %"]


def machine() -> str:
    """The CPU or GPU, core and thread counts, and the library versions."""
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").exists():
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        cpu = names[0] if names else cpu
    gpu = f"; GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"{cpu}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads{gpu}; "
        f"torch {torch.__version__}, lightning {L.__version__}, Python {platform.python_version()}"
    )


def report(results: dict[str, tuple[list[dict[str, float]], int]], command: str) -> str:
    """The Markdown report: each model's median epoch after the first, every epoch, the machine and the command."""
    summary, detail = [], []
    for model, (epochs, batches) in results.items():
        typical = typical_epoch(epochs)
        summary.append(table_row(model, typical, len(epochs), batches, epochs[typical]))
        detail += [table_row(model, i, len(epochs), batches, epoch) for i, epoch in enumerate(epochs)]
    return (
        "# Per-epoch overhead (benchmarks/epoch_overhead.py)\n\n"
        "Each model's median epoch after the first (by epoch time). An epoch runs from its start to the next epoch's "
        "start; overhead % is everything but the training steps.\n\n"
        f"{markdown_table(header(), summary)}\nEvery epoch:\n\n{markdown_table(header(), detail)}\n"
        f"Machine: {machine()}.\n\nCommand: `{command}`\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data/", help="folder holding cifar-10-batches-py/")
    parser.add_argument("--models", nargs="+", default=MODELS, help="experiments to measure (conf/experiment/)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per model (the first is warm-up)")
    parser.add_argument("--limit-train-batches", type=int, default=None, help="batches per epoch, for quick checks")
    parser.add_argument("--output-dir", default=None, help="runs (default logs/benchmarks/epoch_overhead/<time>)")
    parser.add_argument("--out", default=None, help="also write the Markdown report to this file")
    parser.add_argument("overrides", nargs="*", help="train.py overrides for every model after --")
    args = parser.parse_args()
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    output = Path(args.output_dir or ROOT / "logs" / "benchmarks" / "epoch_overhead" / stamp)
    command = shlex.join(["python", "benchmarks/epoch_overhead.py", *sys.argv[1:]])

    results = {}
    for model in args.models:
        results[model] = measure(compose_config(model, args, output / model))
        seconds = ", ".join(f"{epoch['seconds']:.2f}" for epoch in results[model][0])
        print(f"{model}: epochs of {seconds} s", flush=True)
    text = report(results, command)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
