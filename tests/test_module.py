from functools import partial

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from cifar_lightning.models import FastNet, ReportCNN, ResNet18
from cifar_lightning.module import ClassifierModule
from cifar_lightning.schedules import StepLR, WarmupSchedule
from tests.conftest import fit_on_one_batch


def make_module(**kwargs):
    return ClassifierModule(
        ReportCNN(batch_norm="all", dropout=0.2),
        partial(torch.optim.SGD, lr=0.01, momentum=0.9, weight_decay=0.004),
        partial(StepLR, step_size=16, gamma=0.1),
        **kwargs,
    )


def test_weight_decay_applies_to_weights_only():
    module = make_module()
    optimizer = module.build_optimizer()
    decayed, undecayed = optimizer.param_groups
    assert decayed["weight_decay"] == 0.004 and undecayed["weight_decay"] == 0.0
    names = {id(p): n for n, p in module.model.named_parameters()}
    assert sorted(names[id(p)] for p in decayed["params"]) == [
        "conv1.weight",
        "conv2.weight",
        "conv3.weight",
        "fc1.weight",
        "fc2.weight",
    ]
    assert all(names[id(p)].endswith(".bias") or names[id(p)].startswith("bn") for p in undecayed["params"])
    assert len(decayed["params"]) + len(undecayed["params"]) == len(list(module.model.parameters()))


def test_step_schedule_drops_the_rate():
    module = make_module()
    optimizer = module.build_optimizer()
    scheduler = module.build_scheduler(optimizer, total_steps=20)
    assert scheduler.interval == "epoch"
    rates = []
    for _ in range(20):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[:16] == [0.01] * 16 and all(abs(r - 0.001) < 1e-12 for r in rates[16:])


def test_no_scheduler_means_plain_optimizer():
    module = ClassifierModule(ReportCNN(), partial(torch.optim.SGD, lr=0.01), None)
    assert isinstance(module.configure_optimizers(), torch.optim.SGD)


def test_channels_last_gives_the_same_logits():
    torch.manual_seed(0)
    a = make_module(channels_last=True).eval()
    b = make_module(channels_last=False).eval()
    b.model.load_state_dict(a.model.state_dict())
    x = torch.randn(8, 3, 32, 32)
    assert torch.allclose(a(x), b(x), atol=1e-5)


def test_training_steps_lower_the_loss_on_a_fixed_batch():
    """Through Lightning's loop, the module's own training_step and configure_optimizers: it fits one batch."""
    torch.manual_seed(0)
    module = make_module()
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    before = {name: p.detach().clone() for name, p in module.model.named_parameters()}
    losses = fit_on_one_batch(module, x, y, steps=12)
    assert losses[-1] < 0.5 * losses[0]
    moved = [name for name, p in module.model.named_parameters() if not torch.equal(p, before[name])]
    assert {f"{layer}.weight" for layer in ("conv1", "conv2", "conv3", "fc1", "fc2")} <= set(moved)


def test_label_smoothing_reaches_the_loss():
    module = ClassifierModule(
        ReportCNN(), partial(torch.optim.SGD, lr=0.01), None, loss=torch.nn.CrossEntropyLoss(label_smoothing=0.2)
    )
    logits, labels = torch.randn(5, 10), torch.randint(0, 10, (5,))
    assert module.criterion.label_smoothing == 0.2
    expected = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.2)
    assert torch.allclose(module.criterion(logits, labels), expected)


def test_norm_parameters_get_their_own_rate_and_decay_everywhere_shrinks_alike():
    model = FastNet(widths=[8, 16, 32])
    module = ClassifierModule(
        model,
        partial(torch.optim.SGD, lr=1.5, momentum=0.85, nesterov=True, weight_decay=0.0013305),
        None,
        norm_lr_scale=64.0,
        weight_decay_scope="all",
    )
    groups = {g["name"]: g for g in module.build_optimizer().param_groups}
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in groups["norm"]["params"]) == sorted(
        f"block{b}.bn{i}.bias" for b in (1, 2, 3) for i in (1, 2)
    )  # the frozen bn weights are left out
    assert [names[id(p)] for p in groups["biases"]["params"]] == ["whiten.bias"]
    assert "whiten.weight" not in {names[id(p)] for g in groups.values() for p in g["params"]}  # frozen
    assert groups["weights"]["lr"] == 1.5 and groups["norm"]["lr"] == 1.5 * 64 and groups["biases"]["lr"] == 1.5
    for group in groups.values():  # every parameter shrinks by lr * weight_decay = 1.5 * 0.0013305 per step
        assert group["lr"] * group["weight_decay"] == pytest.approx(1.5 * 0.0013305)


def test_scaled_norm_rate_without_decay_on_norms_and_biases():
    module = ClassifierModule(ResNet18(), partial(torch.optim.SGD, lr=0.1, weight_decay=5e-4), None, norm_lr_scale=2.0)
    groups = {g["name"]: g for g in module.build_optimizer().param_groups}
    assert (groups["norm"]["lr"], groups["norm"]["weight_decay"]) == (0.2, 0.0)
    assert (groups["biases"]["lr"], groups["biases"]["weight_decay"]) == (0.1, 0.0)
    assert groups["weights"]["weight_decay"] == 5e-4


def test_per_step_schedule_is_stepped_every_step():
    schedule = partial(WarmupSchedule, shape="linear", warmup=0.5, start_factor=0.5, end_factor=0.0)
    module = ClassifierModule(ReportCNN(), partial(torch.optim.SGD, lr=1.0), schedule)
    optimizer = module.build_optimizer()
    scheduler = module.build_scheduler(optimizer, total_steps=4)
    assert scheduler.interval == "step"
    rates = []
    for _ in range(4):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.5, 0.75, 1.0, 0.5])  # 2 warmup steps of 4, then down towards 0


class EpochMetrics(L.Callback):
    """What callbacks see at each training epoch's end (as EpochHistory reads them)."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epochs.append({name: float(value) for name, value in trainer.callback_metrics.items()})


def test_epoch_metrics_cover_each_epochs_batches_with_one_log_per_metric_and_epoch(monkeypatch):
    """Each epoch's train_*/val_* are its own batches' image-weighted loss and accuracy (the last batch is smaller),
    although the metric objects are logged once per epoch and stage, not every step."""
    torch.manual_seed(0)
    module = make_module()
    records, logs = [], []
    record, log = module._record, module.log

    def spy_record(stage, logits, labels):
        loss = record(stage, logits, labels)
        correct = (logits.argmax(1) == labels).sum().item()
        records.append((module.current_epoch, stage, loss.item() * len(labels), correct, len(labels)))
        return loss

    monkeypatch.setattr(module, "_record", spy_record)
    monkeypatch.setattr(module, "log", lambda name, *args, **kwargs: logs.append(name) or log(name, *args, **kwargs))
    images, labels = torch.randn(70, 3, 32, 32), torch.randint(0, 10, (70,))
    train, val = (
        DataLoader(TensorDataset(images, labels), batch_size=32),
        DataLoader(TensorDataset(images[:45], labels[:45]), batch_size=20),
    )
    seen = EpochMetrics()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        callbacks=[seen],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, train_dataloaders=train, val_dataloaders=val)
    for epoch in (0, 1):
        for stage in ("train", "val"):
            batches = [r for r in records if r[0] == epoch and r[1] == stage]
            images_seen = sum(r[4] for r in batches)
            assert images_seen == (70 if stage == "train" else 45)
            assert seen.epochs[epoch][f"{stage}_loss"] == pytest.approx(
                sum(r[2] for r in batches) / images_seen, rel=1e-5
            )
            assert seen.epochs[epoch][f"{stage}_acc"] == pytest.approx(sum(r[3] for r in batches) / images_seen)
    assert sorted(logs) == sorted(["train_loss", "train_acc", "val_loss", "val_acc"] * 2)
