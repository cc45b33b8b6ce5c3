"""Training throughput of the report CNN and of fast94_cpu through the framework vs a bare PyTorch loop.

Recipes (--recipes, default both): the report's improved CNN (conf/experiment/report_improved: batch norm,
dropout, L2, SGD momentum, batch 128) and fast94_cpu (FastNet at widths 48/96/192, batch 1024, Nesterov SGD
with norm parameters at 64x the rate and weight decay on all, the per-step warmup schedule, label smoothing 0.2,
alternating flip and 2-pixel translation, lookahead weights; bf16 autocast on a GPU, 32-bit on the CPU).

For each recipe both sides train the same model on the same in-memory CIFAR-10 batches, at the same batch size,
on the same device, in this one process. The framework side is train.py's own Trainer, module, data module and
callbacks (built from the Hydra config), with validation and checkpointing off. The bare side is a plain loop that
does each step's arithmetic as the framework does, with the objects train.py's build makes: the model (and its
data-dependent init), the training loader, the data module's augmentation and normalization, the module's optimizer
groups, schedule and loss, the precision and the averaged weights' update. The timed steps must fit in one epoch
(fast94_cpu: 48 steps). Runs alternate between the sides (and the recipes), the side that goes first swapping
every repeat, so drift on a busy machine hits both alike. Each recipe gets two framework/bare time ratios: of the
medians, and of each side's fastest run. On a shared machine other work only ever adds time, so each side's fastest
run is its least disturbed one (timeit's reasoning): the best-run ratio is the figure that separates the framework's
cost from the machine's swing, the median ratio shows how much that swing was.

    python benchmarks/train_throughput.py --data-dir ../shared/data [--recipes fast94_cpu --steps 40 --repeats 3]
    python benchmarks/train_throughput.py --data-dir ../shared/data -- module.compile=true   # any train.py override
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import open_dict  # noqa: E402

from cifar_lightning.averaging import AveragedWeights, copy_into, float_state, update_average  # noqa: E402
from cifar_lightning.training import build  # noqa: E402

#: Each recipe's experiment and its default (timed steps, warm-up steps): fast94_cpu has 48 steps an epoch.
RECIPES = {"report_improved": (150, 20), "fast94_cpu": (40, 5)}


class StepTimer(L.Callback):
    """Wall time of the training steps after `warmup` steps (synchronizing CUDA at both ends)."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.steps = warmup, None, 0

    def _sync(self, module: L.LightningModule) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self._sync(pl_module)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx >= self.warmup:
            self.steps += 1

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._sync(pl_module)
        self.seconds = time.perf_counter() - self.start


def compose_config(
    recipe: str, data_dir: str, steps: int, warmup: int, output_dir: str, accelerator: str, overrides: list[str]
):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose(
            "train",
            overrides=[
                f"experiment={recipe}",
                f"data.data_dir={data_dir}",
                "data.download=false",
                f"trainer.accelerator={accelerator}",
                "trainer.max_epochs=1",
                f"trainer.limit_train_batches={warmup + steps}",
                "trainer.limit_val_batches=0",
                "trainer.enable_progress_bar=false",
                "callbacks.progress_bar=null",
                "trainer.enable_model_summary=false",
                "callbacks.model_summary=null",
                "callbacks.early_stopping=null",  # nothing to monitor without validation
                "callbacks.model_checkpoint=null",
                "trainer.enable_checkpointing=false",
                *overrides,
            ],
        )
    with open_dict(cfg):
        cfg.paths.output_dir = output_dir
    return cfg


def framework_run(cfg, warmup: int) -> float:
    """Images per second of train.py's Trainer over the timed steps."""
    L.seed_everything(cfg.seed, verbose=False)
    datamodule, module, trainer, _ = build(cfg)
    timer = StepTimer(warmup)
    trainer.callbacks.append(timer)
    trainer.fit(module, datamodule=datamodule)
    return timer.steps * cfg.data.batch_size / timer.seconds


def bare_model(datamodule, module, device: torch.device) -> torch.nn.Module:
    """The module's model on the device, initialized from the data first where it needs it (FastNet's whitening), as
    ClassifierModule.setup does before Lightning moves the model."""
    model = module.model
    if (init := getattr(model, "init_from_data", None)) is not None:
        init(datamodule.normalize(datamodule.first_train_images(model.init_images)))
    return model.to(device).train()


def bare_batches(datamodule, device: torch.device, needed: int):
    """The data module's own training loader (its shuffle and per-epoch transform: fast94's alternating flip), holding
    the split on the device as the framework's does with data.on_device; it must serve `needed` batches in one epoch."""
    loader = datamodule.train_dataloader()
    if datamodule.on_device:
        loader.device = device
    if len(loader) < needed:
        raise SystemExit(
            f"error: {needed} warm-up and timed steps do not fit in one epoch of {len(loader)} batches. Fix: lower "
            f"--steps/--warmup so that they add up to at most {len(loader)}."
        )
    return iter(loader)


def average_step(averaging: AveragedWeights, average: dict, model: torch.nn.Module, step: int, total: int) -> None:
    """AveragedWeights' update after optimizer step `step` (from 1): the EMA, and lookahead's reset to it."""
    if step % averaging.every_n_steps != 0:
        return
    live = float_state(model)
    update_average(average, live, averaging.decay_at(step, total))
    if averaging.mode == "lookahead":
        copy_into(live, average)


def bare_run(cfg, warmup: int, steps: int, device: torch.device) -> float:
    """Images per second of a plain PyTorch loop doing the framework's arithmetic per step, on the same data."""
    L.seed_everything(cfg.seed, verbose=False)
    datamodule, module, trainer, _ = build(cfg)  # the same model, optimizer, schedule, loss and averaging settings
    datamodule.setup("fit")
    model = bare_model(datamodule, module, device)
    total = warmup + steps
    batches = bare_batches(datamodule, device, total)
    optimizer = module.build_optimizer()
    scheduler = module.build_scheduler(optimizer, total_steps=total)
    per_step = scheduler is not None and scheduler.interval == "step"  # epoch schedules do not step inside it
    averaging = next((c for c in trainer.callbacks if isinstance(c, AveragedWeights)), None)
    average = {name: value.detach().clone() for name, value in float_state(model).items()} if averaging else None
    # FreezeParameters (fast94: the whitening bias after 3 epochs) does nothing in the first epoch.
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=trainer.precision == "bf16-mixed")
    for i in range(total):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        images, labels = next(batches)
        images = datamodule.normalize(datamodule.augment(images.to(device, non_blocking=True)))
        if module.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast:
            loss = module.criterion(model(images), labels.to(device, non_blocking=True))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if per_step:
            scheduler.step()
        if averaging is not None:
            average_step(averaging, average, model, i + 1, total)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * cfg.data.batch_size / (time.perf_counter() - start)


def steps_and_warmup(recipe: str, steps: int | None, warmup: int | None) -> tuple[int, int]:
    """The given step counts, else the recipe's own (fast94_cpu's 48-step epoch holds fewer than the report CNN's)."""
    default_steps, default_warmup = RECIPES[recipe]
    return (default_steps if steps is None else steps, default_warmup if warmup is None else warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data/", help="folder holding cifar-10-batches-py/")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES), help="default: both")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per run (default: 150; fast94_cpu 40)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 20; fast94_cpu 5)")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each side, alternating")
    parser.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu"])
    parser.add_argument("--output-dir", default="logs/benchmarks/train_throughput")
    parser.add_argument("overrides", nargs="*", help="train.py overrides for every recipe after --")
    args = parser.parse_args()

    use_cuda = args.accelerator != "cpu" and torch.cuda.is_available()
    device = torch.device("cuda" if use_cuda else "cpu")
    name = torch.cuda.get_device_name(device) if use_cuda else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}; overrides {args.overrides}")
    runs = {}
    for recipe in args.recipes:
        steps, warmup = steps_and_warmup(recipe, args.steps, args.warmup)
        cfg = compose_config(recipe, args.data_dir, steps, warmup, args.output_dir, args.accelerator, args.overrides)
        runs[recipe] = (cfg, steps, warmup, [], [])
        print(f"{recipe}: batch {cfg.data.batch_size}; {steps} timed steps after {warmup} warm-up steps")

    for repeat in range(args.repeats):
        for recipe, (cfg, steps, warmup, bare, framework) in runs.items():
            sides = [
                (bare, lambda: bare_run(cfg, warmup, steps, device)),
                (framework, lambda: framework_run(cfg, warmup)),
            ]
            for results, run in sides if repeat % 2 == 0 else sides[::-1]:
                results.append(run())
            print(f"run {repeat + 1}, {recipe}: bare {bare[-1]:.0f} img/s, framework {framework[-1]:.0f} img/s")

    for recipe, (_, _, _, bare, framework) in runs.items():
        bare_median, framework_median = statistics.median(bare), statistics.median(framework)
        print(
            f"{recipe}: bare PyTorch loop {bare_median:.0f} images/s (median of {args.repeats}), best {max(bare):.0f}"
        )
        print(
            f"{recipe}: framework (train.py Trainer) {framework_median:.0f} images/s (median of {args.repeats}), "
            f"best {max(framework):.0f}"
        )
        print(
            f"{recipe}: framework/bare time ratio: {max(bare) / max(framework):.3f} of the best runs, "
            f"{bare_median / framework_median:.3f} of the medians"
        )


if __name__ == "__main__":
    main()
