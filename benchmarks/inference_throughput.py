"""Inference throughput on the CPU: PyTorch eager against onnxruntime, on the same classifier.

Both sides compute what export.py exports (cifar_lightning.exporting.NormalizedClassifier: uint8 images
(N, 3, 32, 32) in, the training normalization, the model, logits out):

- PyTorch eager: the module under torch.inference_mode, its model in the memory format the run trained in
  (channels-last when the run config's `channels_last` is true, as Classifier.load gives it);
- onnxruntime: the model.onnx export.py writes for it (same exporter, same opset), on the CPUExecutionProvider.

Both get the same number of threads (--threads). For each batch size, each side runs --warmup untimed and
--repeats timed forward passes in one block (interleaving single passes would let one runtime's spinning worker
threads slow the other), the side going first alternating between batch sizes; the medians are reported as ms per
batch and images per second. The images are random uint8 (their content does not change the work of these
models).

On a machine shared with other work, compare with --threads 1 too: with 2 or more threads, PyTorch synchronizes
its threads at every operator, so a small batch waits on the scheduler (measured on this project's 2-core machine
under load: the same batch-1 pass of the report CNN took 1 to 100 ms with 2 threads, about 1 ms with 1).

A checkpoint (--ckpt) is benchmarked as trained. Without one, --model names a freshly initialised model of its
conf/model/<name>.yaml (random weights; FastNet's whitening filters random rather than computed from data;
normalization mean 0.5 and std 0.25 per channel; channels-last as conf/train.yaml's default): the same
operations, so the same speed.

    python benchmarks/inference_throughput.py --ckpt logs/train/runs/<date>_<time>/checkpoints/best.ckpt
    python benchmarks/inference_throughput.py --model resnet18 [--batch-sizes 1 256 --warmup 3 --repeats 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

import cifar_lightning.config  # noqa: E402, F401  (the schemas conf/ extends)
from cifar_lightning.data import CIFAR10_CLASSES  # noqa: E402
from cifar_lightning.exporting import INPUT_NAME, NormalizedClassifier, export_model  # noqa: E402
from cifar_lightning.images import INPUT_SIZE  # noqa: E402
from cifar_lightning.inference import Classifier  # noqa: E402
from cifar_lightning.models import MODELS  # noqa: E402

#: The normalization of a freshly initialised model (a checkpoint brings its own).
FRESH_MEAN, FRESH_STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def fresh_classifier(name: str) -> Classifier:
    """A randomly initialised model of conf/model/<name>.yaml, in the memory format of conf/train.yaml's default."""
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["~experiment", f"model={name}"])
    model = instantiate(cfg.model).eval()
    if cfg.module.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return Classifier(model, FRESH_MEAN, FRESH_STD, CIFAR10_CLASSES, torch.device("cpu"))


def onnx_runner(path: Path, threads: int) -> Callable[[torch.Tensor], object]:
    """Run model.onnx on a uint8 batch through onnxruntime's CPU provider with `threads` threads."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda images: session.run(None, {INPUT_NAME: images.numpy()})


def eager_runner(module: torch.nn.Module) -> Callable[[torch.Tensor], object]:
    def run(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(images)

    return run


def median_seconds(run: Callable[[torch.Tensor], object], images: torch.Tensor, warmup: int, repeats: int) -> float:
    """The median wall time of `repeats` passes of `run` on `images`, after `warmup` untimed ones."""
    for _ in range(warmup):
        run(images)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(images)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--ckpt", help="a train.py checkpoint (default: a fresh --model)")
    source.add_argument("--model", default="report_cnn", choices=sorted(MODELS), help="fresh model of conf/model/")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 256], help="images per forward pass")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs per batch size and side")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per batch size and side (median)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads of each side")
    parser.add_argument("--opset", type=int, default=20, help="ONNX opset of the export")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.ckpt:
        classifier, what = Classifier.load(args.ckpt, device="cpu"), args.ckpt
    else:
        classifier, what = fresh_classifier(args.model), f"{args.model} (fresh, conf/model/{args.model}.yaml)"
    parameters = sum(p.numel() for p in classifier.model.parameters())
    eager = NormalizedClassifier(classifier.model, classifier.mean, classifier.std).eval()

    import onnxruntime

    print(f"model: {what}, {parameters / 1e6:.2f} M parameters")
    print(
        f"cpu, {args.threads} thread(s) per side; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; "
        f"{args.warmup} warm-up and {args.repeats} timed runs per batch size and side (medians)"
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        start = time.perf_counter()
        export_model(classifier, path, "onnx", args.opset, metadata={})
        print(f"exported model.onnx (opset {args.opset}) in {time.perf_counter() - start:.1f} s")
        sides = {"PyTorch eager": eager_runner(eager), "onnxruntime": onnx_runner(path, args.threads)}
        generator = torch.Generator().manual_seed(0)
        for index, batch in enumerate(args.batch_sizes):
            images = torch.randint(0, 256, (batch, 3, INPUT_SIZE, INPUT_SIZE), dtype=torch.uint8, generator=generator)
            order = list(sides) if index % 2 == 0 else list(reversed(sides))
            medians = {name: median_seconds(sides[name], images, args.warmup, args.repeats) for name in order}
            figures = " | ".join(
                f"{name}: {1e3 * medians[name]:9.2f} ms/batch {batch / medians[name]:8.0f} images/s" for name in sides
            )
            speedup = medians["PyTorch eager"] / medians["onnxruntime"]
            print(f"batch {batch:4d} | {figures} | onnxruntime/eager speed {speedup:.2f}")


if __name__ == "__main__":
    main()
