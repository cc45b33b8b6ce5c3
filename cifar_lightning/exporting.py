"""The export job behind export.py: a train.py checkpoint as one file that runs without this project, ONNX
(`model.onnx`, for onnxruntime) or a torch.export program (`model.pt2`), verified before it is called done.

Both formats take `images`, uint8 (N, 3, 32, 32), NCHW RGB 0..255, N free, and return `logits`, float32 (N, 10):
the normalization is in the graph (NormalizedClassifier), so callers pass raw pixels, as to Classifier.predict.
torch.export captures the graph for both (the ONNX file is torch.onnx.export's dynamo=True translation of it,
the maintained exporter) from a contiguous copy of the model. verify() runs the file as a user would against the
PyTorch model (no TTA) on CIFAR-10 test images; missing check.max_abs_diff or check.min_agreement fails the
export with ParityError (exit status 1), after export.json has recorded it.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from cifar_lightning.checkpoints import chosen_checkpoint, file_sha256
from cifar_lightning.config import check
from cifar_lightning.config.inference import ExportSettings
from cifar_lightning.data import load_cifar10
from cifar_lightning.errors import CifarLightningError, ConfigError
from cifar_lightning.images import INPUT_SIZE
from cifar_lightning.inference import Classifier

log = logging.getLogger(__name__)

INPUT_NAME, OUTPUT_NAME, BATCH_DIM = "images", "logits", "batch"
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
    """uint8 images (N, 3, 32, 32) -> logits (N, classes): the training split's normalization (data.normalize's
    arithmetic, x / (255 std) - mean / std in float32, as buffers so that it is in the graph), then the model."""

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
    shape = [BATCH_DIM, 3, INPUT_SIZE, INPUT_SIZE]
    image = {"name": INPUT_NAME, "dtype": "uint8", "shape": shape, "layout": "NCHW", "channels": "RGB"}
    return {
        "input": {**image, "range": [0, 255], "dynamic_dims": [BATCH_DIM]},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": [BATCH_DIM, num_classes]},
    }


def export_model(classifier: Classifier, path: Path, fmt: str, opset: int, metadata: dict[str, str]) -> None:
    """Write the classifier, normalization included, to `path` as one self-contained file with `metadata`: a .pt2
    archive (metadata as extra files) or an .onnx file (weights inside; metadata in its metadata_props)."""
    module = NormalizedClassifier.from_classifier(classifier)
    example = (torch.zeros(2, 3, INPUT_SIZE, INPUT_SIZE, dtype=torch.uint8),)  # a batch of 1 would be specialized
    dynamic = ({0: torch.export.Dim(BATCH_DIM, min=1)},)
    if fmt == "pt2":
        program = torch.export.export(module, example, dynamic_shapes=dynamic)
        torch.export.save(program, str(path), extra_files=metadata)
        return
    import onnx

    chatty = [logging.getLogger(name) for name in CHATTY_LOGGERS]
    levels = [logger.level for logger in chatty]
    for logger in chatty:
        logger.setLevel(logging.WARNING)
    try:
        torch.onnx.export(
            module,
            example,
            str(path),
            dynamo=True,
            dynamic_shapes=dynamic,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            external_data=False,
            verbose=False,
        )
    finally:
        for logger, level in zip(chatty, levels):
            logger.setLevel(level)
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, metadata)
    onnx.save(model, str(path))


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
    return Parity(
        images=len(images),
        max_abs_diff=float(differences.max()),
        agreement=float(agree.float().mean()),
        batch_sizes=sorted({len(chunk) for chunk in chunks}, reverse=True),
    )


def _check_packages(fmt: str) -> None:
    """Refuse format=onnx, before anything is loaded, when its packages are missing."""
    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if _version(name) is None]
    if fmt == "onnx" and missing:
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


def export(cfg: DictConfig) -> dict[str, Any]:
    """Export one checkpoint, verify the file, and write export.json beside it; returns export.json's content.

    Every input (settings, checkpoint, CIFAR-10) is checked and loaded before the first file is written.
    Raises ParityError (after writing export.json, `passed: false`) when the file misses the tolerances.
    """
    start = time.perf_counter()
    check(cfg, "export", "nothing was exported", root=ExportSettings)
    _check_packages(cfg.format)
    path = chosen_checkpoint(cfg.ckpt, cfg.run_dir, "export.py")
    classifier = Classifier.load(path, device="cpu", tta=0)
    images = load_cifar10(cfg.data.data_dir, cfg.data.download).test_images[: cfg.check.images]

    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model_path = output_dir / f"model.{cfg.format}"
    opset = cfg.opset if cfg.format == "onnx" else None
    spec = input_spec(len(classifier.classes))
    metadata = {
        "classes": json.dumps(list(classifier.classes)),
        "normalization": json.dumps(classifier.normalization),
        "io": json.dumps(spec),
        "checkpoint": str(path),
    }
    export_start = time.perf_counter()
    export_model(classifier, model_path, cfg.format, cfg.opset, metadata)
    megabytes, seconds = model_path.stat().st_size / 1e6, time.perf_counter() - export_start
    log.info(f"exported {path} to {model_path} ({megabytes:.1f} MB) in {seconds:.1f} s")

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
    log.info(
        f"parity on {parity.images} CIFAR-10 test images through {runtime}: max |logit difference| "
        f"{parity.max_abs_diff:.3g}, top-1 agreement {100 * parity.agreement:.2f}% (batch sizes "
        f"{', '.join(map(str, parity.batch_sizes))}): {'FAILED' if problems else 'passed'}"
    )
    parity.check(cfg.check.max_abs_diff, cfg.check.min_agreement, model_path)
    return summary
