"""glibc's malloc as a CPU lever: training and inference images/s and peak memory, its defaults against mmap off.

By default glibc serves every allocation over its mmap threshold (at most 32 MiB) with a fresh mmap and unmaps it
at free, so each step's large activations (FastNet's at batch 1024, the report CNN's first conv at batch 128 and
up) are page-faulted and zeroed again every step. `mallopt(M_MMAP_MAX, 0)` with a high `M_TRIM_THRESHOLD` keeps
them in the heap for reuse: what train.py, evaluate.py and predict.py do by default (`keep_heap`,
cifar_lightning/allocator.py). Each variant runs in a fresh process (mallopt acts on the process), alternated over
`--repeats` rounds; each prints the median of its timed steps and its peak resident memory. Run it alone on the
machine; glibc only.

    python benchmarks/cpu_allocator.py [--repeats 2] [--steps 6]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

from cifar_lightning.allocator import keep_heap

CASES = {  # name: (model, batch size, training?)
    "fastnet 48/96/192 train, batch 1024": ("fast_net", 1024, True),
    "report CNN train, batch 128": ("report_cnn", 128, True),
    "report CNN eval, batch 250": ("report_cnn", 250, False),
}


def build(model: str) -> nn.Module:
    from cifar_lightning.models import FastNet, ReportCNN

    net = FastNet(widths=[48, 96, 192]) if model == "fast_net" else ReportCNN(batch_norm="all", dropout=0.2)
    return net.to(memory_format=torch.channels_last)


def images_per_second(case: str, steps: int) -> float:
    """The median images/s of `steps` timed steps after 2 untimed ones, in this process."""
    model_name, batch, training = CASES[case]
    torch.manual_seed(0)
    model = build(model_name).train(training)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    images = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,))
    times = []
    for _ in range(steps + 2):
        start = time.perf_counter()
        if training:
            loss = nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        else:
            with torch.inference_mode():
                model(images)
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2, help="rounds over the variants, alternating")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per case and run")
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        variant, case = args.child
        if not keep_heap(variant == "heap kept") and variant == "heap kept":
            raise SystemExit("mallopt refused the settings: this benchmark needs glibc")
        speed = images_per_second(case, args.steps)
        print(speed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # Linux: KiB
        return
    results: dict[tuple[str, str], list[float]] = {}
    peaks: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats):
        for case in CASES:
            for variant in ("glibc defaults", "heap kept"):
                command = [sys.executable, __file__, "--steps", str(args.steps), "--child", variant, case]
                output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
                speed, peak = map(float, output.split()[-2:])
                results.setdefault((case, variant), []).append(speed)
                peaks.setdefault((case, variant), []).append(peak)
    print("| case | glibc defaults, images/s | heap kept, images/s | ratio | peak MiB, defaults | peak MiB, kept |")
    print("|---|---:|---:|---:|---:|---:|")
    for case in CASES:
        default, kept = (statistics.median(results[case, variant]) for variant in ("glibc defaults", "heap kept"))
        peak_default, peak_kept = (max(peaks[case, variant]) for variant in ("glibc defaults", "heap kept"))
        print(f"| {case} | {default:.0f} | {kept:.0f} | {kept / default:.2f} | {peak_default:.0f} | {peak_kept:.0f} |")
    print(f"command: python benchmarks/cpu_allocator.py --repeats {args.repeats} --steps {args.steps}")


if __name__ == "__main__":
    main()
