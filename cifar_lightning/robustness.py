"""Corruption robustness as a step of evaluate.py (robustness=generated or official): the model's accuracy on
CIFAR-10-C's 15 corruptions x 5 severities, and how often each OOD detector calls a corrupted CIFAR-10 image
foreign (a false alarm: the image is in-distribution, only damaged). Writes robustness.json, robustness.md and
robustness.png; CIFAR-10.1 (v6) is measured too where its files are present.

`generated` corrupts the test images here (cifar_lightning.corruptions, a re-implementation of CIFAR-10-C's recipe,
labelled as such); `official` reads the published CIFAR-10-C arrays from <data_dir>/CIFAR-10-C/ (downloaded from
Zenodo, md5-checked, with download=True). CIFAR-10.1's authors publish no checksums, so it is never downloaded.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor
from torchvision.datasets.utils import download_and_extract_archive

from cifar_lightning.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from cifar_lightning.errors import ConfigError, DataError, one_line
from cifar_lightning.figures import new_figure, save
from cifar_lightning.inference import Classifier
from cifar_lightning.report import SectionItem, Table
from cifar_lightning.tables import markdown_table

__all__ = ["CORRUPTIONS", "SEVERITIES", "OfficialC", "load_official_c", "load_cifar101", "run_robustness"]

log = logging.getLogger(__name__)
OFFICIAL_FOLDER = "CIFAR-10-C"
OFFICIAL_URL = "https://zenodo.org/records/2535967/files/CIFAR-10-C.tar"
OFFICIAL_MD5 = "56bf5dcef84df0e2308c6dcbcbbd8499"  # published on the Zenodo record
PER_SEVERITY = 10_000  # each official array: 5 severity blocks of the 10,000 test images, in test-set order
CIFAR101_FILES = ("cifar10.1_v6_data.npy", "cifar10.1_v6_labels.npy")
GENERATED_LABEL = "generated (re-implementation of CIFAR-10-C's recipe, not the official files)"
OFFICIAL_LABEL = "official CIFAR-10-C"
CHUNK = 1000  # images corrupted at once, each chunk with its own random stream: bounded memory
FILES = ("robustness.json", "robustness.md", "robustness.png")


@dataclass(frozen=True)
class OfficialC:
    """The official CIFAR-10-C arrays, memory-mapped: per corruption uint8 (50,000, 32, 32, 3), and the labels."""

    folder: Path
    arrays: dict[str, np.ndarray]
    labels: np.ndarray
    problems: list[str] = field(default_factory=list)


def _official_fix(folder: Path) -> str:
    return (
        f"Fix: run with data.download=true to download CIFAR-10-C.tar (2.9 GB, md5-checked) from Zenodo "
        f"(record 2535967) and unpack it into {folder}, or put the official .npy files there yourself, or measure "
        f"on corruptions generated here instead with robustness=generated."
    )


def _check_array(path: Path, shape: tuple[int, ...]) -> tuple[np.ndarray | None, str]:
    """The array at path (memory-mapped) if it has the shape (None: any length) and the right dtype, else a problem."""
    if not path.is_file():
        return None, f"{path.name} is missing"
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # truncated or not .npy
        return None, f"{path.name} is not a readable .npy file ({one_line(exc, 120)})"
    integer = array.dtype == np.uint8 if len(shape) > 1 else np.issubdtype(array.dtype, np.integer)
    fits = array.ndim == len(shape) and all(want in (None, got) for want, got in zip(shape, array.shape))
    if not (integer and fits):
        wanted = "uint8 " if len(shape) > 1 else "integer "
        expected = "(" + ", ".join("N" if size is None else f"{size:,}" for size in shape) + ")"
        return None, f"{path.name} holds {array.dtype} {tuple(array.shape)}, not {wanted}{expected}"
    return array, ""


def _read_official(folder: Path) -> OfficialC:
    arrays, problems = {}, []
    for name in CORRUPTIONS:
        array, problem = _check_array(folder / f"{name}.npy", (5 * PER_SEVERITY, 32, 32, 3))
        arrays[name] = array
        problems += [problem] if problem else []
    labels, problem = _check_array(folder / "labels.npy", (5 * PER_SEVERITY,))
    problems += [problem] if problem else []
    return OfficialC(folder, arrays, labels, problems)


def load_official_c(data_dir: str | Path, download: bool) -> OfficialC:
    """The official CIFAR-10-C files in <data_dir>/CIFAR-10-C/, each checked for shape and dtype; downloaded (and
    md5-checked) first when any is missing and `download`; a DataError naming each problem and the fix otherwise."""
    root = Path(data_dir).expanduser()
    folder = root / OFFICIAL_FOLDER
    official = _read_official(folder) if folder.is_dir() else None
    if official is not None and not official.problems:
        return official
    if download:
        log.info("downloading CIFAR-10-C (2.9 GB) from %s into %s", OFFICIAL_URL, root)
        try:
            download_and_extract_archive(OFFICIAL_URL, str(root), md5=OFFICIAL_MD5, remove_finished=True)
        except Exception as exc:
            raise DataError(
                f"downloading the official CIFAR-10-C from {OFFICIAL_URL} into {root} failed "
                f"({type(exc).__name__}: {one_line(exc, 300)}). {_official_fix(folder)}"
            ) from exc
        official = _read_official(folder)
        if not official.problems:
            return official
    what = f"the folder {folder} does not exist" if official is None else "; ".join(official.problems)
    raise DataError(f"the official CIFAR-10-C is not usable: {what}. {_official_fix(folder)}")


def load_cifar101(data_dir: str | Path) -> tuple[Tensor, Tensor] | None:
    """CIFAR-10.1 v6 (images uint8 (N, 3, 32, 32), labels) from <data_dir>/ or <data_dir>/CIFAR-10.1/, or None
    (logged) when its files are absent; a DataError for a file of the wrong shape or type."""
    root = Path(data_dir).expanduser()
    for folder in (root, root / "CIFAR-10.1"):
        if not (folder / CIFAR101_FILES[0]).is_file():
            continue
        images, problem = _check_array(folder / CIFAR101_FILES[0], (None, 32, 32, 3))
        labels, other = _check_array(folder / CIFAR101_FILES[1], (None,))
        problem = problem or other
        if not problem and len(images) != len(labels):
            problem = f"{len(images)} images but {len(labels)} labels"
        if problem:
            raise DataError(
                f"CIFAR-10.1 in {folder} is not usable: {problem}. Fix: replace {', '.join(CIFAR101_FILES)} with "
                f"the files of github.com/modestyachts/CIFAR-10.1 (datasets/), or remove them to skip CIFAR-10.1."
            )
        return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))), torch.from_numpy(labels[:].copy())
    log.info("CIFAR-10.1 v6 skipped: no %s in %s or %s", CIFAR101_FILES[0], root, root / "CIFAR-10.1")
    return None


def generated_images(images: Tensor, name: str, severity: int, seed: int) -> Tensor:
    """The images with one corruption, CHUNK at a time (chunk k: random stream k of (seed, name, severity))."""
    parts = [
        corrupt(images[start : start + CHUNK], name, severity, seed, part=start // CHUNK)
        for start in range(0, len(images), CHUNK)
    ]
    return torch.cat(parts) if parts else images.clone()


def official_images(official: OfficialC, name: str, severity: int, count: int) -> Tensor:
    """The first `count` images of one severity block of an official array, as uint8 (N, 3, 32, 32)."""
    start = (severity - 1) * PER_SEVERITY
    block = np.asarray(official.arrays[name][start : start + count])
    return torch.from_numpy(np.ascontiguousarray(block.transpose(0, 3, 1, 2)))


def _accuracy(logits: Tensor, labels: Tensor) -> float:
    return (logits.argmax(1) == labels).double().mean().item() if len(labels) else float("nan")


def _false_alarms(detectors: Sequence[Any], features: Any) -> dict[str, float]:
    """Per detector: the share of (in-distribution) images it scores above its threshold, i.e. calls foreign."""
    return {d.name: (d.score(features) > d.threshold).double().mean().item() for d in detectors}


def _checked_source(source: Any, data_dir: str | Path, download: bool) -> OfficialC | None:
    if isinstance(source, OfficialC):
        return source
    if source == "official":
        return load_official_c(data_dir, download)
    if source == "generated":
        return None
    raise ConfigError(f"unknown robustness source {source!r}. Fix: use robustness=generated or robustness=official.")


def run_robustness(
    classifier: Classifier,
    images: Tensor,
    labels: Tensor,
    *,
    source: str | OfficialC,
    data_dir: str | Path,
    download: bool,
    max_images: int | None,
    seed: int,
    batch_size: int,
    progress: bool,
    detectors: Sequence[Any] = (),
    output_dir: Path,
) -> tuple[dict[str, Any], list[tuple[str, list[SectionItem]]]]:
    """Accuracy (argmax of the logits, no TTA) and detector false alarms on every corruption x severity of the
    first `max_images` (None: all) test images; `source` "generated", "official", or load_official_c's result
    (load it early so that missing files fail before any output). Writes FILES into output_dir; returns the
    summary for evaluation.json and the report's sections."""
    start = time.perf_counter()
    official = _checked_source(source, data_dir, download)  # every input is checked before any work
    cifar101 = load_cifar101(data_dir)
    count = len(images) if max_images is None else min(max_images, len(images))
    images, labels = images[:count], labels[:count]
    if official is not None and not torch.equal(torch.from_numpy(official.labels[:count].astype(np.int64)), labels):
        raise DataError(
            f"the labels in {official.folder / 'labels.npy'} are not the CIFAR-10 test labels in test-set order, so "
            f"its images are not the test images. {_official_fix(official.folder)}"
        )
    used = [d for d in detectors if not d.needs_images]
    for skipped in [d.name for d in detectors if d.needs_images]:
        log.info("robustness: %s scores images through the whole network; its false alarms are not measured", skipped)
    layers = sorted({layer for d in used for layer in d.layers})

    def measure(batch: Tensor) -> tuple[float, dict[str, float]]:
        features = classifier.features(batch, layers, batch_size)
        return _accuracy(features.logits, labels[: len(batch)]), _false_alarms(used, features)

    clean_acc, clean_alarms = measure(images)
    accuracy = {name: [] for name in CORRUPTIONS}
    alarms = {d.name: {name: [] for name in CORRUPTIONS} for d in used}
    corruption_seconds = dict.fromkeys(CORRUPTIONS, 0.0)
    columns = (TextColumn("Robustness {task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("", total=len(CORRUPTIONS) * len(SEVERITIES))
        for name in CORRUPTIONS:
            for severity in SEVERITIES:
                bar.update(task, description=f"{name} {severity}")
                tick = time.perf_counter()
                if official is None:
                    batch = generated_images(images, name, severity, seed)
                else:
                    batch = official_images(official, name, severity, count)
                corruption_seconds[name] += time.perf_counter() - tick
                acc, rates = measure(batch)
                accuracy[name].append(acc)
                for detector, rate in rates.items():
                    alarms[detector][name].append(rate)
                bar.advance(task)
    summary = _summary(official, count, seed, clean_acc, accuracy, used, clean_alarms, alarms)
    summary["skipped_detectors"] = [d.name for d in detectors if d.needs_images]
    if cifar101 is not None:
        predicted = classifier.features(cifar101[0], [], batch_size).logits
        summary["cifar10_1"] = {"version": "v6", "acc": _accuracy(predicted, cifar101[1]), "images": len(cifar101[1])}
    summary["corruption_seconds"] = {name: round(s, 3) for name, s in corruption_seconds.items()}
    summary["seconds"] = round(time.perf_counter() - start, 3)
    log.info(
        "robustness (%s): clean %.4f, mean corruption accuracy %.4f on %d images in %.1f s",
        summary["source"], clean_acc, summary["mean_corruption_acc"], count, summary["seconds"],
    )  # fmt: skip
    return summary, write_outputs(summary, Path(output_dir))


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def _summary(official, count, seed, clean_acc, accuracy, used, clean_alarms, alarms) -> dict[str, Any]:
    """The numbers of a run, as evaluation.json and robustness.json hold them (lists: severities 1..5)."""
    every = [acc for values in accuracy.values() for acc in values]
    return {
        "source": OFFICIAL_LABEL if official is not None else GENERATED_LABEL,
        "images": count,
        "seed": seed if official is None else None,
        "severities": list(SEVERITIES),
        "clean_acc": clean_acc,
        "accuracy": accuracy,
        "mean_corruption_acc": _mean(every),
        "mean_acc_by_severity": [_mean([values[i] for values in accuracy.values()]) for i in range(len(SEVERITIES))],
        "false_alarms": {
            d.name: {
                "threshold": float(d.threshold),
                "clean": clean_alarms[d.name],
                "corrupted": alarms[d.name],
                "mean": _mean([rate for values in alarms[d.name].values() for rate in values]),
            }
            for d in used
        },
    }


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def accuracy_table(summary: dict[str, Any]) -> Table:
    """Accuracy % per corruption (rows) and severity (columns), their means, and the clean accuracy."""
    rows = [[name, *map(_pct, values), _pct(_mean(values))] for name, values in summary["accuracy"].items()]
    rows.append(["mean", *map(_pct, summary["mean_acc_by_severity"]), _pct(summary["mean_corruption_acc"])])
    rows.append(["clean (no corruption)", *[""] * len(SEVERITIES), _pct(summary["clean_acc"])])
    header = ["corruption", *(f"severity {s}" for s in SEVERITIES), "mean"]
    return Table("Accuracy (%) on corrupted test images", header, rows)


def false_alarm_table(summary: dict[str, Any]) -> Table | None:
    """False alarms % (corrupted in-distribution images called OOD), corruption (rows) x detector (columns)."""
    detectors = summary["false_alarms"]
    if not detectors:
        return None
    rows = [["clean (no corruption)", *(_pct(d["clean"]) for d in detectors.values())]]
    for name in CORRUPTIONS:
        rows.append([name, *(_pct(_mean(d["corrupted"][name])) for d in detectors.values())])
    rows.append(["mean of all corruptions", *(_pct(d["mean"]) for d in detectors.values())])
    title = "False alarms (%): corrupted test images that a detector calls OOD, mean of the 5 severities"
    return Table(title, ["corruption", *detectors], rows)


def write_outputs(summary: dict[str, Any], out: Path) -> list[tuple[str, list[SectionItem]]]:
    """robustness.json, robustness.md and robustness.png in `out`; the report's sections."""
    out.mkdir(parents=True, exist_ok=True)
    (out / FILES[0]).write_text(json.dumps(summary, indent=2) + "\n")
    figure = plot_robustness(summary, out / FILES[2])
    tables = [t for t in (accuracy_table(summary), false_alarm_table(summary)) if t is not None]
    note = (
        f"Source: {summary['source']}; {summary['images']:,} test images per corruption and severity; accuracy is "
        f"the argmax of the logits, without test-time augmentation. Clean accuracy {_pct(summary['clean_acc'])}%, "
        f"mean corruption accuracy {_pct(summary['mean_corruption_acc'])}%."
    )
    if "cifar10_1" in summary:
        new = summary["cifar10_1"]
        note += f" CIFAR-10.1 ({new['version']}, {new['images']:,} images): accuracy {_pct(new['acc'])}%."
    if summary["skipped_detectors"]:
        note += f" Not measured (they score images, not features): {', '.join(summary['skipped_detectors'])}."
    lines = ["# Corruption robustness", "", note, ""]
    for table in tables:
        lines += [f"## {table.title}", "", markdown_table(table.header, table.rows)]
    (out / FILES[1]).write_text("\n".join(lines))
    return [("Corruption robustness (CIFAR-10-C's 15 corruptions x 5 severities)", [note, figure, *tables])]


def plot_robustness(summary: dict[str, Any], path: Path) -> Path:
    """Accuracy against severity, one line per corruption, their mean in bold and the clean accuracy dashed."""
    figure = new_figure(9, 5.5)
    axes = figure.add_subplot()
    for i, (name, values) in enumerate(summary["accuracy"].items()):
        axes.plot(SEVERITIES, [100 * v for v in values], marker=".", lw=1, label=name, color=colormaps["tab20"](i))
    mean = [100 * v for v in summary["mean_acc_by_severity"]]
    axes.plot(SEVERITIES, mean, color="black", lw=3, marker="o", label="mean")
    axes.axhline(100 * summary["clean_acc"], color="black", ls="--", lw=1, label="clean")
    axes.set(xlabel="severity", ylabel="accuracy (%)", xticks=list(SEVERITIES), ylim=(0, 100))
    axes.set_title(f"Accuracy under corruption ({summary['source']})", fontsize=9)
    axes.legend(fontsize=7, ncol=2, loc="center left", bbox_to_anchor=(1.01, 0.5))
    axes.grid(alpha=0.3)
    return save(figure, path)
