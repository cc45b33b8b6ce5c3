"""EMA and lookahead weights on a one-weight model whose weight follows a script, so every
average can be computed by hand."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader

from cifar_lightning.averaging import AveragedWeights, update_average

START = 0.5
VALUES = [1.0, 3.0, -2.0, 4.0, 0.0, 2.0]  # the weight after optimizer steps 1, 2, 3, ...


class Scripted(L.LightningModule):
    """model.weight is set to VALUES[step] in each training step (the optimizer's rate is 0)."""

    def __init__(self, batches: int = 3) -> None:
        super().__init__()
        self.model = nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            self.model.weight.fill_(START)
        self.batches = batches
        self.after_step: list[float] = []
        self.in_validation: list[float] = []

    def training_step(self, batch, batch_idx):
        with torch.no_grad():
            self.model.weight.fill_(VALUES[self.global_step])
        return (self.model.weight * 0.0).sum()

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:  # runs after the callbacks' hook
        self.after_step.append(float(self.model.weight.detach()))

    def validation_step(self, batch, batch_idx):
        self.in_validation.append(float(self.model.weight.detach()))
        self.log("val_loss", float(self.current_epoch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self):
        return DataLoader(torch.zeros(self.batches, 1), batch_size=1)

    def val_dataloader(self):
        return DataLoader(torch.zeros(1, 1), batch_size=1)


def fit(module, averaging, tmp_path, epochs=1, **kwargs):
    trainer = L.Trainer(
        max_epochs=epochs,
        callbacks=[averaging, *kwargs.pop("callbacks", [])],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
        enable_checkpointing=kwargs.pop("enable_checkpointing", False),
        **kwargs,
    )
    trainer.fit(module)
    return trainer


def test_ema_after_known_updates_equals_the_hand_computed_average(tmp_path):
    d = 0.9
    averaging = AveragedWeights("ema", decay=d)
    module = Scripted(batches=3)
    fit(module, averaging, tmp_path)
    expected = d**3 * START + d**2 * (1 - d) * 1.0 + d * (1 - d) * 3.0 + (1 - d) * -2.0
    assert float(averaging.average["weight"]) == pytest.approx(expected, abs=1e-7)
    assert module.after_step == [1.0, 3.0, -2.0]  # EMA trains on the live weights
    assert module.in_validation == [pytest.approx(expected, abs=1e-7)]  # validation sees the average
    assert float(module.model.weight.detach()) == pytest.approx(expected, abs=1e-7)  # and the model keeps it


def test_ema_every_n_steps_updates_only_then(tmp_path):
    d = 0.5
    averaging = AveragedWeights("ema", decay=d, every_n_steps=2)
    fit(Scripted(batches=6), averaging, tmp_path)
    average = START
    for value in (3.0, 4.0, 2.0):  # after steps 2, 4, 6
        average = d * average + (1 - d) * value
    assert float(averaging.average["weight"]) == pytest.approx(average)


def test_lookahead_resets_the_live_weights_to_the_average(tmp_path):
    d = 0.5
    averaging = AveragedWeights("lookahead", decay=d, every_n_steps=2)
    module = Scripted(batches=4)
    fit(module, averaging, tmp_path)
    after_2 = d * START + (1 - d) * 3.0
    after_4 = d * after_2 + (1 - d) * 4.0
    assert module.after_step == [1.0, pytest.approx(after_2), -2.0, pytest.approx(after_4)]


def test_ramp_forgets_early_weights():
    averaging = AveragedWeights("lookahead", decay=0.95**5, every_n_steps=5, ramp_power=3)
    assert averaging.decay_at(50, 100) == pytest.approx(0.95**5 * 0.125)
    assert averaging.decay_at(100, 100) == pytest.approx(0.95**5)
    assert AveragedWeights("ema", decay=0.9).decay_at(1, 100) == 0.9


def test_update_average_is_a_lerp_of_every_entry():
    average = {"a": torch.tensor([0.0, 10.0]), "b": torch.tensor(2.0)}
    update_average(average, {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor(4.0)}, decay=0.75)
    assert average["a"].tolist() == [0.25, 7.5] and float(average["b"]) == 2.5


def test_checkpoint_holds_the_average_and_a_resumed_fit_continues_from_both(tmp_path):
    d = 0.9
    averaging = AveragedWeights("ema", decay=d)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last", monitor=None)
    fit(Scripted(batches=3), averaging, tmp_path, callbacks=[checkpoint], enable_checkpointing=True)
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    expected = d**3 * START + d**2 * (1 - d) * 1.0 + d * (1 - d) * 3.0 + (1 - d) * -2.0
    assert float(saved["state_dict"]["model.weight"]) == pytest.approx(expected, abs=1e-7)  # what evaluate.py loads
    assert float(saved["averaged_weights"]["live"]["weight"]) == -2.0

    resumed_averaging = AveragedWeights("ema", decay=d)
    module = Scripted(batches=3)
    trainer = L.Trainer(
        max_epochs=2,
        callbacks=[resumed_averaging],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
    )
    trainer.fit(module, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    # Steps 4..6 continue the same average, from the restored one.
    for value in (4.0, 0.0, 2.0):
        expected = d * expected + (1 - d) * value
    assert float(resumed_averaging.average["weight"]) == pytest.approx(expected, abs=1e-6)
