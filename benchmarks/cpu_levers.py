"""The CPU levers one by one, side by side in one run: images/s of training and validation accuracy per variant.

    python benchmarks/cpu_levers.py --data-dir ../shared/data                                  # images/s only
    python benchmarks/cpu_levers.py --data-dir ../shared/data --accuracy --out cpu_levers.md   # + val accuracy
    python benchmarks/cpu_levers.py --data-dir ../shared/data --models report-cnn --variants fp32 bf16

Each variant moves one lever away from fp32, the recipes' CPU setting (32-bit, channels-last, eager, default threads):
- precision: bf16 is Lightning's trainer.precision=bf16-mixed, i.e. torch.autocast("cpu", torch.bfloat16) around
  the forward pass and the loss (weights, gradients and optimizer state stay 32-bit);
- memory format: channels-first runs the model on NCHW tensors (module.channels_last=false) instead of NHWC;
- compile: module.compile=true, torch.compile's inductor backend (forward and backward). Its compile happens in the
  warm-up steps, so it is not in images/s; the first step's seconds are reported beside it;
- threads: torch.set_num_threads(1) for the run instead of torch's default (restored afterwards).
Every run keeps large tensors in glibc's heap (keep_heap, train.py's default; it acts on the whole process), so
that lever is measured apart, each side in a fresh process: benchmarks/cpu_allocator.py.

The models are exactly what the recipes train, built by train.py's own `build` from the Hydra configs:
fastnet is experiment=fast94_cpu (FastNet at widths 48/96/192, batch 1024, SGD Nesterov, lookahead) and
report-cnn is experiment=report_improved (the course report's CNN, batch 128). The data are the real CIFAR-10
training batches, uint8 in memory and augmented on the device, as in training.

Images/s: every run is a Lightning Trainer fit (the framework's own path, as benchmarks/train_throughput.py),
validation and checkpoints off, with a callback timing the full training steps (forward, loss, backward, optimizer
step) after --warmup steps. The variants alternate round-robin for --repeats rounds, so drift on a busy machine
hits them alike; the table has each variant's median and its ratio to fp32. The order the runs took, and every
figure, is written to <output-dir>/runs.json.

--accuracy: each variant also trains --accuracy-epochs epochs (default 2, a short full schedule of the recipe) from
the same seed on 90% of the training images and is scored on the 10% held out (data.val_fraction=0.1), never on the
test set, so that the differences come from the lever; --accuracy-batches cuts both splits short, for a quick check
of the script only.

Run it on an otherwise idle machine, and mind bf16: a CPU without bf16 instructions (the machine line lists them;
none on this project's AVX2-only 2-core machine) emulates it, and in a short check there (8 steps) bf16 trained about
12x slower than fp32 on both models, so that the four bf16 variants take most of a run: hours for all seven
variants with --accuracy. Pick --variants to leave them out.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import open_dict  # noqa: E402

from cifar_lightning.tables import markdown_table  # noqa: E402
from cifar_lightning.training import build  # noqa: E402


@dataclass(frozen=True)
class Variant:
    precision: str  # trainer.precision
    channels_last: bool = True
    compile: bool = False
    threads: int | None = None  # torch.set_num_threads for the run; None: the process's own


VARIANTS = {
    "fp32": Variant("32-true"),
    "fp32-channels-first": Variant("32-true", channels_last=False),
    "fp32-compiled": Variant("32-true", compile=True),
    "bf16": Variant("bf16-mixed"),
    "bf16-channels-first": Variant("bf16-mixed", channels_last=False),
    "bf16-compiled": Variant("bf16-mixed", compile=True),
    "bf16-1-thread": Variant("bf16-mixed", threads=1),
}
#: model name -> (experiment, default warm-up steps, default timed steps): a few seconds of timing each.
MODELS = {"fastnet": ("fast94_cpu", 5, 20), "report-cnn": ("report_improved", 20, 150)}
QUIET = [
    "callbacks.progress_bar=null",
    "callbacks.model_summary=null",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "callbacks.early_stopping=null",  # the same epochs for every variant
    "callbacks.model_checkpoint=null",
    "trainer.enable_checkpointing=false",
]


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class StepTimer(L.Callback):
    """Wall time of the training steps after `warmup`, the first step's seconds (a compiled model compiles there)
    and the thread count the steps ran with."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.steps, self.start, self.seconds, self.first, self.threads = warmup, 0, 0.0, 0.0, 0.0, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.first, self.threads = time.perf_counter(), torch.get_num_threads()
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.first = time.perf_counter() - self.first
        if batch_idx >= self.warmup:
            self.steps += 1

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds = time.perf_counter() - self.start


@contextmanager
def thread_count(threads: int | None):
    """The variant's torch thread count inside, the process's own again afterwards."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def compose_config(args: argparse.Namespace, model: str, name: str, overrides: list[str], output: Path):
    """train.py's config of the model's recipe with the variant's levers set, quiet, written under `output`."""
    variant = VARIANTS[name]
    levers = [
        f"trainer.precision={variant.precision}",
        f"module.channels_last={str(variant.channels_last).lower()}",
        f"module.compile={str(variant.compile).lower()}",
    ]
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose(
            "train",
            overrides=[
                f"experiment={MODELS[model][0]}",
                f"data.data_dir={args.data_dir}",
                "data.download=false",
                f"seed={args.seed}",
                *QUIET,
                *levers,
                *overrides,
            ],
        )
    with open_dict(cfg):
        cfg.paths.output_dir = str(output)
    return cfg


def fit(cfg, threads: int | None, callbacks: list[L.Callback]):
    """Build as train.py does and fit, with the variant's threads and a fresh compile cache (each compiled run
    compiles for itself, rather than hitting torch's recompile limit); returns the epoch history."""
    torch.compiler.reset()
    with thread_count(threads):
        datamodule, module, trainer, history = build(cfg)
        trainer.callbacks.extend(callbacks)
        trainer.fit(module, datamodule=datamodule)
    return history


def timed_run(args: argparse.Namespace, model: str, name: str) -> dict:
    """One Trainer fit of warm-up + timed steps: its images/s, first-step seconds and threads."""
    warmup = args.warmup if args.warmup is not None else MODELS[model][1]
    steps = args.steps if args.steps is not None else MODELS[model][2]
    overrides = ["trainer.max_epochs=1", "trainer.max_steps=-1", f"trainer.limit_train_batches={warmup + steps}"]
    overrides += ["trainer.limit_val_batches=0", "+trainer.num_sanity_val_steps=0"]
    cfg = compose_config(args, model, name, overrides, Path(args.output_dir) / model / name)
    timer = StepTimer(warmup)
    fit(cfg, VARIANTS[name].threads, [timer])
    if timer.steps < 1:
        raise SystemExit(f"error: --warmup {warmup} leaves no step to time: an epoch of {model} is shorter")
    batch = cfg.data.batch_size
    figures = {"images_per_s": timer.steps * batch / timer.seconds, "first_step_s": timer.first}
    return {"model": model, "variant": name, "batch": batch, "steps": timer.steps, **figures, "threads": timer.threads}


def throughput(args: argparse.Namespace, model: str) -> list[dict]:
    """Every variant once per round, in the same order, for --repeats rounds: the runs in the order they ran."""
    runs = []
    for round_ in range(1, args.repeats + 1):
        for name in args.variants:
            runs.append(run := {"round": round_, **timed_run(args, model, name)})
            progress(
                f"{model} round {round_}/{args.repeats}: {name} {run['images_per_s']:.0f} images/s "
                f"(first step {run['first_step_s']:.1f} s, {run['threads']} threads)"
            )
    return runs


def validation_accuracy(args: argparse.Namespace, model: str, name: str) -> float:
    """Accuracy on the held-out validation split after a short fit from --seed with the variant's levers."""
    overrides = ["data.val_fraction=0.1", f"trainer.max_epochs={args.accuracy_epochs}", "trainer.max_steps=-1"]
    overrides += ["+trainer.num_sanity_val_steps=0"]
    if args.accuracy_batches:  # a quick check of the script, not a measurement
        overrides += [f"trainer.limit_train_batches={args.accuracy_batches}"]
        overrides += [f"trainer.limit_val_batches={args.accuracy_batches}"]
    cfg = compose_config(args, model, name, overrides, Path(args.output_dir) / model / f"{name}-accuracy")
    history = fit(cfg, VARIANTS[name].threads, [])
    accuracy = history.history[-1]["val_acc"]
    progress(f"{model} accuracy: {name} {100 * accuracy:.2f}% on the validation split")
    return accuracy


def model_table(args: argparse.Namespace, model: str, runs: list[dict], accuracy: dict[str, float]) -> str:
    """The model's Markdown table: median images/s, its ratio to fp32, the first round's first step, val acc."""
    median = {
        name: statistics.median(r["images_per_s"] for r in runs if r["variant"] == name) for name in args.variants
    }
    first = {r["variant"]: r["first_step_s"] for r in runs if r["round"] == 1}
    header = ["variant", "images/s", "x fp32", "first step (s)"] + (["val acc. (%)"] if accuracy else [])
    rows = []
    for name in args.variants:
        ratio = f"{median[name] / median['fp32']:.2f}" if "fp32" in median else ""
        row = [name, f"{median[name]:.0f}", ratio, f"{first[name]:.1f}"]
        rows.append(row + ([f"{100 * accuracy[name]:.2f}"] if accuracy else []))
    run = runs[0]
    title = f"### {model}: experiment={MODELS[model][0]}, batch {run['batch']}"
    note = f"Median of {args.repeats} alternating rounds of {run['steps']} timed steps each."
    if accuracy:
        note += f" Validation accuracy after {args.accuracy_epochs} epochs from seed {args.seed}"
        n = args.accuracy_batches
        note += f" (at most {n} training batches per epoch, {n} validation batches)." if n else ", on 5,000 images."
    return f"{title}\n\n{markdown_table(header, rows)}\n{note}\n"


def machine() -> str:
    """The CPU's model, core and thread counts, its vector and bf16 instructions (bf16 is emulated, and slow,
    without them) and the library versions."""
    cpu, flags = platform.processor() or platform.machine(), set()
    if Path("/proc/cpuinfo").exists():
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        cpu = names[0] if names else cpu
        flags = {flag for line in lines if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    bf16 = ", ".join(sorted(flags & {"avx512_bf16", "amx_bf16", "avx_ne_convert"})) or "none"
    return (
        f"{cpu}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads; "
        f"torch {torch.__version__}, lightning {L.__version__}, Python {platform.python_version()}; "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, bf16 instructions: {bf16}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data/", help="folder holding cifar-10-batches-py/")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=None, help="timed steps per run (default: fastnet 20, cnn 150)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: fastnet 5, cnn 20)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over the variants, alternating")
    parser.add_argument("--accuracy", action="store_true", help="also train each variant and score it on validation")
    parser.add_argument("--accuracy-epochs", type=int, default=2, help="epochs of each accuracy run")
    parser.add_argument(
        "--accuracy-batches",
        type=int,
        default=None,
        help="limit training batches per epoch and validation batches, for quick checks (default: all)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default=str(ROOT / "logs" / "benchmarks" / "cpu_levers"))
    parser.add_argument("--out", default=None, help="also write the tables (Markdown) here")
    args = parser.parse_args()
    counts = [args.repeats, args.accuracy_epochs] + [n for n in (args.steps, args.accuracy_batches) if n is not None]
    if min(counts) < 1 or (args.warmup or 0) < 0:
        parser.error(
            "--steps, --repeats, --accuracy-epochs and --accuracy-batches must be at least 1, --warmup at least 0"
        )
    args.variants = list(dict.fromkeys(args.variants))  # each once, in the order given
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no banner per run between the progress lines

    progress(f"{machine()}\nvariants {', '.join(args.variants)}; models {', '.join(args.models)}")
    tables, record = [], []
    for model in dict.fromkeys(args.models):
        runs = throughput(args, model)
        accuracy = {name: validation_accuracy(args, model, name) for name in args.variants} if args.accuracy else {}
        tables.append(model_table(args, model, runs, accuracy))
        record.append({"model": model, "runs": runs, "val_acc": accuracy})
    command = shlex.join(["python", *sys.argv])
    report = "\n".join(tables) + f"\nMachine: {machine()}.\n\nCommand: `{command}`\n"
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    figures = {"command": command, "machine": machine(), "models": record}
    (output / "runs.json").write_text(json.dumps(figures, indent=1))
    print(report)
    if args.out:
        Path(args.out).write_text(report)


if __name__ == "__main__":
    main()
