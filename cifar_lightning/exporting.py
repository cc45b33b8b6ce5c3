"""The export job behind export.py: a train.py checkpoint as one self-contained file that runs without this
project, ONNX (`model.onnx`, for onnxruntime and other ONNX runtimes) or a torch.export program (`model.pt2`,
for `torch.export.load`), checked against the PyTorch model before it is called done.

The exported model's contract, the same in both formats:

    input  `images`  uint8, (N, 3, 32, 32): NCHW, RGB, 0..255, N free (dynamic batch), 32 x 32 fixed
    output `logits`  float32, (N, 10), in the order of the checkpoint's class names

The training split's normalization is inside the graph (NormalizedClassifier), so callers pass the raw pixels,
exactly what Classifier.predict takes. uint8 rather than float because that is what the whole project passes
around (data.py, inference.py, images.py): there is no [0, 1]-or-0..255 scale to get wrong and no way to
normalize twice, and a batch is 4x smaller. Only 32 x 32 goes in: images of another size are center-cropped
and resized first by the project's policy (images.fit_to_input), which stays outside the graph.

Exporter: torch.export captures the graph for both formats, from the same example input with the same dynamic
batch dimension: the .pt2 file is its program (`torch.export.export`), the ONNX file its translation by
`torch.onnx.export(dynamo=True)` (given the module, which it captures the same way, so that the batch dimension
keeps its name, `batch`, in the ONNX graph). Not the TorchScript exporter (`dynamo=False`): it is deprecated since
torch 2.9, where the dynamo exporter became the default. Both exported report_cnn, fast_net (its GELUs become ONNX
`Gelu`, opset 20) and resnet18 correctly on torch 2.14, with logits within ~1e-6 of PyTorch's, so the maintained
one is used. Parameters are exported from a contiguous (NCHW) copy of the model: torch.export's saver warns on
channels-last weights, and the memory layout does not change the function.

Every export is verified in the same run (verify): the file is loaded back the way a user would (onnxruntime's
CPUExecutionProvider, or torch.export.load) and run on CIFAR-10 test images against the PyTorch model
(Classifier, no TTA); a max |logit difference| above `check.max_abs_diff` or a top-1 agreement below
`check.min_agreement` fails the export with ParityError (exit status 1), after export.json has recorded it.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import logging
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from cifar_lightning.checkpoints import chosen_checkpoint, file_sha256
from cifar_lightning.data import load_cifar10
from cifar_lightning.errors import CifarLightningError, ConfigError, invalid_setting, is_int, is_number
from cifar_lightning.images import INPUT_SIZE
from cifar_lightning.inference import Classifier

log = logging.getLogger(__name__)

FORMATS = ("onnx", "pt2")
INPUT_NAME, OUTPUT_NAME = "images", "logits"
BATCH_DIM = "batch"
#: The lowest ONNX opset torch.onnx's dynamo exporter writes.
MIN_OPSET = 18
EXPORT_FILE = "export.json"
#: Loggers of the ONNX exporter's graph passes: a dozen INFO lines per export, nothing a user acts on.
CHATTY_LOGGERS = ("onnxscript", "onnx_ir")
#: Packages whose versions export.json records.
VERSIONED = ("torch", "onnx", "onnxscript", "onnxruntime")


class ParityError(CifarLightningError):
    """The exported model's outputs differ from the PyTorch model's beyond the tolerance. Exit status 1: the
    input was fine, the export is not."""

    exit_code = 1


class NormalizedClassifier(nn.Module):
    """uint8 images (N, 3, 32, 32) -> logits (N, classes): the training split's normalization, then the model.

    The normalization is data.normalize's arithmetic (x * 1 / (255 std) - mean / std, in float32), kept as
    buffers so that it is exported as part of the graph.
    """

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.model = model
        mean_t, std_t = torch.tensor(mean), torch.tensor(std)
        self.register_buffer("scale", (1.0 / (255.0 * std_t)).view(1, -1, 1, 1))
        self.register_buffer("shift", (mean_t / std_t).view(1, -1, 1, 1))

    @classmethod
    def from_classifier(cls, classifier: Classifier) -> NormalizedClassifier:
        """A CPU copy of the classifier's model, NCHW-contiguous and in eval mode, with its normalization."""
        model = copy.deepcopy(classifier.model).cpu().to(memory_format=torch.contiguous_format).eval()
        return cls(model, classifier.mean, classifier.std).eval()

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images.float() * self.scale - self.shift)


def input_spec(num_classes: int) -> dict[str, Any]:
    """The exported model's inputs and outputs, as export.json records them."""
    return {
        "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": [BATCH_DIM, 3, INPUT_SIZE, INPUT_SIZE],
                  "layout": "NCHW", "channels": "RGB", "range": [0, 255], "dynamic_dims": [BATCH_DIM]},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": [BATCH_DIM, num_classes]},
    }  # fmt: skip


def example_input() -> tuple[Tensor]:
    """What the graph is traced with: two images (a batch of 1 would be specialized to 1)."""
    return (torch.zeros(2, 3, INPUT_SIZE, INPUT_SIZE, dtype=torch.uint8),)


def dynamic_batch() -> tuple[dict[int, Any]]:
    """torch.export's dynamic_shapes for the one input: dimension 0, named `batch`, any size >= 1."""
    return ({0: torch.export.Dim(BATCH_DIM, min=1)},)


def capture(module: NormalizedClassifier) -> torch.export.ExportedProgram:
    """The module's graph, captured by torch.export with a dynamic batch dimension."""
    return torch.export.export(module, example_input(), dynamic_shapes=dynamic_batch())


@contextmanager
def quiet_loggers(*names: str) -> Iterator[None]:
    """Only warnings and errors from these loggers while the block runs (their levels are restored after)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def write_onnx(module: NormalizedClassifier, path: Path, opset: int, metadata: dict[str, str]) -> None:
    """One self-contained .onnx file (weights inside, not in a .data file beside it), with `metadata` in its
    metadata_props."""
    import onnx

    with quiet_loggers(*CHATTY_LOGGERS):
        torch.onnx.export(module, example_input(), str(path), dynamo=True, dynamic_shapes=dynamic_batch(),
                          opset_version=opset, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          external_data=False, verbose=False)  # fmt: skip
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, metadata)
    onnx.save(model, str(path))


def write_pt2(module: NormalizedClassifier, path: Path, metadata: dict[str, str]) -> None:
    """The module's torch.export program as a .pt2 archive, with `metadata` as extra files (read back by
    torch.export.load's extra_files)."""
    torch.export.save(capture(module), str(path), extra_files=metadata)


def load_exported(path: Path, fmt: str) -> Callable[[Tensor], Tensor]:
    """The exported model as a user runs it: uint8 images (N, 3, 32, 32) -> float32 logits (N, classes) on the
    CPU. ONNX through onnxruntime's CPUExecutionProvider, .pt2 through torch.export.load."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def run_onnx(images: Tensor) -> Tensor:
            feed = {INPUT_NAME: np.ascontiguousarray(images.cpu().numpy())}
            return torch.from_numpy(session.run([OUTPUT_NAME], feed)[0])

        return run_onnx
    module = torch.export.load(str(path)).module()

    @torch.inference_mode()
    def run_pt2(images: Tensor) -> Tensor:
        return module(images.cpu().contiguous()).float()

    return run_pt2


@dataclass(frozen=True)
class Parity:
    """How closely the exported model reproduces the PyTorch model on the same images."""

    images: int
    max_abs_diff: float  # the largest |exported logit - PyTorch logit| over all images and classes
    agreement: float  # share of images whose top-1 class is the same
    batch_sizes: list[int]  # the batch sizes the exported model ran at (its batch dimension is dynamic)

    def problems(self, max_abs_diff: float, min_agreement: float) -> list[str]:
        """The tolerances it misses, one phrase each; [] when it passes."""
        found = []
        if not self.max_abs_diff <= max_abs_diff:  # `not <=` also catches NaN
            found.append(f"max |logit difference| {self.max_abs_diff:.3g} > check.max_abs_diff {max_abs_diff:g}")
        if not self.agreement >= min_agreement:
            found.append(f"top-1 agreement {self.agreement:.2%} < check.min_agreement {min_agreement:.2%}")
        return found

    def check(self, max_abs_diff: float, min_agreement: float, path: Path) -> None:
        """Raise ParityError, naming the file and what it missed, unless it is within both tolerances."""
        problems = self.problems(max_abs_diff, min_agreement)
        if problems:
            other = "pt2" if path.suffix == ".onnx" else "onnx"
            raise ParityError(
                f"the exported {path} does not reproduce the PyTorch model on {self.images:,} CIFAR-10 test images: "
                f"{'; '.join(problems)}. Do not use this file (it is kept, with {EXPORT_FILE}, for inspection). "
                f"Fix: export again with the other format (format={other}) or another opset, or update torch and "
                f"onnxruntime; loosen check.max_abs_diff or check.min_agreement only if such a difference is "
                f"acceptable for your use."
            )


def verify(run: Callable[[Tensor], Tensor], classifier: Classifier, images: Tensor, batch_size: int) -> Parity:
    """Run the exported model (`run`, from load_exported) and the PyTorch classifier (no TTA) on the same uint8
    images and compare logits: in batches of `batch_size` (the last one smaller when it does not divide the
    count), plus the first image alone, so at least two batch sizes go through the dynamic batch dimension."""
    expected = replace(classifier, tta=0).predict(images, batch_size=batch_size).logits
    chunks = list(images.split(batch_size)) + [images[:1]]
    outputs = [run(chunk) for chunk in chunks]
    exported = torch.cat(outputs[:-1])
    if exported.shape != expected.shape or outputs[-1].shape != expected[:1].shape:
        raise ParityError(
            f"the exported model returned logits of shape {tuple(exported.shape)} (and {tuple(outputs[-1].shape)} "
            f"for one image) where the PyTorch model gives {tuple(expected.shape)}: the export is broken. Fix: "
            f"export again; if it persists, report it with export.json."
        )
    differences = torch.cat([(exported - expected).abs().flatten(), (outputs[-1] - expected[:1]).abs().flatten()])
    agree = torch.cat([exported.argmax(1) == expected.argmax(1), outputs[-1].argmax(1) == expected[:1].argmax(1)])
    return Parity(images=len(images), max_abs_diff=float(differences.max()), agreement=float(agree.float().mean()),
                  batch_sizes=sorted({len(chunk) for chunk in chunks}, reverse=True))  # fmt: skip


def _invalid(key: str, problem: str, example: str) -> ConfigError:
    return invalid_setting("export", "nothing was exported", key, problem, example)



def check_settings(cfg: DictConfig) -> None:
    """Refuse a bad setting, or a format whose libraries are missing, before anything is loaded or written."""
    if cfg.format not in FORMATS:
        raise _invalid("format", f"the format must be one of {', '.join(FORMATS)}, got {cfg.format!r}", "format=onnx")
    if not is_int(cfg.opset, MIN_OPSET):
        raise _invalid("opset", f"the ONNX opset must be an integer >= {MIN_OPSET} (the lowest torch's dynamo "
                                f"exporter writes), got {cfg.opset!r}", "opset=20")  # fmt: skip
    check = cfg.check
    if not is_int(check.images, 1):
        raise _invalid("check.images", f"must be a positive integer, got {check.images!r}", "check.images=1000")
    if not is_int(check.batch_size, 1):
        raise _invalid("check.batch_size", f"must be a positive integer, got {check.batch_size!r}",
                       "check.batch_size=256")  # fmt: skip
    if not is_number(check.max_abs_diff) or not check.max_abs_diff >= 0:
        raise _invalid("check.max_abs_diff", f"must be a number >= 0, got {check.max_abs_diff!r}",
                       "check.max_abs_diff=1e-3")  # fmt: skip
    if not is_number(check.min_agreement) or not 0 <= check.min_agreement <= 1:
        raise _invalid("check.min_agreement", f"must be a share from 0 to 1, got {check.min_agreement!r}",
                       "check.min_agreement=0.999")  # fmt: skip
    if cfg.format == "onnx":
        missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if _version(name) is None]
        if missing:
            raise ConfigError(
                f"format=onnx needs the packages onnx, onnxscript and onnxruntime, but {', '.join(missing)} "
                f'{"is" if len(missing) == 1 else "are"} not installed. Fix: pip install -e ".[export]", or '
                f"export with format=pt2 (torch alone); nothing was exported."
            )


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def export_model(classifier: Classifier, path: Path, fmt: str, opset: int, metadata: dict[str, str]) -> None:
    """Write the classifier (normalization included) to `path` as `fmt` (onnx or pt2)."""
    module = NormalizedClassifier.from_classifier(classifier)
    if fmt == "onnx":
        write_onnx(module, path, opset, metadata)
    else:
        write_pt2(module, path, metadata)


def export(cfg: DictConfig) -> dict[str, Any]:
    """Export one checkpoint, verify the file, and write export.json beside it; returns export.json's content.

    Every input (settings, checkpoint, CIFAR-10) is checked and loaded before the first file is written.
    Raises ParityError (after writing export.json, `passed: false`) when the file misses the tolerances.
    """
    start = time.perf_counter()
    check_settings(cfg)
    path = chosen_checkpoint(cfg.get("ckpt"), cfg.get("run_dir"), "export.py")
    classifier = Classifier.load(path, device="cpu", tta=0)
    images = load_cifar10(cfg.data.data_dir, cfg.data.download).test_images[: cfg.check.images]

    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model_path = output_dir / f"model.{cfg.format}"
    opset = cfg.opset if cfg.format == "onnx" else None
    spec = input_spec(len(classifier.classes))
    metadata = {"classes": json.dumps(list(classifier.classes)), "normalization": json.dumps(classifier.normalization),
                "io": json.dumps(spec), "checkpoint": str(path)}  # fmt: skip
    export_start = time.perf_counter()
    export_model(classifier, model_path, cfg.format, cfg.opset, metadata)
    log.info("exported %s to %s (%.1f MB) in %.1f s", path, model_path, model_path.stat().st_size / 1e6,
             time.perf_counter() - export_start)  # fmt: skip

    parity = verify(load_exported(model_path, cfg.format), classifier, images, cfg.check.batch_size)
    problems = parity.problems(cfg.check.max_abs_diff, cfg.check.min_agreement)
    runtime = "onnxruntime (CPUExecutionProvider)" if cfg.format == "onnx" else "torch.export.load"
    summary = {
        "format": cfg.format,
        "file": str(model_path),
        "sha256": file_sha256(model_path),
        "checkpoint": str(path),
        "checkpoint_epoch": classifier.checkpoint_epoch,
        "experiment": classifier.config.get("experiment_name"),
        "model": classifier.config.get("model"),
        "classes": list(classifier.classes),
        "normalization": classifier.normalization,
        **spec,
        "opset": opset,
        "exporter": "torch.onnx.export(dynamo=True)" if cfg.format == "onnx" else "torch.export.export",
        "parity": {
            **asdict(parity),
            "runtime": runtime,
            "reference": "cifar_lightning.inference.Classifier, tta=0",
            "max_abs_diff_allowed": cfg.check.max_abs_diff,
            "min_agreement_allowed": cfg.check.min_agreement,
            "passed": not problems,
        },
        "versions": {"python": platform.python_version(), **{name: _version(name) for name in VERSIONED}},
        "seconds": round(time.perf_counter() - start, 3),
    }
    (output_dir / EXPORT_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    log.info("parity on %d CIFAR-10 test images through %s: max |logit difference| %.3g, top-1 agreement %.2f%% "
             "(batch sizes %s): %s", parity.images, runtime, parity.max_abs_diff, 100 * parity.agreement,
             ", ".join(map(str, parity.batch_sizes)), "passed" if not problems else "FAILED")  # fmt: skip
    parity.check(cfg.check.max_abs_diff, cfg.check.min_agreement, model_path)
    return summary
