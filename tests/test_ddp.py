"""Training in several processes (trainer=ddp): the loaders' shards, the launch checks, and real
2- and 3-process runs of train.py on the CPU whose figures equal a one-process evaluation and whose
weights equal a one-process run's over the same global batches (the gradients are all-reduced)."""

import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cifar_lightning.data import CIFAR10DataModule, TensorBatchLoader
from cifar_lightning.errors import ConfigError
from cifar_lightning.evaluation import run_evaluation
from cifar_lightning.training import build, train
from tests.conftest import QUIET, TINY_RUN, compose_evaluate
from tests.helpers import only_run_dir, run_entry_point

DDP_CPU = ["trainer=ddp", "trainer.accelerator=cpu"]


def loaders(n: int, batch_size: int, world: int, drop_remainder: bool, shuffle: bool = True, seed: int = 5):
    labels = torch.arange(n)
    images = torch.zeros(n, 1, 1, 1, dtype=torch.uint8)
    return [
        TensorBatchLoader(
            images,
            labels,
            batch_size,
            shuffle=shuffle,
            seed=seed,
            rank=r,
            world_size=world,
            drop_remainder=drop_remainder,
        )
        for r in range(world)
    ]


def epoch(loader: TensorBatchLoader) -> list[torch.Tensor]:
    return [labels for _, labels in loader]


@pytest.mark.parametrize("world", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("n, batch_size", [(1000, 128), (1003, 100), (45000, 128), (7, 2)])
def test_training_shards_are_disjoint_equal_and_cover_the_epoch_but_a_remainder(world, n, batch_size):
    ranks = loaders(n, batch_size, world, drop_remainder=True)
    for e in range(2):
        batches = [epoch(loader) for loader in ranks]
        # Equal batch counts (the collectives of every step pair up) and equal image counts, on every rank.
        assert {len(b) for b in batches} == {len(ranks[0])}
        assert {sum(len(x) for x in b) for b in batches} == {n // world}
        seen = torch.cat([torch.cat(b) for b in batches]).tolist()
        assert len(seen) == len(set(seen))  # disjoint
        permutation = torch.randperm(n, generator=torch.Generator().manual_seed(5 + e))
        assert set(seen) == set(permutation[: n - n % world].tolist())  # this epoch's permutation, less n % world
        if world == 1:  # one process: the order of before DDP, batch by batch
            assert torch.equal(torch.cat(batches[0]), permutation)


@pytest.mark.parametrize("world", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("n, batch_size", [(10000, 1000), (5000, 1000), (2001, 1000), (10000, 1111), (3, 2)])
def test_evaluation_shards_score_every_image_once_with_equal_batch_counts(world, n, batch_size):
    ranks = loaders(n, batch_size, world, drop_remainder=False, shuffle=False)
    batches = [epoch(loader) for loader in ranks]
    assert {len(b) for b in batches} == {len(ranks[0])}
    counts = Counter(torch.cat([torch.cat(b) for b in batches]).tolist())
    assert sorted(counts) == list(range(n)) and set(counts.values()) == {1}
    assert all(len(x) <= batch_size for b in batches for x in b)


def test_a_short_evaluation_shard_ends_with_an_empty_batch():
    # 2,001 images on 2 ranks: 1,001 and 1,000, i.e. 2 batches and 1; the second rank pads with an empty one.
    first, second = (epoch(loader) for loader in loaders(2001, 1000, 2, drop_remainder=False, shuffle=False))
    assert [len(x) for x in first] == [1000, 1] and [len(x) for x in second] == [1000, 0]


def test_the_datamodule_shards_training_evenly_and_evaluation_exactly(data_dir):
    stats = None

    def with_rank(rank: int, world: int) -> CIFAR10DataModule:
        nonlocal stats
        dm = CIFAR10DataModule(
            data_dir=str(data_dir),
            download=False,
            on_device=False,
            crop_padding=4,
            seed=1,
            batch_size=5000,
            eval_batch_size=5000,
        )
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=world, current_epoch=0)
        if stats is not None:
            dm.load_state_dict(stats)  # the normalization statistics are computed once
        dm.setup()
        stats = dm.state_dict()
        return dm

    ranks = [with_rank(r, 3) for r in range(3)]
    train = [torch.cat([y for _, y in dm.train_dataloader()]) for dm in ranks]
    assert [len(y) for y in train] == [15000] * 3  # 45,000 training images, 3 ranks
    test = Counter(sum((torch.cat([y for _, y in dm.test_dataloader()]).tolist() for dm in ranks), []))
    assert sum(test.values()) == 10000 and test == Counter(ranks[0].arrays.test_labels.tolist())
    x = ranks[0].arrays.test_images[:16]
    # Rank 0 draws the augmentation of one process; other ranks draw their own.
    assert torch.equal(ranks[0].augment(x), with_rank(0, 1).augment(x))
    assert not torch.equal(ranks[1].augment(x), ranks[0].augment(x))


def test_sync_batchnorm_on_cpu_is_refused_before_training(make_cfg):
    with pytest.raises(ConfigError, match="sync_batchnorm=true needs GPUs"):
        build(make_cfg(*DDP_CPU, "trainer.devices=2", "trainer.sync_batchnorm=true"))


def test_multiprocessing_strategies_are_refused(make_cfg):
    with pytest.raises(ConfigError, match="use trainer=ddp"):
        build(make_cfg(*DDP_CPU, "trainer.devices=2", "trainer.strategy=ddp_spawn"))


def test_one_process_ddp_builds_like_a_plain_run(make_cfg):
    _, _, trainer, _ = build(make_cfg(*DDP_CPU, "trainer.devices=1"))
    assert trainer.world_size == 1 and trainer.is_global_zero


def train_py(*args: str, log_dir: Path, timeout: int = 240):
    """`python train.py <args>`, quiet, logging under log_dir."""
    return run_entry_point("train.py", *args, f"paths.log_dir={log_dir}", *QUIET, timeout=timeout)


def assert_matches_evaluation(run_dir: Path, data_dir: Path, tmp_path: Path) -> dict:
    """metrics.json of a DDP run against a one-process evaluation of its best checkpoint."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    confusion = torch.tensor(metrics["test_confusion"])
    assert int(confusion.sum()) == 10000  # every test image scored once
    assert metrics["test_acc"] == pytest.approx(confusion.trace().item() / 10000, abs=1e-7)
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    summary = run_evaluation(compose_evaluate([f"ckpt={ckpt}", f"data.data_dir={data_dir}"], tmp_path / "eval")).summary
    assert metrics["test_acc"] == pytest.approx(summary["test_acc"], abs=1e-7)
    assert metrics["test_confusion"] == summary["confusion"]
    assert metrics["test_loss"] == pytest.approx(summary["test_loss"], rel=1e-5)  # the mean over all images
    return metrics


# The 2-process run is the report_base recipe, whose steps a one-process run can repeat exactly: no batch norm
# (each rank would normalize its own half of the global batch), no dropout and no augmentation (their
# draws differ by rank), a loss that is a mean over equal per-rank batches (DDP averages the ranks'
# gradients), one initialization (DDP broadcasts rank 0's), and interleaved shards: rank r's k-th batch of b
# is order[2kb + r : 2(k+1)b : 2], so both ranks' k-th batches are one process's k-th batch of 2b.
# (Batch norm under DDP is tested by the 3-process run, with -m slow: every rank tests the best checkpoint.)
SYNC_RUN = [*(o for o in TINY_RUN if not o.startswith("model.batch_norm=")), "model.batch_norm=none"]


def test_two_cpu_processes_train_one_run_scored_like_evaluate_with_one_process_weights(data_dir, tmp_path, make_cfg):
    result = train_py(*DDP_CPU, "trainer.devices=2", *SYNC_RUN, f"data.data_dir={data_dir}", log_dir=tmp_path / "logs")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = only_run_dir(tmp_path / "logs")  # both processes wrote into one directory
    metrics = assert_matches_evaluation(run_dir, data_dir, tmp_path)
    assert metrics["world_size"] == 2 and metrics["epochs_run"] == 1
    assert (run_dir / "train_ddp_process_1.log").is_file()  # the second process ran here, and logs apart
    events = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))  # <time>.<host>.<pid>.<n>
    assert events and len({path.name.split(".")[-2] for path in events}) == 1  # one writing process
    assert len(list(run_dir.rglob("config.yaml"))) == 2  # the run's and Hydra's own (.hydra/), once each
    assert "sync_dist=True" not in result.stderr  # every epoch-level figure is reduced over ranks

    # The same 10 steps in one process at the global batch (2 x 128): the same weights, unless the ranks'
    # gradients were not averaged (each rank's own would move rank 0's weights elsewhere).
    batch = make_cfg(*SYNC_RUN).data.batch_size
    one = tmp_path / "one_process"
    train(make_cfg(*SYNC_RUN, f"data.batch_size={2 * batch}", "trainer.limit_test_batches=1", output_dir=one))
    ddp, single = (torch.load(d / "checkpoints" / "last.ckpt", weights_only=True) for d in (run_dir, one))
    assert ddp["global_step"] == single["global_step"] == 10
    ddp, single = ddp["state_dict"], single["state_dict"]
    assert ddp.keys() == single.keys() and ddp
    for name, weights in single.items():  # float noise here: <= 3e-6; gradients left unsynced: 1e-3 to 2e-2
        assert torch.allclose(ddp[name], weights, rtol=1e-4, atol=2e-5), (name, (ddp[name] - weights).abs().max())


@pytest.mark.slow  # three processes: about 40 s; two run by default
def test_three_processes_with_uneven_shards_finish(data_dir, tmp_path):
    # 10,000 test images on 3 ranks at 1,111 per batch: rank 0 scores 3,334 in 4 batches, ranks 1 and 2
    # score 3,333 in 3 and an empty one. Unequal counts would hang the collectives (the timeout fails it).
    overrides = [*TINY_RUN, "data.eval_batch_size=1111", "trainer.limit_train_batches=4", f"data.data_dir={data_dir}"]
    result = train_py(*DDP_CPU, "trainer.devices=3", *overrides, log_dir=tmp_path / "logs")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = assert_matches_evaluation(only_run_dir(tmp_path / "logs"), data_dir, tmp_path)
    assert metrics["world_size"] == 3


@pytest.mark.slow  # a local sweep of DDP jobs: process starts (about 15 s here); runs with -m slow
def test_ddp_inside_a_local_sweep_is_refused(data_dir, tmp_path):
    result = train_py(
        "-m",
        *DDP_CPU,
        "trainer.devices=2",
        "seed=0",
        f"data.data_dir={data_dir}",
        log_dir=tmp_path / "logs",
        timeout=120,
    )
    # A sweep goes on past a failed job (train.py); this one fails before Lightning re-runs the command.
    job = only_run_dir(tmp_path / "logs", kind="multiruns") / "0"
    assert "cannot run inside a Hydra multirun" in (job / "train.log").read_text()
    assert not (job / "metrics.json").exists() and not (job / "checkpoints").exists()
    assert "Initializing distributed" not in result.stdout + result.stderr


@pytest.mark.slow  # torchrun and its processes start (about 15 s here); runs with -m slow
def test_torchrun_without_a_shared_run_directory_is_refused(data_dir, tmp_path):
    # python -m torch.distributed.run (torchrun) --standalone --nproc-per-node=2 train.py ...
    torchrun = ["torch.distributed.run", "--standalone", "--nproc-per-node=2", "train.py"]
    result = run_entry_point(
        "-m",
        *torchrun,
        *DDP_CPU,
        "trainer.devices=2",
        f"data.data_dir={data_dir}",
        f"paths.log_dir={tmp_path / 'logs'}",
        *QUIET,
        timeout=120,
    )
    assert result.returncode != 0
    assert "hydra.run.dir=logs/train/runs/<name>" in result.stderr
    assert not list((tmp_path / "logs" / "train" / "runs").glob("*/checkpoints"))
