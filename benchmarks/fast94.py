"""Time and accuracy of `experiment=fast94` over several seeds, and of a bare-PyTorch copy of its recipe.

    python benchmarks/fast94.py --data-dir ../shared/data --seeds 8                    # on a GPU
    python benchmarks/fast94.py --data-dir ../shared/data --seeds 1 --experiment fast94_cpu   # on a CPU
    python benchmarks/fast94.py --data-dir ../shared/data --seeds 2 -- module.compile=true    # any train.py override

Framework side: the experiment's config, built with train.py's own `build` (the same data
module, model, Lightning module, Trainer and callbacks, checkpoints included) and fitted. After
every epoch the test accuracy of the weights the run would keep (the lookahead/EMA average) is
measured with the clock paused, which gives accuracy against training time. At the end the test
accuracy is also measured with airbench's flip + translate test-time augmentation (TTA), the
figure airbench's 94% refers to.

Bare side (on a GPU, or with --bare yes): the same recipe written as a plain PyTorch loop: the
same model class, data split, full batches, step count, augmentation functions, schedule, optimizer
groups and lookahead, with no Lightning, no validation and no checkpoints. The ratio of the two times is the
framework's overhead.

Times: wall clock from the start of fit (data onto the device, whitening, training, validation,
checkpoints) to the end of training, excluding the per-epoch test measurements; CUDA is
synchronized at each reading. On a GPU one untimed warm-up run of each side comes first (CUDA
initialization, cudnn autotuning). "time to X" is the time of the first epoch end whose accuracy
reaches X, counting the final TTA accuracy at the final epoch.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

from cifar_lightning.augment import (  # noqa: E402
    alternating_flip,
    alternating_flip_choice,
    cutout,
    random_crop,
    random_flip,
    random_translate,
    tta_logits,
)
from cifar_lightning.averaging import AveragedWeights, copy_into, float_state, update_average  # noqa: E402
from cifar_lightning.schedules import lr_factor  # noqa: E402
from cifar_lightning.training import build  # noqa: E402

QUIET = [
    "callbacks.progress_bar=null",
    "callbacks.model_summary=null",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def test_accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, normalize, tta: int) -> float:
    """Accuracy on uint8 test images already on the model's device, batches of 1000, in eval mode."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(images), 1000):
        x = normalize(images[start : start + 1000])
        if next(model.parameters()).device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = tta_logits(model, x.contiguous(memory_format=torch.channels_last), level=tta)
        else:
            logits = tta_logits(model, x.contiguous(memory_format=torch.channels_last), level=tta)
        correct += int((logits.argmax(dim=1) == labels[start : start + 1000]).sum())
    model.train(was_training)
    return correct / len(images)


class Clock:
    """Training time with pauses: the per-epoch test measurements are not counted."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.paused_seconds, self.start = device, 0.0, 0.0

    def begin(self) -> None:
        synchronize(self.device)
        self.start, self.paused_seconds = time.perf_counter(), 0.0

    def now(self) -> float:
        synchronize(self.device)
        return time.perf_counter() - self.start - self.paused_seconds

    def pause(self) -> float:
        self._paused_at = time.perf_counter()
        return self.now()

    def resume(self) -> None:
        self.paused_seconds += time.perf_counter() - self._paused_at


class TestCurve(L.Callback):
    """After each training epoch, the test accuracy of the averaged weights (clock paused)."""

    def __init__(self, clock: Clock, datamodule) -> None:
        self.clock, self.datamodule, self.curve = clock, datamodule, []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seconds = self.clock.pause()
        model = pl_module.model
        averaging = next((c for c in trainer.callbacks if isinstance(c, AveragedWeights)), None)
        live = {name: value.detach().clone() for name, value in float_state(model).items()}
        if averaging is not None and averaging.average is not None:
            copy_into(float_state(model), averaging.average)
        images, labels = test_split(self.datamodule, pl_module.device)
        self.curve.append(
            (trainer.current_epoch + 1, seconds, test_accuracy(model, images, labels, self.datamodule.normalize, 0))
        )
        copy_into(float_state(model), live)
        self.clock.resume()


def test_split(datamodule, device: torch.device, limit_batches: int | float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The test images and labels on the device; an int limit_batches (trainer.limit_test_batches, for quick
    checks) keeps that many batches of 1000."""
    arrays = datamodule.arrays
    n = 1000 * limit_batches if isinstance(limit_batches, int) else len(arrays.test_labels)
    return arrays.test_images[:n].to(device), arrays.test_labels[:n].to(device)


def compose_config(args: argparse.Namespace, seed: int, output_dir: Path, epochs: int | None) -> DictConfig:
    overrides = [
        f"experiment={args.experiment}",
        f"data.data_dir={args.data_dir}",
        "data.download=false",
        f"seed={seed}",
        *QUIET,
        *args.overrides,
    ]
    if epochs is not None:
        overrides.append(f"trainer.max_epochs={epochs}")
    if args.train_batches is not None:
        overrides.append(f"trainer.limit_train_batches={args.train_batches}")
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def framework_run(cfg: DictConfig, device: torch.device, tta: int) -> dict:
    """One fit through the framework; returns the curve, final accuracies and training seconds."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, module, trainer, _ = build(cfg)
    clock = Clock(device)
    curve = TestCurve(clock, datamodule)
    trainer.callbacks.append(curve)
    clock.begin()
    trainer.fit(module, datamodule=datamodule)
    seconds = clock.now()
    model = module.model.to(device)  # holds the averaged weights after fit
    images, labels = test_split(datamodule, device)
    return {
        "curve": curve.curve,
        "seconds": seconds,
        "acc": test_accuracy(model, images, labels, datamodule.normalize, 0),
        "acc_tta": test_accuracy(model, images, labels, datamodule.normalize, tta),
    }


def bare_run(cfg: DictConfig, device: torch.device, tta: int) -> dict:
    """The same recipe as a plain PyTorch loop (read from the same config), timed the same way."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    data, model_cfg, opt = cfg.data, cfg.model, cfg.optim
    datamodule = instantiate(data)
    datamodule.setup("fit")
    model = instantiate(model_cfg).to(device, memory_format=torch.channels_last)
    epochs = cfg.trainer.max_epochs
    batch_size = data.batch_size
    clock = Clock(device)
    clock.begin()

    # The training split on the device, once.
    images = datamodule.arrays.train_images[datamodule.train_idx].to(device)
    labels = datamodule.arrays.train_labels[datamodule.train_idx].to(device)
    # drop_last: only full batches (airbench: 50,000 // 1024 = 48 per epoch); max_steps can end the last epoch early.
    steps_per_epoch = len(labels) // batch_size if data.get("drop_last") else -(-len(labels) // batch_size)
    if isinstance(cfg.trainer.limit_train_batches, int):  # --train-batches (a float would be a share)
        steps_per_epoch = min(steps_per_epoch, cfg.trainer.limit_train_batches)
    total_steps = epochs * steps_per_epoch
    if cfg.trainer.get("max_steps", -1) not in (-1, None):
        total_steps = min(total_steps, cfg.trainer.max_steps)
        epochs = -(-total_steps // steps_per_epoch)
    if hasattr(model, "init_from_data"):
        model.init_from_data(datamodule.normalize(datamodule.first_train_images(model.init_images).to(device)))

    # Optimizer groups as ClassifierModule builds them for fast94 (norm parameters x norm_lr_scale,
    # weight decay on everything, the same per-step shrink).
    scale, scope = cfg.module.norm_lr_scale, cfg.module.weight_decay_scope
    norm_ids = {
        id(p)
        for m in model.modules()
        if isinstance(m, torch.nn.modules.batchnorm._NormBase)
        for p in m.parameters(recurse=False)
    }
    params = [p for p in model.parameters() if p.requires_grad]
    weights = [p for p in params if p.ndim > 1 and id(p) not in norm_ids]
    norms = [p for p in params if id(p) in norm_ids]
    biases = [p for p in params if p.ndim <= 1 and id(p) not in norm_ids]
    other_decay = opt.weight_decay if scope == "all" else 0.0
    groups = [
        {"params": weights, "lr": opt.lr, "weight_decay": opt.weight_decay},
        {"params": norms, "lr": opt.lr * scale, "weight_decay": other_decay / scale},
        {"params": biases, "lr": opt.lr, "weight_decay": other_decay},
    ]
    optimizer = torch.optim.SGD([g for g in groups if g["params"]], momentum=opt.momentum, nesterov=opt.nesterov)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    sched = cfg.scheduler

    averaging = cfg.get("averaging") or None
    average = {k: v.detach().clone() for k, v in float_state(model).items()} if averaging else None
    frozen = cfg.callbacks.get("freeze_whiten_bias") or None
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    flip_choice = alternating_flip_choice(len(labels), torch.Generator().manual_seed(cfg.seed)).to(device)
    mean_pixel = (torch.tensor(datamodule.mean, device=device) * 255).round().to(torch.uint8)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    )
    test_images, test_labels = test_split(datamodule, device, cfg.trainer.limit_test_batches)

    curve, step = [], 0
    model.train()
    for epoch in range(epochs):
        if frozen and epoch >= frozen.after_epochs:
            for name, p in model.named_parameters():
                if name in frozen.names:
                    p.requires_grad_(False)
                    p.grad = None
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(cfg.seed + epoch)).to(device)
        epoch_images = alternating_flip(images, flip_choice, epoch) if data.flip == "alternating" else images
        for i in range(min(steps_per_epoch, total_steps - step)):
            idx = order[i * batch_size : (i + 1) * batch_size]
            x = random_crop(epoch_images[idx], data.crop_padding, generator)
            x = random_translate(x, data.translate, generator)
            if data.flip is True:
                x = random_flip(x, generator)
            if data.cutout:
                x = cutout(x, data.cutout, generator, fill=mean_pixel)
            x = datamodule.normalize(x).contiguous(memory_format=torch.channels_last)
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * lr_factor(
                    step, total_steps, sched.shape, sched.warmup, sched.start_factor, sched.end_factor
                )
            with autocast:
                logits = model(x)
            loss = F.cross_entropy(logits.float(), labels[idx], label_smoothing=cfg.loss.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if average is not None and step % averaging.every_n_steps == 0:
                decay = averaging.decay * (step / total_steps) ** averaging.ramp_power
                update_average(average, float_state(model), decay)
                if averaging.mode == "lookahead":
                    copy_into(float_state(model), average)
        seconds = clock.pause()
        live = {k: v.detach().clone() for k, v in float_state(model).items()}
        if average is not None:
            copy_into(float_state(model), average)
        curve.append((epoch + 1, seconds, test_accuracy(model, test_images, test_labels, datamodule.normalize, 0)))
        copy_into(float_state(model), live)
        clock.resume()
    if average is not None:
        copy_into(float_state(model), average)
    seconds = clock.now()
    return {
        "curve": curve,
        "seconds": seconds,
        "acc": test_accuracy(model, test_images, test_labels, datamodule.normalize, 0),
        "acc_tta": test_accuracy(model, test_images, test_labels, datamodule.normalize, tta),
    }


def time_to(result: dict, target: float) -> float | None:
    """Seconds at the first epoch end reaching `target` (the final epoch counts its TTA accuracy)."""
    points = [(seconds, acc) for _, seconds, acc in result["curve"]]
    if points:
        points[-1] = (points[-1][0], max(points[-1][1], result["acc_tta"]))
    return next((seconds for seconds, acc in points if acc >= target), None)


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.4f} +/- {std:.4f}"


def report(side: str, results: list[dict], seeds: list[int], target: float) -> None:
    print(f"\n{side}:")
    for seed, result in zip(seeds, results):
        reached = time_to(result, target)
        curve = "  ".join(f"{seconds / 60:.2f} min {acc:.4f}" for _, seconds, acc in result["curve"])
        print(
            f"  seed {seed}: test acc {result['acc']:.4f}, with TTA {result['acc_tta']:.4f}, "
            f"train {result['seconds']:.2f} s, time to {target:.0%}: "
            f"{f'{reached:.2f} s' if reached is not None else 'not reached'}"
        )
        print(f"    accuracy after each epoch (training minutes, test acc): {curve}")
    print(f"  test acc {mean_std([r['acc'] for r in results])}; with TTA {mean_std([r['acc_tta'] for r in results])}")
    print(
        f"  train time {mean_std([r['seconds'] for r in results])} s; reached {target:.0%} in "
        f"{sum(time_to(r, target) is not None for r in results)} of {len(results)} runs"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data/", help="folder holding cifar-10-batches-py/")
    parser.add_argument("--seeds", type=int, default=4, help="runs of each side, seeds 0 .. N-1")
    parser.add_argument("--experiment", default="fast94", help="experiment config (fast94, fast94_cpu, ...)")
    parser.add_argument("--epochs", type=int, default=None, help="override the experiment's trainer.max_epochs")
    parser.add_argument("--target", type=float, default=0.94, help="accuracy whose time is reported")
    parser.add_argument("--tta", type=int, default=2, choices=[0, 1, 2], help="test-time augmentation level")
    parser.add_argument(
        "--bare", choices=["auto", "yes", "no"], default="auto", help="bare-PyTorch side (auto: on GPU)"
    )
    parser.add_argument(
        "--warmup-runs", type=int, default=None, help="untimed runs first (default: 1 on GPU, 0 on CPU)"
    )
    parser.add_argument("--train-batches", type=int, default=None, help="batches per epoch, for quick checks")
    parser.add_argument(
        "--output-dir", default=None, help="checkpoints and logs (default logs/benchmarks/fast94/<time>)"
    )
    parser.add_argument("overrides", nargs="*", help="train.py overrides after --, e.g. -- module.compile=true")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    bare = args.bare == "yes" or (args.bare == "auto" and device.type == "cuda")
    warmups = args.warmup_runs if args.warmup_runs is not None else (1 if device.type == "cuda" else 0)
    output = Path(
        args.output_dir or ROOT / "logs" / "benchmarks" / "fast94" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    )
    seeds = list(range(args.seeds))
    print(f"device: {name}; experiment={args.experiment}; seeds {seeds}; overrides {args.overrides}; output {output}")

    for i in range(warmups):
        cfg = compose_config(args, 1000 + i, output / f"warmup{i}", epochs=1)
        framework_run(cfg, device, args.tta)
        if bare:
            bare_run(cfg, device, args.tta)
    framework, bare_results = [], []
    for seed in seeds:
        cfg = compose_config(args, seed, output / f"seed{seed}", args.epochs)
        framework.append(framework_run(cfg, device, args.tta))
        print(
            f"framework seed {seed}: {framework[-1]['acc_tta']:.4f} (TTA) in {framework[-1]['seconds']:.2f} s",
            flush=True,
        )
        if bare:
            bare_results.append(bare_run(cfg, device, args.tta))
            print(
                f"bare seed {seed}: {bare_results[-1]['acc_tta']:.4f} (TTA) in {bare_results[-1]['seconds']:.2f} s",
                flush=True,
            )

    report(f"framework (train.py's build + Trainer, experiment={args.experiment})", framework, seeds, args.target)
    if bare:
        report("bare PyTorch loop, same recipe", bare_results, seeds, args.target)
        ratio = statistics.mean(r["seconds"] for r in framework) / statistics.mean(r["seconds"] for r in bare_results)
        print(f"\nframework/bare time ratio: {ratio:.3f}")


if __name__ == "__main__":
    main()
