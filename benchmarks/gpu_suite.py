"""The GPU figures in one command: fast94 over seeds, its bare-PyTorch copy, fast94 compiled, a short
resnet18 run and the report CNN's 20-epoch improved recipe; writes docs/results/gpu.md.

    python benchmarks/gpu_suite.py --data-dir ~/data                 # one GPU, about 5 minutes on an H100/H200
    python benchmarks/gpu_suite.py --data-dir ~/data --seeds 10 --out /tmp/gpu.md

Parts, each a section of the report, which is rewritten as soon as a part is measured (a run cut
short keeps what it measured):

1. fast94 through train.py's own `train()` (experiment=fast94, seeds 0 .. N-1): metrics.json's
   test_acc (final lookahead weights, airbench's flip + translate test-time augmentation) mean,
   sample std and min, test_acc_plain (no augmentation), train_seconds (trainer.fit: data onto the
   device, whitening, 476 steps), and the time to 94%: the mean train time, where the mean accuracy
   reaches 94% (airbench's criterion: a recipe "reaches 94%" when its mean over runs does).
2. The same recipe as a bare PyTorch loop (benchmarks/fast94.py `bare_run`) over the same seeds, and
   the framework/bare train-time ratio: what Lightning, Hydra and the callbacks cost.
3. fast94 with module.compile=true (torch.compile): a compiling warm-up run, then timed seeds (the compiled
   graphs are cached by then).
4. resnet18 (experiment=resnet18): images/s over a short run through the framework, and the full
   run's training time projected from it (its epochs x steps, training steps only).
5. The report CNN, experiment=report_improved, 20 epochs as on the CPU: test accuracy and train time.

Every side runs one untimed warm-up first (CUDA start-up, cudnn autotuning). On a machine without a
CUDA GPU the suite stops with an error (exit status 2): its figures are GPU figures. --smoke runs
every part for a few steps on any device, writing to --out only (tests/test_benchmarks.py).
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from fast94 import QUIET, bare_run  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402
from train_throughput import StepTimer  # noqa: E402

from cifar_lightning.errors import one_line  # noqa: E402
from cifar_lightning.runs.record import library_versions  # noqa: E402
from cifar_lightning.tables import markdown_table  # noqa: E402
from cifar_lightning.training import build, train  # noqa: E402

REPORT = ROOT / "docs" / "results" / "gpu.md"
TARGET = 0.94


def compose_config(data_dir: str, output_dir: Path, overrides: list[str]) -> DictConfig:
    """train.py's config with these overrides, writing into output_dir."""
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("train", overrides=[f"data.data_dir={data_dir}", "data.download=false", *QUIET, *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def mean_std_min(values: list[float]) -> tuple[float, float, float]:
    std = statistics.stdev(values) if len(values) > 1 else float("nan")
    return statistics.mean(values), std, min(values)


def percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.2f}"


def seconds(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"


class Report:
    """gpu.md, rewritten whole after every part so that what was measured is on disk."""

    def __init__(self, path: Path, header: list[str]) -> None:
        self.path, self.header, self.sections = path, header, []

    def add(self, title: str, lines: list[str]) -> None:
        self.sections.append([f"## {title}", "", *lines, ""])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "\n".join([*self.header, ""] + [line for section in self.sections for line in section])
        self.path.write_text(text.rstrip() + "\n")
        print("\n".join(self.sections[-1]), flush=True)


class Suite:
    """The parts of the suite, sharing the data folder, scratch directory, seeds and the smoke switch."""

    def __init__(self, args: argparse.Namespace, scratch: Path, device: torch.device) -> None:
        self.args, self.scratch, self.device = args, scratch, device
        self.seeds = list(range(args.seeds))
        # --smoke: a few small steps of everything (any device), to test the suite itself: batch 64, not fast94's
        # 1024 (a CPU takes seconds per step of 1024).
        self.short = ["trainer.max_steps=3", "trainer.limit_test_batches=1", "data.batch_size=64"] if args.smoke else []
        self.framework: list[dict[str, Any]] = []  # part 1's runs, the baseline of parts 2 and 3

    def config(self, name: str, overrides: list[str], short: list[str] | None = None) -> DictConfig:
        """The config of one run; with --smoke shortened by `short` (default: a few steps)."""
        return compose_config(self.args.data_dir, self.scratch / name, [*overrides, *(short or self.short)])

    def fast94_runs(self, tag: str, extra: list[str], seeds: list[int]) -> list[dict[str, Any]]:
        """An untimed warm-up run (50 steps), then one train() per seed; their metrics.json records."""
        train(self.config(f"{tag}-warmup", ["experiment=fast94", "seed=1000", "trainer.max_steps=50", *extra]))
        runs = []
        for seed in seeds:
            metrics = train(self.config(f"{tag}-seed{seed}", ["experiment=fast94", f"seed={seed}", *extra]))
            print(
                f"{tag} seed {seed}: test_acc {metrics['test_acc']:.4f} (TTA), {metrics['train_seconds']:.2f} s",
                flush=True,
            )
            runs.append(metrics)
        return runs

    def fast94_table(self, runs: list[dict[str, Any]]) -> list[str]:
        acc = mean_std_min([r["test_acc"] for r in runs])
        plain = mean_std_min([r["test_acc_plain"] for r in runs])
        times = mean_std_min([r["train_seconds"] for r in runs])
        reached = sum(r["test_acc"] >= TARGET for r in runs)
        time_to = f"{times[0]:.2f} s" if acc[0] >= TARGET else f"not reached (mean {percent(acc[0])}%)"
        rows = [
            ["test acc., TTA (%)", percent(acc[0]), percent(acc[1]), percent(acc[2])],
            ["test acc., no TTA (%)", percent(plain[0]), percent(plain[1]), percent(plain[2])],
            ["train time (s)", *map(seconds, times)],
        ]
        return [
            markdown_table([f"seeds: {len(runs)}", "mean", "std", "min"], rows).rstrip("\n"),
            "",
            f"Runs at >= 94% (TTA): {reached} of {len(runs)}. Time to 94% (mean train time, where the mean "
            f"reaches 94%): {time_to}. Per seed (TTA %, s): "
            + ", ".join(f"{percent(r['test_acc'])} in {r['train_seconds']:.2f}" for r in runs)
            + ".",
        ]

    def bare_runs(self) -> list[dict[str, Any]]:
        """benchmarks/fast94.py's bare loop: an untimed 50-step warm-up, then one run per seed."""
        bare_run(self.config("bare-warmup", ["experiment=fast94", "seed=1000", "trainer.max_steps=50"]), self.device, 2)
        runs = []
        for seed in self.seeds:
            result = bare_run(self.config(f"bare-seed{seed}", ["experiment=fast94", f"seed={seed}"]), self.device, 2)
            print(f"bare seed {seed}: {result['acc_tta']:.4f} (TTA), {result['seconds']:.2f} s", flush=True)
            runs.append(result)
        return runs

    def resnet18_throughput(self, warmup: int, steps: int) -> tuple[float, DictConfig]:
        """Images/s of the framework's resnet18 training steps after `warmup` steps (no validation)."""
        overrides = [
            "experiment=resnet18",
            "data.val_fraction=0",
            "callbacks.model_checkpoint=null",
            "trainer.enable_checkpointing=false",
            "trainer.max_epochs=1",
            f"trainer.limit_train_batches={warmup + steps}",
        ]
        cfg = self.config("resnet18", overrides)
        L.seed_everything(0, verbose=False)
        datamodule, module, trainer, _ = build(cfg)
        timer = StepTimer(warmup)
        trainer.callbacks.append(timer)
        trainer.fit(module, datamodule=datamodule)
        return timer.steps * cfg.data.batch_size / timer.seconds, self.config("resnet18-full", ["experiment=resnet18"])

    # -- the parts: each returns its section's lines --------------------------------------------------

    def part_fast94(self) -> list[str]:
        self.framework = self.fast94_runs("fast94", [], self.seeds)
        return self.fast94_table(self.framework)

    def part_bare(self) -> list[str]:
        bare = self.bare_runs()
        acc, times = mean_std_min([r["acc_tta"] for r in bare]), mean_std_min([r["seconds"] for r in bare])
        lines = [
            markdown_table(
                [f"seeds: {len(bare)}", "mean", "std", "min"],
                [
                    ["test acc., TTA (%)", *map(percent, acc)],
                    ["train time (s)", *map(seconds, times)],
                ],
            ).rstrip("\n"),
        ]
        if self.framework:
            ratio = statistics.mean(r["train_seconds"] for r in self.framework) / times[0]
            lines += [
                "",
                f"Framework/bare train-time ratio: **{ratio:.2f}** (mean train time through train.py over "
                "the bare loop's, same seeds, same device, one process).",
            ]
        return lines

    def part_compiled(self) -> list[str]:
        compiled = self.fast94_runs("compiled", ["module.compile=true"], list(range(self.args.compile_seeds)))
        lines = self.fast94_table(compiled)
        if self.framework:
            ratio = statistics.mean(r["train_seconds"] for r in compiled) / statistics.mean(
                r["train_seconds"] for r in self.framework
            )
            lines += [
                "",
                f"Compiled/eager train-time ratio: {ratio:.2f} (after a compiling warm-up run; each run's "
                "train time still includes tracing its own new model).",
            ]
        return lines

    def part_resnet18(self) -> list[str]:
        warmup = 1 if self.args.smoke else 30
        images_per_second, full = self.resnet18_throughput(warmup, self.args.resnet_steps)
        steps_per_epoch = math.ceil(round(50000 * (1 - full.data.val_fraction)) / full.data.batch_size)
        projected = full.trainer.max_epochs * steps_per_epoch * full.data.batch_size / images_per_second
        return [
            f"{images_per_second:,.0f} training images/s through the framework ({self.args.resnet_steps} timed steps "
            f"of batch {full.data.batch_size} after {warmup} warm-up steps, {full.trainer.precision}). Projected full "
            f"run: {full.trainer.max_epochs} epochs x {steps_per_epoch} steps = **{projected / 60:.1f} min** of "
            "training steps (validation, checkpoints and test not counted).",
        ]

    def part_report_cnn(self) -> list[str]:
        # --smoke: whole (tiny) epochs, so that validation runs and early stopping finds its val_loss.
        smoke = (
            [
                "trainer.max_epochs=1",
                "trainer.limit_train_batches=3",
                "trainer.limit_val_batches=1",
                "trainer.limit_test_batches=1",
            ]
            if self.args.smoke
            else None
        )
        metrics = train(self.config("report_improved", ["experiment=report_improved", "seed=0"], smoke))
        return [
            f"Test accuracy {percent(metrics['test_acc'])}% (best epoch {metrics['best_epoch']} of "
            f"{metrics['epochs_run']}), train time {metrics['train_seconds']:.1f} s, seed 0.",
        ]


def versions_line() -> str:
    versions = library_versions()
    cuda = "no CUDA"
    if torch.cuda.is_available():
        cuda = f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
    names = ("python", "torch", "lightning", "hydra-core", "torchmetrics")
    return ", ".join(f"{name} {versions.get(name, '?')}" for name in names) + f"; {cuda}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data/", help="folder holding cifar-10-batches-py/")
    parser.add_argument("--seeds", type=int, default=5, help="fast94 runs of each side, seeds 0 .. N-1")
    parser.add_argument("--compile-seeds", type=int, default=2, help="timed fast94 runs with module.compile=true")
    parser.add_argument("--resnet-steps", type=int, default=150, help="timed resnet18 steps (after 30 warm-up)")
    parser.add_argument("--out", default=str(REPORT), help=f"the report (default {REPORT.relative_to(ROOT)})")
    parser.add_argument("--smoke", action="store_true", help="a few steps of every part, on any device (tests)")
    args = parser.parse_args()

    if not torch.cuda.is_available() and not args.smoke:
        print(
            "error: benchmarks/gpu_suite.py measures GPU figures, and this machine has no CUDA GPU "
            f"(torch {torch.__version__}, torch.cuda.is_available() is False), so nothing was run or written. "
            "Fix: run it on a machine with an NVIDIA GPU and a CUDA build of torch; for CPU figures use "
            "benchmarks/fast94.py --experiment fast94_cpu.",
            file=sys.stderr,
        )
        sys.exit(2)
    if args.smoke and Path(args.out).resolve() == REPORT.resolve():
        parser.error("--smoke writes no measured figures: give it a scratch --out, e.g. --out /tmp/gpu.md")
    if args.seeds < 1 or args.compile_seeds < 1 or args.resnet_steps < 1:
        parser.error("--seeds, --compile-seeds and --resnet-steps must be at least 1")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = f"cpu ({platform.processor() or platform.machine()})"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    started = datetime.now(timezone.utc)
    command = " ".join(["python", "benchmarks/gpu_suite.py", *sys.argv[1:]])
    report = Report(
        Path(args.out),
        [
            "# GPU figures (benchmarks/gpu_suite.py)" + (" — SMOKE RUN, not a measurement" if args.smoke else ""),
            "",
            f"- Device: {name}; {versions_line()}.",
            f"- Command: `{command}`",
            f"- Date: {started:%Y-%m-%d %H:%M} UTC. Times are wall-clock seconds of `trainer.fit` (train.py's "
            "`train_seconds`) or of the bare loop's training; accuracies are on the 10,000 test images.",
        ],
    )
    scratch = Path(tempfile.mkdtemp(prefix="gpu_suite-"))
    suite = Suite(args, scratch, device)
    clock = time.perf_counter()
    parts = [
        ("1. fast94 through train.py (experiment=fast94)", suite.part_fast94),
        ("2. The bare-PyTorch copy of the recipe (benchmarks/fast94.py)", suite.part_bare),
        ("3. fast94 with module.compile=true", suite.part_compiled),
        ("4. resnet18 (experiment=resnet18), short run", suite.part_resnet18),
        ("5. The report CNN, experiment=report_improved (20 epochs)", suite.part_report_cnn),
    ]
    failed = []
    for title, part in parts:
        try:
            lines = part()
        except Exception as exc:  # a failed part is reported, and the others still run
            traceback.print_exc()
            failed.append(title)
            lines = [f"**Failed**: {type(exc).__name__}: {one_line(exc, 400)}"]
        report.add(title, lines)
    report.add(
        "Suite",
        [
            f"Whole suite: {(time.perf_counter() - clock) / 60:.1f} min on {name}."
            + (f" Failed parts: {', '.join(failed)}." if failed else "")
        ],
    )
    print(f"wrote {args.out}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
