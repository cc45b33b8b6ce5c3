"""Training throughput of the report CNN in 1 vs 2 CPU processes (trainer=ddp), and their ratio.

Each measurement is train.py's own build (experiment=report_improved, batch data.batch_size per
process, validation and checkpoints off) fitted for --warmup + --steps steps; the images/s count
every process's images (steps x batch_size x processes / seconds, timed on rank 0 after the
warmup). Every process gets cores / processes torch threads, so both settings use the same cores.
Lightning starts the second process by re-running this script with --devices 2 (its DDP
launcher); the two settings alternate --repeats times and the medians are reported.

    python benchmarks/ddp_scaling.py --data-dir ../shared/data [--steps 100 --warmup 10 --repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = "ddp_scaling result: "


def measure(args: argparse.Namespace) -> None:
    """One setting: fit --devices processes (this process is rank 0, or one Lightning started)."""
    threads = max(1, (os.cpu_count() or 1) // args.devices)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # Lightning then leaves the thread count alone
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(ROOT))
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from benchmarks.train_throughput import StepTimer
    from cifar_lightning.training import build

    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose(
            "train",
            overrides=[
                "experiment=report_improved",
                f"data.data_dir={args.data_dir}",
                "data.download=false",
                "trainer=ddp",
                "trainer.accelerator=cpu",
                f"trainer.devices={args.devices}",
                "trainer.max_epochs=1",
                f"trainer.limit_train_batches={args.warmup + args.steps}",
                "trainer.limit_val_batches=0",
                "trainer.enable_progress_bar=false",
                "trainer.enable_model_summary=false",
                "trainer.enable_checkpointing=false",
                "~callbacks",
                "~logger",
            ],
        )
    with open_dict(cfg):
        cfg.paths.output_dir = args.output_dir
    import lightning as L

    L.seed_everything(cfg.seed, verbose=False)
    datamodule, module, trainer, _ = build(cfg)
    timer = StepTimer(args.warmup)
    trainer.callbacks.append(timer)
    trainer.fit(module, datamodule=datamodule)
    if trainer.is_global_zero:
        images = timer.steps * cfg.data.batch_size * trainer.world_size
        figures = {
            "devices": trainer.world_size,
            "threads": threads,
            "batch_size": cfg.data.batch_size,
            "images_per_s": images / timer.seconds,
        }
        print(RESULT + json.dumps(figures), flush=True)


def run_setting(args: argparse.Namespace, devices: int, output_dir: str) -> dict:
    command = [
        sys.executable,
        __file__,
        "--measure",
        "--devices",
        str(devices),
        "--data-dir",
        args.data_dir,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--output-dir",
        output_dir,
    ]
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if done.returncode != 0 or not lines:
        sys.exit(f"error: the {devices}-process measurement failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix(RESULT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data/")
    parser.add_argument("--steps", type=int, default=100, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=10, help="untimed first steps")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--output-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args)
        return
    rates: dict[int, list[float]] = {1: [], 2: []}
    batch_size = None
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for devices in (1, 2):
                figures = run_setting(args, devices, f"{scratch}/{devices}-{repeat}")
                rates[devices].append(figures["images_per_s"])
                batch_size = figures["batch_size"]
                print(
                    f"{devices} process(es), {figures['threads']} torch thread(s) each: "
                    f"{figures['images_per_s']:.0f} images/s",
                    flush=True,
                )
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    print(
        f"median over {args.repeats}: 1 process {one:.0f} images/s, 2 processes {two:.0f} images/s "
        f"(batch {batch_size} per process), 2/1 ratio: {two / one:.2f}"
    )


if __name__ == "__main__":
    main()
