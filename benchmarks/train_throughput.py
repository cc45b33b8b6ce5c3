"""Training throughput of the report CNN through the framework vs a bare PyTorch loop.

Both sides train the same model (conf/experiment/report_improved: batch norm, dropout, L2, SGD
momentum), on the same in-memory CIFAR-10 batches, at the same batch size, on the same device,
in this one process. The framework side is train.py's own Trainer, module, data module and
callbacks (built from the Hydra config), with validation and checkpointing off. Runs alternate
between the two sides and the median of each is reported, so drift on a busy machine hits both
alike.

    python benchmarks/train_throughput.py --data-dir ../shared/data [--steps 150 --repeats 3]
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

from cifar_lightning.training import build  # noqa: E402


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


def compose_config(data_dir: str, steps: int, warmup: int, output_dir: str, accelerator: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose(
            "train",
            overrides=[
                "experiment=report_improved",
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


def bare_run(cfg, warmup: int, steps: int, device: torch.device) -> float:
    """Images per second of a plain PyTorch loop on the same model, data and batch size."""
    L.seed_everything(cfg.seed, verbose=False)
    datamodule, module, _, _ = build(cfg)  # the same model and optimizer settings
    datamodule.setup("fit")
    model = module.model.to(device).train()
    optimizer = module.build_optimizer()
    criterion = torch.nn.CrossEntropyLoss()
    batches = iter(datamodule.train_dataloader())
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        images, labels = next(batches)
        images = datamodule.normalize(images.to(device, non_blocking=True))
        images = images.contiguous(memory_format=torch.channels_last)
        loss = criterion(model(images), labels.to(device, non_blocking=True))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * cfg.data.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data/", help="folder holding cifar-10-batches-py/")
    parser.add_argument("--steps", type=int, default=150, help="timed training steps per run")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps before timing")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side, alternating")
    parser.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu"])
    parser.add_argument("--output-dir", default="logs/benchmarks/train_throughput")
    args = parser.parse_args()

    cfg = compose_config(args.data_dir, args.steps, args.warmup, args.output_dir, args.accelerator)
    use_cuda = args.accelerator != "cpu" and torch.cuda.is_available()
    device = torch.device("cuda" if use_cuda else "cpu")
    name = torch.cuda.get_device_name(device) if use_cuda else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}; batch {cfg.data.batch_size}; {args.steps} timed steps after {args.warmup} warm-up steps")

    framework, bare = [], []
    for repeat in range(args.repeats):
        bare.append(bare_run(cfg, args.warmup, args.steps, device))
        framework.append(framework_run(cfg, args.warmup))
        print(f"run {repeat + 1}: bare {bare[-1]:.0f} img/s, framework {framework[-1]:.0f} img/s")

    bare_median, framework_median = statistics.median(bare), statistics.median(framework)
    print(f"bare PyTorch loop:  {bare_median:.0f} images/s (median of {args.repeats})")
    print(f"framework (train.py Trainer): {framework_median:.0f} images/s (median of {args.repeats})")
    print(f"framework/bare time ratio: {bare_median / framework_median:.3f}")


if __name__ == "__main__":
    main()
