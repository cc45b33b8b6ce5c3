"""The CIFAR-10 batch files: md5-checked (downloaded when allowed) and loaded once per process as uint8 tensors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torchvision.datasets import CIFAR10
from torchvision.datasets.utils import check_integrity

from cifar_lightning.errors import DataError

#: Every file of the official python version, with the md5 torchvision checks it against.
CIFAR10_FILES: tuple[tuple[str, str], ...] = tuple(
    tuple(entry) for entry in (*CIFAR10.train_list, *CIFAR10.test_list, (CIFAR10.meta["filename"], CIFAR10.meta["md5"]))
)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True)
class CIFAR10Arrays:
    """The whole of CIFAR-10. Images are uint8 (N, 3, 32, 32) in channels-last memory."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    classes: tuple[str, ...]


def cifar10_folder(data_dir: str | Path) -> Path:
    return Path(data_dir).expanduser() / CIFAR10.base_folder


def find_cifar10_problems(data_dir: str | Path) -> list[str]:
    """What is wrong with the CIFAR-10 files under `data_dir`, one sentence each; [] if nothing."""
    folder = cifar10_folder(data_dir)
    if not folder.is_dir():
        inside = (Path(data_dir).expanduser() / "data_batch_1").is_file()
        hint = f" ({data_dir} looks like the batches folder itself: point at its parent)" if inside else ""
        return [f"the folder {folder} does not exist{hint}"]
    problems = []
    for name, md5 in CIFAR10_FILES:
        path = folder / name
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif not check_integrity(str(path), md5):
            problems.append(f"{path} is corrupt (its md5 differs from the official {md5})")
    return problems


#: Fingerprints of the folders whose md5s were checked in this process.
_verified: set[tuple] = set()


def _fingerprint(folder: Path) -> tuple:
    """Path, size and mtime of every file: cheap to compute, changes when a file does."""
    stats = [(name, (folder / name).stat()) for name, _ in CIFAR10_FILES]
    return (str(folder.resolve()), tuple((name, st.st_size, st.st_mtime_ns) for name, st in stats))


def ensure_cifar10(data_dir: str | Path, download: bool) -> None:
    """Every CIFAR-10 file present with its official md5 (downloaded if allowed), or a DataError naming each."""
    folder = cifar10_folder(data_dir)
    if all((folder / name).is_file() for name, _ in CIFAR10_FILES) and _fingerprint(folder) in _verified:
        return
    problems = find_cifar10_problems(data_dir)
    if problems and download:
        try:
            CIFAR10(root=str(Path(data_dir).expanduser()), train=True, download=True)
        except Exception as exc:  # network, disk, or archive errors: all end the same way
            raise DataError(
                f"CIFAR-10 under {folder} is not usable ({'; '.join(problems)}) and downloading it "
                f"failed ({type(exc).__name__}: {exc}). Fix: rerun with internet access so torchvision "
                f"can download its md5-checked copy, or point data.data_dir at a folder that holds "
                f"the official cifar-10-batches-py/ (e.g. data.data_dir=../shared/data)."
            ) from exc
        problems = find_cifar10_problems(data_dir)
    if problems:
        fetch = "" if download else ", or run with data.download=true to fetch a fresh md5-checked copy there"
        raise DataError(
            f"CIFAR-10 under {folder} is not usable: {'; '.join(problems)}. Fix: point "
            f"data.data_dir at the folder that contains the official cifar-10-batches-py/ "
            f"(e.g. data.data_dir=../shared/data){fetch}."
        )
    _verified.add(_fingerprint(folder))


#: The one loaded copy (180 MB), by its folder's fingerprint.
_loaded: dict[tuple, CIFAR10Arrays] = {}


def load_cifar10(data_dir: str | Path, download: bool = False) -> CIFAR10Arrays:
    """Load all 60,000 images and labels as tensors (cached per process while the files are unchanged)."""
    ensure_cifar10(data_dir, download)
    key = _fingerprint(cifar10_folder(data_dir))
    if key not in _loaded:
        root = str(Path(data_dir).expanduser())
        try:
            train, test = CIFAR10(root, train=True), CIFAR10(root, train=False)
        except Exception as exc:  # e.g. a file that cannot be read although its md5 was fine before
            raise DataError(
                f"CIFAR-10 under {cifar10_folder(data_dir)} could not be read ({type(exc).__name__}: {exc}). "
                f"Fix: check the files' permissions, or replace the folder with a fresh copy (data.download=true)."
            ) from exc
        _loaded.clear()
        # numpy HWC -> NCHW views with channels-last strides, no copy.
        images = [torch.from_numpy(split.data).permute(0, 3, 1, 2) for split in (train, test)]
        labels = [torch.tensor(split.targets, dtype=torch.long) for split in (train, test)]
        _loaded[key] = CIFAR10Arrays(images[0], labels[0], images[1], labels[1], tuple(train.classes))
    return _loaded[key]
