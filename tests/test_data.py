import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from cifar_lightning.config import check
from cifar_lightning.config.data import CIFAR10Settings
from cifar_lightning.config.schema import defaults
from cifar_lightning.data import module as module_mod
from cifar_lightning.data.files import CIFAR10_FILES, CIFAR10Arrays, ensure_cifar10, find_cifar10_problems, load_cifar10
from cifar_lightning.data.loader import TensorBatchLoader
from cifar_lightning.data.module import CIFAR10DataModule, channel_stats, stratified_split
from cifar_lightning.errors import ConfigError, DataError
from cifar_lightning.held_out import FALLBACK_VAL_FRACTION, held_out_split


def test_real_files_pass_the_md5_check(data_dir):
    assert find_cifar10_problems(data_dir) == []


def test_loads_all_images_as_uint8(data_dir):
    arrays = load_cifar10(data_dir)
    assert arrays.train_images.shape == (50000, 3, 32, 32) and arrays.train_images.dtype == torch.uint8
    assert arrays.test_images.shape == (10000, 3, 32, 32) and arrays.test_images.dtype == torch.uint8
    assert torch.bincount(arrays.train_labels).tolist() == [5000] * 10
    assert torch.bincount(arrays.test_labels).tolist() == [1000] * 10
    # Known facts of the official files: the first train image is a frog whose red plane starts 59, 43, 50.
    assert arrays.train_labels[0] == 6 and arrays.train_images[0, 0, 0, :3].tolist() == [59, 43, 50]
    assert arrays.test_labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert arrays.classes[0] == "airplane" and arrays.classes[9] == "truck"


def test_split_is_disjoint_stratified_seeded_and_sized():
    labels = torch.arange(10).repeat_interleave(5000)
    train_idx, val_idx = stratified_split(labels, 0.1, seed=0)
    assert len(train_idx) == 45000 and len(val_idx) == 5000
    assert len(set(train_idx.tolist()) & set(val_idx.tolist())) == 0
    assert sorted(train_idx.tolist() + val_idx.tolist()) == list(range(50000))
    assert torch.bincount(labels[val_idx]).tolist() == [500] * 10
    again, _ = stratified_split(labels, 0.1, seed=0)
    other, _ = stratified_split(labels, 0.1, seed=1)
    assert torch.equal(train_idx, again) and not torch.equal(train_idx, other)


def test_channel_stats_match_a_float_computation():
    x = torch.randint(0, 256, (700, 3, 8, 8), dtype=torch.uint8)
    mean, std = channel_stats(x)
    f = x.double() / 255
    assert torch.allclose(torch.tensor(mean, dtype=torch.float64), f.mean(dim=(0, 2, 3)), atol=1e-12)
    assert torch.allclose(torch.tensor(std, dtype=torch.float64), f.std(dim=(0, 2, 3), unbiased=False), atol=1e-9)


def test_normalize_gives_zero_mean_unit_variance(data_dir):
    dm = CIFAR10DataModule(data_dir=str(data_dir), download=False)
    dm.setup()
    x = dm.normalize(dm.arrays.train_images[dm.train_idx])
    assert x.dtype == torch.float32
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-4)


def test_normalization_uses_the_training_split_only(data_dir, monkeypatch):
    real = load_cifar10(data_dir)
    _, val_idx = stratified_split(real.train_labels, 0.1, 0)
    # Same data, but every validation and test image white: the statistics must not move.
    train_images = real.train_images.clone()
    train_images[val_idx] = 255
    white_test = torch.full_like(real.test_images, 255)
    tampered = CIFAR10Arrays(train_images, real.train_labels, white_test, real.test_labels, real.classes)
    monkeypatch.setattr(module_mod, "load_cifar10", lambda *a, **k: tampered)
    dm = CIFAR10DataModule(data_dir=str(data_dir), download=False)
    dm.setup()
    clean = CIFAR10DataModule(data_dir=str(data_dir), download=False)
    monkeypatch.setattr(module_mod, "load_cifar10", lambda *a, **k: real)
    clean.setup()
    assert dm.mean == clean.mean and dm.std == clean.std
    assert torch.equal(dm.train_idx, clean.train_idx)
    assert dm.mean != channel_stats(real.train_images)[0]  # not the all-50,000 statistics
    # Checkpoints carry the statistics.
    restored = CIFAR10DataModule(data_dir=str(data_dir))
    restored.load_state_dict(clean.state_dict())
    assert restored.mean == clean.mean and restored.std == clean.std


def test_datamodule_batches(data_dir):
    dm = CIFAR10DataModule(data_dir=str(data_dir), download=False, batch_size=128, eval_batch_size=1000)
    dm.setup()
    train, val, test = dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()
    assert (len(train), len(val), len(test)) == (352, 5, 10)
    images, labels = next(iter(train))
    assert images.shape == (128, 3, 32, 32) and images.dtype == torch.uint8 and labels.shape == (128,)
    assert sum(len(y) for _, y in test) == 10000


def test_no_validation_split_trains_on_all_images_and_drop_last_keeps_full_batches(data_dir):
    # airbench's layout: all 50,000 images, 50,000 // 1024 = 48 full batches per epoch.
    dm = CIFAR10DataModule(data_dir=str(data_dir), download=False, val_fraction=0, batch_size=1024, drop_last=True)
    dm.setup()
    assert not dm.has_validation and len(dm.train_idx) == 50000 and dm.val_dataloader() == []
    assert torch.equal(dm.first_train_images(5000), dm.arrays.train_images[:5000])  # the data set's own order
    train = dm.train_dataloader()
    sizes = [len(y) for _, y in train]
    assert len(train) == 48 and sizes == [1024] * 48
    assert len(TensorBatchLoader(dm.arrays.train_images, dm.arrays.train_labels, 1024, shuffle=True)) == 49  # kept


def test_evaluation_keeps_the_runs_split_or_holds_out_training_images_for_a_run_without_one():
    kept = {"val_fraction": 0.1, "split_seed": 3}
    assert held_out_split({**kept, "batch_size": 8}) == (kept, False)
    fallback = {"val_fraction": FALLBACK_VAL_FRACTION, "split_seed": 3}
    assert held_out_split({"val_fraction": 0, "split_seed": 3}) == (fallback, True)
    assert held_out_split(None) == ({}, False)  # a checkpoint without its data config: the defaults


def test_drop_last_leaves_a_different_remainder_out_each_epoch_and_never_at_evaluation():
    labels = torch.arange(1000)
    images = torch.zeros(1000, 3, 4, 4, dtype=torch.uint8)
    loader = TensorBatchLoader(images, labels, batch_size=300, shuffle=True, seed=3, drop_last=True)
    epochs = [torch.cat([y for _, y in loader]) for _ in range(2)]
    assert len(loader) == 3 and [len(e) for e in epochs] == [900, 900]
    assert set(range(1000)) - set(epochs[0].tolist()) != set(range(1000)) - set(epochs[1].tolist())
    evaluation = TensorBatchLoader(images, labels, batch_size=300, drop_last=False)
    assert len(evaluation) == 4 and sum(len(y) for _, y in evaluation) == 1000


def test_loader_visits_every_image_once_per_epoch_in_a_seeded_order():
    labels = torch.arange(1000)
    images = torch.zeros(1000, 3, 4, 4, dtype=torch.uint8)
    loader = TensorBatchLoader(images, labels, batch_size=128, shuffle=True, seed=3)
    first = torch.cat([y for _, y in loader])
    second = torch.cat([y for _, y in loader])
    assert sorted(first.tolist()) == list(range(1000)) == sorted(second.tolist())
    assert not torch.equal(first, second)  # a new permutation each epoch
    again = TensorBatchLoader(images, labels, batch_size=128, shuffle=True, seed=3)
    assert torch.equal(torch.cat([y for _, y in again]), first)
    ranks = [torch.cat([y for _, y in TensorBatchLoader(images, labels, 100, True, 3, r, 3)]) for r in range(3)]
    assert sorted(torch.cat(ranks).tolist()) == list(range(1000))
    assert all(len(TensorBatchLoader(images, labels, 100, True, 3, r, 3)) == 4 for r in range(3))


def test_augmentation_only_while_training(data_dir):
    dm = CIFAR10DataModule(data_dir=str(data_dir), download=False, crop_padding=4, flip=True)
    dm.setup()
    x = dm.arrays.test_images[:64]
    assert torch.equal(dm.on_after_batch_transfer((x, None), 0)[0], dm.normalize(x))  # no trainer: no augmentation
    augmented = dm.augment(x)
    assert augmented.shape == x.shape and not torch.equal(augmented, x)


@pytest.mark.parametrize(
    "key, value, allowed",
    [
        ("val_fraction", -0.1, "in [0, 1)"),
        ("val_fraction", 1.2, "in [0, 1)"),
        ("val_fraction", True, "in [0, 1)"),
        ("drop_last", "yes", "true or false"),
        ("batch_size", 0, "an integer >= 1"),
        ("crop_padding", -1, "an integer >= 0"),
        ("translate", -1, "in [0, 16]"),
        ("translate", 17, "in [0, 16]"),
        ("cutout", 33, "in [0, 32]"),
        ("cutout", -2, "in [0, 32]"),
        ("flip", "sometimes", "false, true or alternating"),
        ("flip", 1, "false, true or alternating"),
        ("on_device", "yes", "true or false"),
    ],
)
def test_invalid_data_settings_are_refused_by_the_schema(key, value, allowed):
    node = {**defaults(CIFAR10Settings), key: value}
    with pytest.raises(ConfigError) as err:
        check(OmegaConf.create({"data": node}), "train", "nothing was trained")
    message = str(err.value)
    assert f"invalid `data` config: data.{key} must be {allowed}, got {value!r}" in message
    assert f"python train.py data.{key}=<value>" in message and "conf/data/" in message


def test_the_data_presets_defaults_are_the_datamodules():
    preset = CIFAR10DataModule()
    assert {key: getattr(preset, key) for key in CIFAR10Settings.model_fields} == CIFAR10Settings().model_dump()


def copy_of_data(data_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "cifar-10-batches-py"
    shutil.copytree(data_dir / "cifar-10-batches-py", target)
    return tmp_path


def test_missing_folder_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(DataError) as err:
        ensure_cifar10(tmp_path / "nowhere", download=False)
    message = str(err.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in message
    assert "data.data_dir" in message and "data.download=true" in message


def test_batches_folder_itself_gets_a_hint(data_dir):
    with pytest.raises(DataError, match="point at its parent"):
        ensure_cifar10(data_dir / "cifar-10-batches-py", download=False)


def test_one_changed_byte_is_caught(data_dir, tmp_path):
    root = copy_of_data(data_dir, tmp_path)
    path = root / "cifar-10-batches-py" / "data_batch_3"
    content = bytearray(path.read_bytes())
    content[5000] ^= 0x01
    path.write_bytes(bytes(content))
    with pytest.raises(DataError) as err:
        ensure_cifar10(root, download=False)
    assert f"{path} is corrupt" in str(err.value)
    assert len(find_cifar10_problems(root)) == 1


def test_missing_file_is_named(data_dir, tmp_path):
    root = copy_of_data(data_dir, tmp_path)
    (root / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DataError, match="test_batch is missing"):
        load_cifar10(root)


def test_failed_download_says_why_and_how_to_fix(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    with pytest.raises(DataError) as err:
        ensure_cifar10(tmp_path, download=True)
    message = str(err.value)
    assert "downloading it failed" in message and "network is unreachable" in message
    assert "data.data_dir=../shared/data" in message


def test_file_list_is_torchvisions():
    batches = [f"data_batch_{i}" for i in range(1, 6)]
    assert [name for name, _ in CIFAR10_FILES] == [*batches, "test_batch", "batches.meta"]


def test_loader_applies_the_epoch_transform_to_the_whole_split_in_order():
    labels = torch.arange(300)
    images = torch.randint(0, 256, (300, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    seen = []

    def transform(split, epoch):
        seen.append((epoch, split.shape[0]))
        return split.flip(3) if epoch % 2 else split

    loader = TensorBatchLoader(images, labels, 64, shuffle=True, seed=1, device="cpu", epoch_transform=transform)
    for epoch in range(3):
        for x, y in loader:
            assert torch.equal(x, images[y].flip(3) if epoch % 2 else images[y])
    assert seen == [(0, 300), (1, 300), (2, 300)]


def test_alternating_flip_shows_each_training_image_both_ways(data_dir):
    dm = CIFAR10DataModule(data_dir=str(data_dir), download=False, flip="alternating", batch_size=5000, seed=3)
    dm.setup()
    loader = dm.train_dataloader()
    originals = dm.arrays.train_images[dm.train_idx]
    epochs = []
    for _ in range(2):
        order = loader._order()  # this epoch's shuffle: batch position -> position in the split
        seen = torch.empty_like(originals)
        seen[order] = torch.cat([x for x, _ in loader])
        epochs.append(seen)
    mirrored_first = (epochs[0] != originals).flatten(1).any(dim=1)
    assert torch.equal(epochs[0][mirrored_first], originals[mirrored_first].flip(3))
    assert torch.equal(epochs[1][mirrored_first], originals[mirrored_first])  # the other way in epoch 2
    assert torch.equal(epochs[1][~mirrored_first], originals[~mirrored_first].flip(3))
    assert 0.45 < mirrored_first.float().mean().item() < 0.55


def test_translate_and_cutout_in_the_datamodule(data_dir):
    dm = CIFAR10DataModule(data_dir=str(data_dir), download=False, translate=2, cutout=8, seed=1)
    dm.setup()
    x = dm.arrays.test_images[:64]
    out = dm.augment(x)
    assert out.shape == x.shape and out.dtype == torch.uint8 and not torch.equal(out, x)
    mean_pixel = (torch.tensor(dm.mean) * 255).round().to(torch.uint8)
    # Every image holds an 8x8 square of the mean colour (cutout), which normalizes to about zero.
    is_mean = (out == mean_pixel.view(1, 3, 1, 1)).all(dim=1)
    assert all(int(m.sum()) >= 64 for m in is_mean)
    assert dm.normalize(mean_pixel.view(1, 3, 1, 1)).abs().max() < 0.02
    again = CIFAR10DataModule(data_dir=str(data_dir), download=False, translate=2, cutout=8, seed=1)
    again.setup()
    assert torch.equal(again.augment(x), out)  # seeded


def test_first_train_images_are_the_unaugmented_split(data_dir):
    dm = CIFAR10DataModule(data_dir=str(data_dir), download=False, translate=2)
    dm.setup()
    assert torch.equal(dm.first_train_images(10), dm.arrays.train_images[dm.train_idx[:10]])


class RecordBatches(L.LightningModule):
    """Keeps the first batch each stage receives, as the trainer hands it over (after on_after_batch_transfer)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: dict[str, torch.Tensor] = {}

    def _keep(self, stage: str, batch) -> None:
        self.seen.setdefault(stage, batch[0].clone())

    def training_step(self, batch, batch_idx):
        self._keep("train", batch)
        return self.weight * 0.0

    def validation_step(self, batch, batch_idx):
        self._keep("val", batch)

    def test_step(self, batch, batch_idx):
        self._keep("test", batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_only_training_batches_are_augmented_with_a_trainer(data_dir, tmp_path):
    augment = {"crop_padding": 4, "translate": 2, "flip": True, "cutout": 8}
    dm = CIFAR10DataModule(data_dir=str(data_dir), download=False, batch_size=64, eval_batch_size=64, **augment)
    module = RecordBatches()
    quiet = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    limits = {"limit_train_batches": 1, "limit_val_batches": 1, "limit_test_batches": 1, "num_sanity_val_steps": 0}
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", default_root_dir=tmp_path, **limits, **quiet)
    trainer.fit(module, datamodule=dm)
    trainer.test(module, datamodule=dm, verbose=False)
    arrays = dm.arrays
    assert torch.equal(module.seen["val"], dm.normalize(arrays.train_images[dm.val_idx[:64]]))
    assert torch.equal(module.seen["test"], dm.normalize(arrays.test_images[:64]))
    # The training batch is the epoch-0 permutation's first 64 images, augmented: not equal to them as they are.
    order = torch.randperm(len(dm.train_idx), generator=torch.Generator().manual_seed(dm.seed))[:64]
    plain = dm.normalize(arrays.train_images[dm.train_idx][order])
    assert module.seen["train"].shape == plain.shape and not torch.equal(module.seen["train"], plain)


def test_loader_state_resumes_inside_an_epoch_and_epochs_can_come_from_the_trainer():
    labels = torch.arange(300)
    images = torch.zeros(300, 3, 2, 2, dtype=torch.uint8)
    whole = [y for _, y in TensorBatchLoader(images, labels, 64, shuffle=True, seed=1)]
    first = TensorBatchLoader(images, labels, 64, shuffle=True, seed=1)
    batches = iter(first)
    taken = []
    for _ in range(2):
        taken.append(next(batches)[1])
        first.batch_taken()  # what CIFAR10DataModule does for each batch it trains on
    next(batches)  # drawn but never trained on (a crash): not counted
    assert first.state_dict() == {"epoch": 0, "consumed": 2}
    resumed = TensorBatchLoader(images, labels, 64, shuffle=True, seed=1)
    resumed.load_state_dict(first.state_dict())
    assert torch.equal(torch.cat(taken + [y for _, y in resumed]), torch.cat(whole))
    assert len(list(resumed)) == len(resumed)  # the next epoch is whole again
    # With an epoch source (the trainer's epoch), the order follows it, not a private counter.
    epoch_3 = TensorBatchLoader(images, labels, 64, shuffle=True, seed=1, epoch_source=lambda: 3)
    counted = TensorBatchLoader(images, labels, 64, shuffle=True, seed=1)
    for _ in range(3):
        list(counted)
    assert torch.equal(torch.cat([y for _, y in epoch_3]), torch.cat([y for _, y in counted]))
