"""The standard OOD sets built from torchvision: tiny files in torchvision's own on-disk formats (a CIFAR-100
pickle, MNIST/Fashion-MNIST idx files), read through torchvision's dataset classes with their md5 lists set to
the md5s of the files written here, and saved as the documented .npz; evaluate() builds missing sets that way,
and without them (offline) stops before writing anything. The network is cut off in every test."""

import gzip
import hashlib
import json
import pickle
import struct
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torchvision.datasets

from cifar_lightning.config.schema import problems
from cifar_lightning.errors import DataError
from cifar_lightning.evaluation import evaluate
from cifar_lightning.ood.sets import fetch_set, prepare_sets
from tests.conftest import compose_evaluate

N_TEST, N_TRAIN = 12, 4


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any download attempt fails at once, as on a machine without internet."""

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("the network is cut off in this test")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def write_cifar100(root: Path, monkeypatch, seed: int = 0, patch_md5: bool = True) -> dict[str, np.ndarray]:
    """cifar-100-python/{train,test,meta} as torchvision reads them (pickled dicts: `data` N x 3072 uint8 in CHW
    order, `fine_labels`); returns the test split as the .npz should hold it."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    expected = {}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        data = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        labels = rng.integers(0, 100, n).tolist()
        entry = {
            "data": data,
            "fine_labels": labels,
            "coarse_labels": [label // 5 for label in labels],
            "filenames": [f"{split}_{i}.png" for i in range(n)],
            "batch_label": f"{split} batch",
        }
        (folder / split).write_bytes(pickle.dumps(entry))
        if split == "test":
            expected = {"images": data.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1), "labels": np.array(labels)}
    meta = {"fine_label_names": [f"fine{i}" for i in range(100)], "coarse_label_names": [f"c{i}" for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta))
    if patch_md5:
        cls = torchvision.datasets.CIFAR100
        monkeypatch.setattr(cls, "train_list", [["train", md5(folder / "train")]])
        monkeypatch.setattr(cls, "test_list", [["test", md5(folder / "test")]])
        monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(folder / "meta")})
    return expected


def write_mnist_like(root: Path, class_name: str, monkeypatch, seed: int = 0, gz: bool = True) -> dict[str, np.ndarray]:
    """<class_name>/raw/ with the four idx files: gzipped as torchvision downloads them (its `resources` md5s set
    to theirs, so it checks and extracts them) or already extracted, as torchvision leaves them."""
    rng = np.random.default_rng(seed)
    raw = root / class_name / "raw"
    raw.mkdir(parents=True)
    resources, expected = [], {}
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        files = {
            f"{prefix}-images-idx3-ubyte": struct.pack(">IIII", 0x0803, n, 28, 28) + images.tobytes(),
            f"{prefix}-labels-idx1-ubyte": struct.pack(">II", 0x0801, n) + labels.tobytes(),
        }
        for name, content in files.items():
            if gz:
                (raw / f"{name}.gz").write_bytes(gzip.compress(content, mtime=0))
                resources.append((f"{name}.gz", md5(raw / f"{name}.gz")))
            else:
                (raw / name).write_bytes(content)
        if prefix == "t10k":
            expected = {"images": images, "labels": labels.astype(np.int64)}
    if gz:
        monkeypatch.setattr(getattr(torchvision.datasets, class_name), "resources", resources)
    return expected


def write_all(ood_dir: Path, monkeypatch, gz: bool = True) -> dict[str, dict[str, np.ndarray]]:
    """The three standard sets in torchvision's formats under <ood_dir>/torchvision/, where evaluate.py looks."""
    root = ood_dir / "torchvision"
    return {
        "cifar100": write_cifar100(root, monkeypatch, seed=1),
        "mnist": write_mnist_like(root, "MNIST", monkeypatch, seed=2, gz=gz),
        "fashion_mnist": write_mnist_like(root, "FashionMNIST", monkeypatch, seed=3, gz=gz),
    }


def assert_documented_npz(path: Path, expected: dict[str, np.ndarray]) -> None:
    """np.savez_compressed with `images` uint8 as torchvision holds them and `labels` int64, nothing else."""
    with np.load(path, allow_pickle=False) as archive:
        assert sorted(archive.files) == ["images", "labels"]
        images, labels = archive["images"], archive["labels"]
    assert images.dtype == np.uint8 and labels.dtype == np.int64
    np.testing.assert_array_equal(images, expected["images"])
    np.testing.assert_array_equal(labels, expected["labels"])


@pytest.mark.parametrize("gz, download", [(True, True), (False, False)])
def test_torchvision_files_become_the_documented_npz(tmp_path, monkeypatch, gz, download):
    """Downloaded archives (md5-checked and extracted by torchvision) or already extracted files (offline)."""
    expected = write_all(tmp_path, monkeypatch, gz=gz)
    for source, shape in (
        ("cifar100", (N_TEST, 32, 32, 3)),
        ("mnist", (N_TEST, 28, 28)),
        ("fashion_mnist", (N_TEST, 28, 28)),
    ):
        path = fetch_set(source, tmp_path / f"{source}_test.npz", download=download)
        assert path == tmp_path / f"{source}_test.npz" and expected[source]["images"].shape == shape
        assert_documented_npz(path, expected[source])
    assert not list(tmp_path.glob(".*partial"))
    assert (tmp_path / "torchvision" / "MNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()  # torchvision's own


def test_files_that_fail_torchvisions_md5_check_are_refused(tmp_path, monkeypatch):
    write_cifar100(tmp_path / "torchvision", monkeypatch, patch_md5=False)  # not the official md5s
    with pytest.raises(DataError, match="CIFAR-100 files are missing from .*cifar-100-python/ too, or fail its checks"):
        fetch_set("cifar100", tmp_path / "cifar100_test.npz", download=False)
    with pytest.raises(DataError, match="downloading torchvision's CIFAR-100 into .* failed .*network is cut off"):
        fetch_set("cifar100", tmp_path / "cifar100_test.npz", download=True)
    assert not (tmp_path / "cifar100_test.npz").exists()


def test_missing_sets_are_named_together_with_the_fixes(tmp_path):
    specs = {
        name: {"path": str(tmp_path / f"{name}_test.npz"), "fetch": name}
        for name in ("cifar100", "mnist", "fashion_mnist")
    }
    for download, fix in ((False, "rerun with data.download=true"), (True, "check this machine's internet")):
        with pytest.raises(DataError) as info:
            prepare_sets({**specs, "noise": {"noise": "uniform", "n": 5}}, seed=0, download=download)
        message = str(info.value)
        assert "\n" not in message and fix in message and "ood=none" in message
        for name in specs:
            assert f"{tmp_path / f'{name}_test.npz'} does not exist" in message
        assert f"put the files in {tmp_path}" in message and str(tmp_path / "torchvision") in message
    refused = problems({"ood": {"sets": {"x": {"path": "x.npz", "fetch": "svhn"}}}})
    assert "ood.sets.x.fetch must be one of cifar100, mnist, fashion_mnist" in refused[0][1]
    refused = problems({"ood": {"sets": {"x": {"path": "folder/", "fetch": "mnist"}}}})
    assert refused[0][0] == "ood.sets.x" and "needs the .npz path it writes" in refused[0][1]


def evaluate_cfg(run: Path, data_dir: Path, data_root: Path, out: Path, *overrides: str):
    """evaluate.py's config on a data folder of its own (the real CIFAR-10 linked in, nothing under ood/), with
    quick OOD settings."""
    data_root.mkdir(parents=True, exist_ok=True)
    (data_root / "cifar-10-batches-py").symlink_to(data_dir / "cifar-10-batches-py", target_is_directory=True)
    return compose_evaluate(
        [
            f"run_dir={run}",
            f"data.data_dir={data_root}",
            "ood.fit_images=500",
            "ood.detectors=[msp]",
            "ood.sets.gaussian_noise.n=50",
            "ood.sets.uniform_noise.n=50",
            "ood.gallery_size=2",
            "gallery.size=2",
            "gradcam.count=1",
            *overrides,
        ],
        out,
        ood=True,
    )


def test_evaluate_builds_missing_sets_from_torchvision(tiny_run, data_dir, tmp_path, monkeypatch):
    """No ood/*.npz, but torchvision's files are there (download allowed, no network needed): OOD runs on them
    and the .npz files are left in the documented form, where ood.data_dir says."""
    data_root, out = tmp_path / "data", tmp_path / "out"
    expected = write_all(data_root / "ood", monkeypatch)
    evaluate(evaluate_cfg(tiny_run[0], data_dir, data_root, out))
    saved = json.loads((out / "ood.json").read_text())
    for name in ("cifar100", "mnist", "fashion_mnist"):
        path = data_root / "ood" / f"{name}_test.npz"
        assert saved["sets"][name]["n"] == N_TEST and saved["sets"][name]["source"] == str(path)
        assert_documented_npz(path, expected[name])
    assert (out / "report.html").is_file() and (out / "ood.md").is_file()


def test_offline_without_the_sets_evaluate_stops_before_writing_anything(tiny_run, data_dir, tmp_path):
    data_root, out = tmp_path / "data", tmp_path / "out"
    cfg = evaluate_cfg(tiny_run[0], data_dir, data_root, out, "data.download=false")
    with pytest.raises(DataError) as info:
        evaluate(cfg)
    assert not out.exists()  # no evaluation.json, figures or gradcam/
    assert cfg.ood.download is False  # it follows data.download
    message = str(info.value)
    for name in ("cifar100", "mnist", "fashion_mnist"):
        assert f"{data_root / 'ood' / f'{name}_test.npz'} does not exist" in message
    assert "ood=none" in message and "data.download=true" in message and "\n" not in message
    assert not (data_root / "ood" / "torchvision").exists()  # nothing was downloaded or created
