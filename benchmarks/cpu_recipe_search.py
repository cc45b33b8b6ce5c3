"""Size experiment=fast94_cpu for a CPU: train candidate recipes and compare them on the validation split.

    python benchmarks/cpu_recipe_search.py --data-dir ../shared/data                     # the built-in candidates
    python benchmarks/cpu_recipe_search.py --data-dir ../shared/data --only w48x10 w32x20
    python benchmarks/cpu_recipe_search.py --data-dir ../shared/data --candidate mine 'model.widths=[40,80,160]' \
        trainer.max_epochs=12

Each candidate is fast94_cpu with some overrides (widths, epochs, batch, schedule), trained through
train.py's own `build` with data.val_fraction held out (default 0.1: 5,000 images, so that close
candidates can be told apart), and scored on that validation split only: plain and with airbench's
test-time augmentation (TTA, level 2), from the final (lookahead) weights. The test set is never
touched here: choose on these figures, then measure the chosen recipe once with train.py.

Per candidate it prints the training time (trainer.fit without its validation passes, wall clock:
run it on an otherwise idle machine), that time projected to all 50,000 training images (the chosen
recipe holds none out), and the validation accuracy after every epoch against the minutes trained (the
accuracy-against-minutes curve), and at the end a Markdown table of all candidates, written to
--out as well.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import open_dict  # noqa: E402

from cifar_lightning.augment import tta_logits  # noqa: E402
from cifar_lightning.tables import markdown_table  # noqa: E402
from cifar_lightning.training import build  # noqa: E402

#: name -> overrides of fast94_cpu (today: widths 48/96/192, 10 epochs of batch 1024, about 12 minutes alone).
CANDIDATES: dict[str, list[str]] = {
    "w32x8": ["model.widths=[32,64,128]", "trainer.max_epochs=8"],
    "w32x16": ["model.widths=[32,64,128]", "trainer.max_epochs=16"],
    "w32x18": ["model.widths=[32,64,128]", "trainer.max_epochs=18"],
    "w32x20": ["model.widths=[32,64,128]", "trainer.max_epochs=20"],
    "w40x10": ["model.widths=[40,80,160]"],
    "w48x10": [],
    "w48x12": ["trainer.max_epochs=12"],
    "w64x8": ["model.widths=[64,128,128]", "trainer.max_epochs=8"],
    "w48x10b512": ["data.batch_size=512"],
    # With large tensors kept in glibc's heap (keep_heap, train.py's default since 2026-12-07: FastNet's steps 1.3-1.5x
    # faster on the AMD machine), more epochs fit the 15 minutes; with and without label smoothing.
    "w48x14": ["trainer.max_epochs=14"],
    "w48x14ls0": ["trainer.max_epochs=14", "loss.label_smoothing=0"],
    "w48x16": ["trainer.max_epochs=16"],
    # bf16 autocast (benchmarks/cpu_levers.py: ~1.6x the images/s of fp32 on an AVX-512 BF16 CPU): more epochs in the
    # same minutes; without label smoothing too (the 40-epoch fp32 run without it reached 94.10%).
    "bf16w48x16": ["trainer.precision=bf16-mixed", "trainer.max_epochs=16"],
    "bf16w48x20": ["trainer.precision=bf16-mixed", "trainer.max_epochs=20"],
    "bf16w48x20ls0": ["trainer.precision=bf16-mixed", "trainer.max_epochs=20", "loss.label_smoothing=0"],
    "bf16w48x24": ["trainer.precision=bf16-mixed", "trainer.max_epochs=24"],
    "bf16w64x16": ["trainer.precision=bf16-mixed", "model.widths=[64,128,256]", "trainer.max_epochs=16"],
    "bf16w48x40ls0": ["trainer.precision=bf16-mixed", "trainer.max_epochs=40", "loss.label_smoothing=0"],
}
QUIET = [
    "callbacks.progress_bar=null",
    "callbacks.model_summary=null",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


class EpochClock(L.Callback):
    """Training minutes at each epoch end, validation passes not counted (the chosen recipe has none)."""

    def __init__(self) -> None:
        self.start, self.validating, self.paused, self.minutes = 0.0, 0.0, 0.0, []

    def now(self) -> float:
        return (time.perf_counter() - self.start - self.paused) / 60

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.validating = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.paused += time.perf_counter() - self.validating
        if not trainer.sanity_checking:  # an epoch's validation ends after its training (Lightning's order)
            self.minutes.append(self.now())


@torch.no_grad()
def validation_accuracy(module, datamodule, tta: int) -> float:
    """Accuracy of the module's current weights on the validation split, batches of 1000."""
    module.eval()
    images = datamodule.arrays.train_images[datamodule.val_idx]
    labels = datamodule.arrays.train_labels[datamodule.val_idx]
    correct = 0
    for start in range(0, len(labels), 1000):
        x = datamodule.normalize(images[start : start + 1000].to(module.device))
        correct += int((tta_logits(module, x, tta).argmax(dim=1).cpu() == labels[start : start + 1000]).sum())
    return correct / len(labels)


def run_candidate(name: str, overrides: list[str], args: argparse.Namespace, output: Path) -> dict:
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose(
            "train",
            overrides=[
                "experiment=fast94_cpu",
                f"data.data_dir={args.data_dir}",
                "data.download=false",
                f"data.val_fraction={args.val_fraction}",
                f"seed={args.seed}",
                *QUIET,
                *overrides,
            ],
        )
    with open_dict(cfg):
        cfg.paths.output_dir = str(output / name)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, module, trainer, history = build(cfg)
    clock = EpochClock()
    trainer.callbacks.append(clock)
    trainer.fit(module, datamodule=datamodule)
    minutes = clock.now()
    # The chosen recipe trains on all 50,000 images: the same epochs take this many more steps.
    steps_ratio = (50000 // cfg.data.batch_size) / len(datamodule.train_dataloader())
    curve = [(m, row.get("val_acc")) for m, row in zip(clock.minutes, history.history)]
    result = {
        "name": name,
        "overrides": " ".join(overrides) or "(fast94_cpu as it is)",
        "widths": list(cfg.model.widths),
        "epochs": len(history.history),
        "batch": cfg.data.batch_size,
        "minutes": minutes,
        "projected": minutes * steps_ratio,
        "val_acc": validation_accuracy(module, datamodule, 0),
        "val_acc_tta": validation_accuracy(module, datamodule, 2),
        "curve": curve,
    }
    points = "  ".join(f"{m:.1f} min {acc:.4f}" for m, acc in curve if acc is not None)
    print(
        f"{name}: {minutes:.1f} min of training ({result['projected']:.1f} projected on 50,000 images), "
        f"validation accuracy {result['val_acc']:.4f}, with TTA {result['val_acc_tta']:.4f}\n"
        f"  after each epoch (minutes, val acc): {points}",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data/", help="folder holding cifar-10-batches-py/")
    parser.add_argument("--only", nargs="*", default=None, help=f"candidates to run, of {', '.join(CANDIDATES)}")
    parser.add_argument(
        "--candidate",
        nargs="+",
        action="append",
        default=[],
        metavar=("NAME", "OVERRIDE"),
        help="an extra candidate: a name and fast94_cpu overrides",
    )
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share of the training images held out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default=str(ROOT / "logs" / "benchmarks" / "cpu_recipe_search"))
    parser.add_argument("--out", default=None, help="also write the table (Markdown) here")
    args = parser.parse_args()
    if not 0 < args.val_fraction < 1:
        parser.error("--val-fraction must be in (0, 1): the candidates are compared on the validation split")
    unknown = sorted(set(args.only or []) - set(CANDIDATES))
    if unknown:
        parser.error(f"unknown candidates {', '.join(unknown)}; the built-in ones are {', '.join(CANDIDATES)}")
    chosen = {name: CANDIDATES[name] for name in (args.only if args.only is not None else CANDIDATES)}
    chosen.update({name: overrides for name, *overrides in args.candidate})

    output = Path(args.output_dir)
    print(
        f"{torch.get_num_threads()} threads; validation split {args.val_fraction}; seed {args.seed}; "
        f"candidates {', '.join(chosen)}",
        flush=True,
    )
    results = [run_candidate(name, overrides, args, output) for name, overrides in chosen.items()]
    table = markdown_table(
        ["candidate", "overrides of fast94_cpu", "train min", "on 50,000 (min)", "val acc (%)", "val acc, TTA (%)"],
        [
            [
                r["name"],
                r["overrides"],
                f"{r['minutes']:.1f}",
                f"{r['projected']:.1f}",
                f"{100 * r['val_acc']:.2f}",
                f"{100 * r['val_acc_tta']:.2f}",
            ]
            for r in results
        ],
    )
    print("\n" + table)
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
