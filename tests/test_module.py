from functools import partial

import torch

from cifar_lightning.models import SeedCNN
from cifar_lightning.module import ClassifierModule


def make_module(**kwargs):
    return ClassifierModule(
        SeedCNN(batch_norm="all", dropout=0.2),
        partial(torch.optim.SGD, lr=0.01, momentum=0.9, weight_decay=0.004),
        partial(torch.optim.lr_scheduler.StepLR, step_size=16, gamma=0.1),
        **kwargs,
    )


def test_weight_decay_applies_to_weights_only():
    module = make_module()
    optimizer = module.build_optimizer()
    decayed, undecayed = optimizer.param_groups
    assert decayed["weight_decay"] == 0.004 and undecayed["weight_decay"] == 0.0
    names = {id(p): n for n, p in module.model.named_parameters()}
    assert sorted(names[id(p)] for p in decayed["params"]) == [
        "conv1.weight", "conv2.weight", "conv3.weight", "fc1.weight", "fc2.weight",
    ]  # fmt: skip
    assert all(names[id(p)].endswith(".bias") or names[id(p)].startswith("bn") for p in undecayed["params"])
    assert len(decayed["params"]) + len(undecayed["params"]) == len(list(module.model.parameters()))


def test_step_schedule_drops_the_rate():
    config = make_module().configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "epoch"
    rates = []
    for _ in range(20):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[:16] == [0.01] * 16 and all(abs(r - 0.001) < 1e-12 for r in rates[16:])


def test_no_scheduler_means_plain_optimizer():
    module = ClassifierModule(SeedCNN(), partial(torch.optim.SGD, lr=0.01), None)
    assert isinstance(module.configure_optimizers(), torch.optim.SGD)


def test_channels_last_gives_the_same_logits():
    torch.manual_seed(0)
    a = make_module(channels_last=True).eval()
    b = make_module(channels_last=False).eval()
    b.model.load_state_dict(a.model.state_dict())
    x = torch.randn(8, 3, 32, 32)
    assert torch.allclose(a(x), b(x), atol=1e-5)


def test_training_steps_lower_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    module = make_module()
    optimizer = module.build_optimizer()
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    losses = []
    for _ in range(30):
        loss = module.criterion(module(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
