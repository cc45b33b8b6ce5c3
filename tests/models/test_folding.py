from functools import partial

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cifar_lightning.averaging import AveragedWeights
from cifar_lightning.models import FastNet, ReportCNN, ResNet18
from cifar_lightning.models.folding import fold_batch_norms, pool_before_relu
from cifar_lightning.module import ClassifierModule


def trained_statistics(model: nn.Module) -> nn.Module:
    """The model after a few training-mode passes: running statistics and affine parameters away from their init."""
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.uniform_(module.bias, -0.5, 0.5)
            if module.weight.requires_grad:
                nn.init.uniform_(module.weight, 0.5, 1.5)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, 32, 32) * 2 + 0.3)
    return model.eval()


@pytest.mark.parametrize(
    "model, folded_pairs",
    [(lambda: ReportCNN(batch_norm="all"), 3), (lambda: FastNet(widths=[16, 32, 64]), 3), (ResNet18, 4)],
    ids=["report_cnn", "fast_net", "resnet18"],
)
def test_folding_keeps_the_logits_and_leaves_the_model_alone(model, folded_pairs):
    original = trained_statistics(model()).to(memory_format=torch.channels_last)
    before = {name: value.clone() for name, value in original.state_dict().items()}
    folded = fold_batch_norms(original)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), original(x), rtol=1e-4, atol=1e-5)
    norms = [m for m in folded.modules() if isinstance(m, nn.BatchNorm2d)]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in original.modules()) - len(norms) == folded_pairs
    assert {name for name, _ in folded.named_modules()} == {name for name, _ in original.named_modules()}
    assert all(torch.equal(before[name], value) for name, value in original.state_dict().items())


def test_a_conv_not_followed_by_its_batch_norm_stays():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4))
    folded = fold_batch_norms(trained_statistics(model))
    assert isinstance(folded[0], nn.Conv2d) and isinstance(folded[2], nn.BatchNorm2d)


def test_a_relu_before_max_pooling_moves_after_it_with_the_same_logits():
    model = trained_statistics(ReportCNN(batch_norm="all", dropout=0.2))
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        moved = pool_before_relu(fold_batch_norms(model))
        assert torch.equal(moved(x), fold_batch_norms(model)(x))
    torch.testing.assert_close(moved(x), expected, rtol=1e-4, atol=1e-5)
    names = list(moved._modules)
    assert all(names.index(f"pool{i}") + 1 == names.index(f"relu{i}") for i in (1, 2, 3))
    assert names[-4:] == ["fc1", "relu4", "dropout", "fc2"]  # no pooling after it: stays


def test_the_validation_copy_pools_before_its_relus():
    module = ClassifierModule(ReportCNN(), partial(torch.optim.SGD, lr=0.05))
    module.fold_for_inference()
    copy, model = list(module._folded[0]._modules), list(module.model._modules)
    assert copy.index("pool1") < copy.index("relu1") and model.index("relu1") < model.index("pool1")


class LiveWeights(L.Callback):
    """Keeps the live weights as validation starts, before the averaging callback (listed after it) swaps them."""

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.state = {name: value.clone() for name, value in pl_module.model.state_dict().items()}


def test_validation_runs_the_folded_copy_of_the_averaged_weights():
    """val_loss is the averaged weights' loss (the averaging callback swaps them in before the copy is made), not
    the live weights', and the model's own batch norms never run in eval mode."""
    torch.manual_seed(0)
    module = ClassifierModule(ReportCNN(batch_norm="all"), partial(torch.optim.SGD, lr=0.05, momentum=0.9))
    images, labels = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    data = DataLoader(TensorDataset(images, labels), batch_size=32)
    live, averaging, eval_norm_calls = LiveWeights(), AveragedWeights(mode="ema", decay=0.5), []
    for norm in (m for m in module.model.modules() if isinstance(m, nn.BatchNorm2d)):
        norm.register_forward_hook(lambda norm, *_: eval_norm_calls.append(1) if not norm.training else None)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        callbacks=[live, averaging],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, train_dataloaders=data, val_dataloaders=data)
    assert eval_norm_calls == [] and module._folded is None

    def loss_of(state: dict[str, torch.Tensor]) -> float:
        reference = ReportCNN(batch_norm="all")
        reference.load_state_dict(state)
        with torch.no_grad():
            return nn.functional.cross_entropy(reference.eval()(images), labels).item()

    averaged = loss_of({**live.state, **averaging.average})
    assert trainer.callback_metrics["val_loss"].item() == pytest.approx(averaged, rel=1e-5)
    assert loss_of(live.state) != pytest.approx(averaged, rel=1e-3)
