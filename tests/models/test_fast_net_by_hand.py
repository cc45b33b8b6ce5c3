"""FastNet and the fast94 recipe against values worked out by hand from the paper's definitions
(Keller Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU", arXiv 2404.00498), on tiny batches.

The expected values never come from the code under test or from airbench's code: the forward pass is
recomputed in float64 NumPy from the model's parameter values (patch covariance, eigenvectors, convs as
explicit patch products, erf GELU, max pools, batch norm, the scaled head); the optimizer steps follow
SGD's update rule written out below with the paper's rates; the lookahead average follows its formula.
The paper's hyperparameters are the constants below, so a recipe that drifts from them fails here.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from scipy.special import erf

from cifar_lightning.averaging import AveragedWeights
from cifar_lightning.models import FastNet
from cifar_lightning.training import build
from tests.conftest import QUIET, compose_train

# airbench94's hyperparameters, as the paper gives them (its rates are for a loss summed over the batch).
AIRBENCH_LR, AIRBENCH_WEIGHT_DECAY, AIRBENCH_BATCH = 11.5, 0.0153, 1024
MOMENTUM, BIAS_SCALER, LABEL_SMOOTHING = 0.85, 64.0, 0.2
EPOCHS, TRAIN_IMAGES = 9.9, 50_000
WARMUP_SHARE, FACTOR_KNOTS = 0.23, (0.2, 1.0, 0.07)
LOOKAHEAD_EVERY, LOOKAHEAD_DECAY, LOOKAHEAD_POWER = 5, 0.95**5, 3
BN_KEEP, BN_EPS, WHITEN_EPS, HEAD_SCALE = 0.6, 1e-12, 5e-4, 1 / 9

# The same rates for a loss averaged over the batch, in torch SGD's terms (weight decay multiplied by lr).
KILOSTEP = AIRBENCH_BATCH * (1 + 1 / (1 - MOMENTUM))
LR = AIRBENCH_LR / KILOSTEP * AIRBENCH_BATCH
WEIGHT_DECAY = AIRBENCH_WEIGHT_DECAY * AIRBENCH_BATCH / KILOSTEP / LR

TINY_WIDTHS = [4, 8, 8]
BN_NAMES = [f"block{b}.bn{n}" for b in (1, 2, 3) for n in (1, 2)]
CONV_NAMES = [f"block{b}.conv{n}" for b in (1, 2, 3) for n in (1, 2)]


@pytest.fixture(autouse=True)
def one_thread():
    """Tensors this small run fastest on one thread; a busy machine's thread pool can make them 50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- the definitions, in float64 NumPy -------------------------------------------------------------------


def correlated_images(count: int, seed: int) -> torch.Tensor:
    """Normalized-looking (N, 3, 32, 32) images whose neighbouring pixels and channels correlate, like photos."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(count, 3, 33, 33, generator=generator)
    smooth = (noise[:, :, 1:, 1:] + noise[:, :, :-1, 1:] + noise[:, :, 1:, :-1] + noise[:, :, :-1, :-1]) / 2
    mixing = torch.tensor([[1.0, 0.6, 0.3], [0.2, 1.0, 0.5], [0.4, 0.1, 1.0]])
    return torch.einsum("dc,nchw->ndhw", mixing, smooth) + 0.3 * torch.randn(count, 3, 32, 32, generator=generator)


def patch_rows(images: np.ndarray, size: int) -> np.ndarray:
    """Every size x size patch, one per row, flattened as (channel, row, column) like a conv filter."""
    windows = sliding_window_view(images, (size, size), axis=(2, 3))  # (N, C, H', W', size, size)
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(-1, images.shape[1] * size * size)


def conv_by_hand(images: np.ndarray, filters: np.ndarray, padding: int) -> np.ndarray:
    """out[n, o, y, x] = sum over c, i, j of filters[o, c, i, j] * zero-padded images[n, c, y + i, x + j]."""
    padded = np.pad(images, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    windows = sliding_window_view(padded, filters.shape[2:], axis=(2, 3))  # (N, C, H', W', kh, kw)
    return np.einsum("nchwij,ocij->nohw", windows, filters)


def gelu_by_hand(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def max_pool2_by_hand(x: np.ndarray) -> np.ndarray:
    """2 x 2 max pool with stride 2; an odd last row or column is dropped."""
    n, c, h, w = x.shape
    return x[:, :, : h // 2 * 2, : w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def forward_by_hand(params: dict[str, np.ndarray], images: np.ndarray, running: dict | None = None):
    """FastNet's logits from its parameter values, and each batch norm's (mean, biased variance, count).

    running: None normalizes with the batch's statistics (training); else {bn name: (mean, variance)}.
    Batch norm's weight is 1 by definition here (frozen in the paper); its bias trains.
    """
    stats = {}

    def batch_norm(x: np.ndarray, name: str) -> np.ndarray:
        if running is None:
            mean, variance = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))  # biased, as normalization uses
            stats[name] = (mean, variance, x.size // x.shape[1])
        else:
            mean, variance = running[name]
        normalized = (x - mean[None, :, None, None]) / np.sqrt(variance[None, :, None, None] + BN_EPS)
        return normalized + params[f"{name}.bias"][None, :, None, None]

    x = conv_by_hand(images, params["whiten.weight"], padding=0) + params["whiten.bias"][None, :, None, None]
    x = gelu_by_hand(x)
    for block in ("block1", "block2", "block3"):
        x = max_pool2_by_hand(conv_by_hand(x, params[f"{block}.conv1.weight"], padding=1))
        x = gelu_by_hand(batch_norm(x, f"{block}.bn1"))
        x = gelu_by_hand(batch_norm(conv_by_hand(x, params[f"{block}.conv2.weight"], padding=1), f"{block}.bn2"))
    features = x.max(axis=(2, 3))  # global max pool: 3 x 3 -> 1
    return features * HEAD_SCALE @ params["fc.weight"].T, stats


def float64_state(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {name: value.detach().double().numpy().copy() for name, value in model.state_dict().items()}


def factor_by_hand(step: int, total_steps: int) -> float:
    """The paper's triangular schedule: 0.2 at step 0, 1 at step int(0.23 * T), 0.07 at step T."""
    return float(np.interp(step, [0, int(WARMUP_SHARE * total_steps), total_steps], FACTOR_KNOTS))


def nesterov_sgd_by_hand(param, grad, buffer, lr: float, weight_decay: float, momentum: float = MOMENTUM):
    """One step of SGD with Nesterov momentum and coupled weight decay (torch's semantics): (param, buffer)."""
    decayed_grad = grad + weight_decay * param
    buffer = decayed_grad if buffer is None else momentum * buffer + decayed_grad
    return param - lr * (decayed_grad + momentum * buffer), buffer


def smoothed_cross_entropy_by_hand(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_k q_k log softmax_k, q = (1 - 0.2) one-hot + 0.2 / classes."""
    classes = logits.shape[1]
    targets = (1 - LABEL_SMOOTHING) * torch.nn.functional.one_hot(labels, classes).double() + LABEL_SMOOTHING / classes
    log_probs = logits.double() - torch.logsumexp(logits.double(), dim=1, keepdim=True)
    return -(targets * log_probs).sum(dim=1).mean()


def build_recipe(tmp_path, total_steps: int | None = None):
    """The fast94 recipe built as train.py builds it, with a tiny FastNet whitened from tiny images."""
    cfg = compose_train(
        [
            "experiment=fast94",
            f"model.widths=[{','.join(map(str, TINY_WIDTHS))}]",
            "model.init_images=8",
            f"data.data_dir={tmp_path}",
            "~logger",
            *QUIET,
        ],
        tmp_path / "run",
    )
    torch.manual_seed(0)
    _, module, trainer, _ = build(cfg)
    module.model.init_from_data(correlated_images(8, seed=1))  # what setup("fit") does with training images
    averaging = next(c for c in trainer.callbacks if isinstance(c, AveragedWeights))
    optimizer = module.build_optimizer()
    scheduler = module.build_scheduler(optimizer, total_steps=total_steps or cfg.trainer.max_steps)
    return cfg, module, averaging, optimizer, scheduler


# -- the forward pass ------------------------------------------------------------------------------------


@pytest.fixture
def tiny_net() -> tuple[FastNet, torch.Tensor]:
    """A tiny FastNet whitened from 8 tiny images, its trainable biases set away from zero so they count."""
    torch.manual_seed(0)
    model = FastNet(widths=TINY_WIDTHS, init_images=8)
    init_images = correlated_images(8, seed=1)
    model.init_from_data(init_images)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    return model, init_images


def test_whitening_filters_are_patch_eigenvectors_over_root_eigenvalues_with_negated_copies(tiny_net):
    model, init_images = tiny_net
    patches = patch_rows(init_images.double().numpy(), 2)
    covariance = patches.T @ patches / len(patches)  # uncentered, over all 8 x 31 x 31 patches
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, eigenvectors = eigenvalues[order], eigenvectors[:, order]
    assert np.min(-np.diff(eigenvalues) / eigenvalues[:-1]) > 1e-3  # distinct: each eigenvector unique up to sign

    filters = model.whiten.weight.detach().double().numpy().reshape(24, 12)
    expected = (eigenvectors / np.sqrt(eigenvalues + WHITEN_EPS)).T  # one filter per row, largest first
    signs = np.sign(np.sum(filters[:12] * expected, axis=1))  # an eigenvector's sign is arbitrary
    np.testing.assert_allclose(filters[:12], signs[:, None] * expected, rtol=0, atol=3e-5)
    np.testing.assert_array_equal(filters[12:], -filters[:12])
    # What the signs cannot change: the whitened patches are uncorrelated, with variance l / (l + eps) ~ 1.
    whitened_covariance = filters[:12] @ covariance @ filters[:12].T
    np.testing.assert_allclose(whitened_covariance, np.diag(eigenvalues / (eigenvalues + WHITEN_EPS)), atol=1e-5)
    assert not model.whiten.weight.requires_grad and model.whiten.bias.requires_grad


def test_convs_start_as_partial_identities_and_batch_norm_weights_are_one(tiny_net):
    model, _ = tiny_net
    for name in CONV_NAMES:
        weight = model.get_submodule(name).weight.detach().numpy()
        identity = np.zeros((min(weight.shape[:2]), weight.shape[1], 3, 3))
        for channel in range(len(identity)):
            identity[channel, channel, 1, 1] = 1.0  # filter o passes input channel o through, unchanged
        np.testing.assert_array_equal(weight[: len(identity)], identity, err_msg=name)
        assert np.abs(weight[len(identity) :]).sum() > 0 or len(identity) == weight.shape[0]  # the rest random
    for name in BN_NAMES:
        bn = model.get_submodule(name)
        assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and not bn.weight.requires_grad, name


def test_forward_pass_matches_the_definitions_in_training_and_in_evaluation(tiny_net):
    model, _ = tiny_net
    images = correlated_images(4, seed=3)
    params = float64_state(model)

    model.train()
    with torch.no_grad():
        logits = model(images).double().numpy()
    expected, stats = forward_by_hand(params, images.double().numpy())
    assert np.abs(expected).max() > 0.05  # logits large enough for the comparison to mean something
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)

    # That forward pass moved every running statistic 0.4 of the way to the batch's (unbiased variance).
    running = {}
    for name, (mean, variance, count) in stats.items():
        running[name] = (
            BN_KEEP * params[f"{name}.running_mean"] + (1 - BN_KEEP) * mean,
            BN_KEEP * params[f"{name}.running_var"] + (1 - BN_KEEP) * variance * count / (count - 1),
        )
        bn = model.get_submodule(name)
        np.testing.assert_allclose(bn.running_mean.double().numpy(), running[name][0], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(bn.running_var.double().numpy(), running[name][1], rtol=1e-6, atol=1e-7)

    other_images = correlated_images(3, seed=4)
    model.eval()
    with torch.no_grad():
        eval_logits = model(other_images).double().numpy()
    expected_eval, _ = forward_by_hand(params, other_images.double().numpy(), running=running)
    np.testing.assert_allclose(eval_logits, expected_eval, rtol=1e-5, atol=1e-6)
    batch_statistics_logits, _ = forward_by_hand(params, other_images.double().numpy())
    assert np.abs(batch_statistics_logits - expected_eval).max() > 1e-3  # the running statistics did matter


# -- the recipe's optimizer steps ------------------------------------------------------------------------


def test_recipe_rates_are_airbenchs_for_a_mean_loss():
    """conf/experiment/fast94.yaml's comment: airbench's rates for a summed loss, converted for a mean loss."""
    cfg = compose_train(["experiment=fast94"])
    assert 11.5 / (1024 * (1 + 1 / (1 - 0.85))) * 1024 == pytest.approx(1.5, rel=1e-12)
    assert 0.0153 / (1 + 1 / 0.15) / 1.5 == pytest.approx(0.00133043, rel=1e-5)
    assert cfg.optim.lr == pytest.approx(LR, rel=1e-12)
    assert cfg.optim.weight_decay == pytest.approx(WEIGHT_DECAY, rel=1e-5)
    assert (cfg.optim.momentum, cfg.optim.nesterov, cfg.loss.label_smoothing) == (MOMENTUM, True, LABEL_SMOOTHING)
    assert (cfg.module.norm_lr_scale, cfg.module.weight_decay_scope) == (BIAS_SCALER, "all")
    assert cfg.data.batch_size == AIRBENCH_BATCH and cfg.data.drop_last
    assert cfg.trainer.max_steps == math.ceil(EPOCHS * (TRAIN_IMAGES // AIRBENCH_BATCH))  # 476

    # Three steps of airbench's SGD on a summed loss over 1024 images (its gradient: 1024 x the mean's; e.g.
    # a tiny batch repeated) move a weight and a batch-norm bias exactly as the recipe's SGD on the mean loss.
    generator = np.random.default_rng(0)
    airbench_lr = AIRBENCH_LR / KILOSTEP
    airbench_wd = AIRBENCH_WEIGHT_DECAY * AIRBENCH_BATCH / KILOSTEP
    for scale, recipe_scale in ((1.0, 1.0), (BIAS_SCALER, cfg.module.norm_lr_scale)):
        start = generator.normal(size=5)
        airbench_param, recipe_param = start.copy(), start.copy()
        airbench_buffer = recipe_buffer = None
        for step in range(3):
            factor, mean_grad = factor_by_hand(step, 476), generator.normal(size=5)
            group_lr = airbench_lr * scale  # airbench: lr_biases = lr x bias_scaler, weight_decay = wd / lr_biases
            airbench_param, airbench_buffer = nesterov_sgd_by_hand(
                airbench_param, AIRBENCH_BATCH * mean_grad, airbench_buffer, group_lr * factor, airbench_wd / group_lr
            )
            recipe_param, recipe_buffer = nesterov_sgd_by_hand(
                recipe_param,
                mean_grad,
                recipe_buffer,
                cfg.optim.lr * recipe_scale * factor,
                cfg.optim.weight_decay / recipe_scale,
            )
        assert np.abs(recipe_param - start).min() > 1e-3
        np.testing.assert_allclose(recipe_param, airbench_param, rtol=1e-6, atol=1e-9)


def test_recipe_schedule_is_the_papers_triangle_over_its_476_steps(tmp_path):
    cfg, module, _, optimizer, scheduler = build_recipe(tmp_path)
    total = cfg.trainer.max_steps
    rates = []
    for _ in range(total):
        rates.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()  # no gradients: nothing moves; keeps the scheduler's order-of-calls check quiet
        scheduler.step()
    expected = [
        [LR * factor_by_hand(t, total) * (BIAS_SCALER if g["name"] == "norm" else 1.0) for g in optimizer.param_groups]
        for t in range(total)
    ]
    np.testing.assert_allclose(rates, expected, rtol=1e-9)
    assert rates[0][0] == pytest.approx(0.3) and max(r[0] for r in rates) == pytest.approx(1.5)


def test_first_optimizer_steps_follow_nesterov_sgd_with_the_papers_groups_and_schedule(tmp_path):
    total = 6  # short, so the steps below climb the warmup (0.2 -> 1 at step 1) and start the decay
    _, module, _, optimizer, scheduler = build_recipe(tmp_path, total_steps=total)
    model = module.model
    names = {id(p): name for name, p in model.named_parameters()}
    groups = {g["name"]: sorted(names[id(p)] for p in g["params"]) for g in optimizer.param_groups}
    assert groups == {
        "weights": sorted([f"{name}.weight" for name in CONV_NAMES] + ["fc.weight"]),
        "norm": sorted(f"{name}.bias" for name in BN_NAMES),  # airbench's 'norm' biases, at 64x the rate
        "biases": ["whiten.bias"],
    }
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    frozen_before = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    assert sorted(frozen_before) == sorted(["whiten.weight"] + [f"{name}.weight" for name in BN_NAMES])

    generator = torch.Generator().manual_seed(5)
    images = correlated_images(8, seed=6)
    labels = torch.randint(0, 10, (8,), generator=generator)
    buffers: dict[str, np.ndarray | None] = dict.fromkeys(trainable)
    for step in range(4):
        logits = module(images)
        loss = module.criterion(logits, labels)
        hand_loss = smoothed_cross_entropy_by_hand(logits, labels)
        assert loss.item() == pytest.approx(hand_loss.item(), rel=1e-5)
        grads = dict(zip(trainable, torch.autograd.grad(hand_loss, list(trainable.values()), retain_graph=True)))
        optimizer.zero_grad()
        loss.backward()
        expected = {}
        for name, param in trainable.items():
            np.testing.assert_allclose(param.grad.numpy(), grads[name].numpy(), rtol=1e-5, atol=1e-7)
            norm = name.endswith(".bias") and name != "whiten.bias"
            lr = LR * factor_by_hand(step, total) * (BIAS_SCALER if norm else 1.0)
            weight_decay = WEIGHT_DECAY / (BIAS_SCALER if norm else 1.0)
            expected[name], buffers[name] = nesterov_sgd_by_hand(
                param.detach().double().numpy(), grads[name].double().numpy(), buffers[name], lr, weight_decay
            )
        optimizer.step()
        scheduler.step()
        for name, param in trainable.items():
            moved = np.abs(expected[name] - param.detach().double().numpy()).max()
            assert moved <= 1e-6 * (1 + np.abs(expected[name]).max()), f"step {step}: {name} off by {moved:g}"
        for name, value in frozen_before.items():
            assert torch.equal(dict(model.named_parameters())[name], value), f"step {step}: frozen {name} moved"
    assert all(np.abs(buffers[name]).max() > 0 for name in trainable)  # every parameter did move


# -- lookahead --------------------------------------------------------------------------------------------


def test_lookahead_averages_every_fifth_step_and_resets_the_live_weights(tmp_path):
    total = 6  # the decay at step 5 is then 0.95^5 x (5/6)^3 = 0.448: far from both 0 and 1
    cfg, module, averaging, optimizer, scheduler = build_recipe(tmp_path, total_steps=total)
    assert (averaging.mode, averaging.every_n_steps, averaging.ramp_power) == (
        "lookahead",
        LOOKAHEAD_EVERY,
        LOOKAHEAD_POWER,
    )
    assert cfg.averaging.decay == pytest.approx(LOOKAHEAD_DECAY, abs=1e-5)  # 0.77378: 0.95^5
    base_decay = cfg.averaging.decay  # the rounded figure: the average differs by 2e-5 of a step with 0.95^5
    model = module.model
    trainer = SimpleNamespace(estimated_stepping_batches=total, global_step=0)  # all the callback reads
    averaging.on_train_start(trainer, module)
    average = {name: value for name, value in float64_state(model).items() if "num_batches" not in name}
    assert sorted(averaging.average) == sorted(average)  # parameters and running statistics, frozen ones too
    images = correlated_images(8, seed=6)
    labels = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(5))
    for step in range(1, LOOKAHEAD_EVERY + 1):
        optimizer.zero_grad()
        module.criterion(module(images), labels).backward()
        optimizer.step()
        scheduler.step()
        live = float64_state(model)
        trainer.global_step = step
        averaging.on_train_batch_end(trainer, module, None, None, step - 1)
        after = float64_state(model)
        if step < LOOKAHEAD_EVERY:
            assert all(np.array_equal(after[name], live[name]) for name in live), f"step {step} changed the weights"
            continue
        decay = base_decay * (step / total) ** LOOKAHEAD_POWER
        for name, previous in average.items():
            expected = decay * previous + (1 - decay) * live[name]
            np.testing.assert_allclose(after[name], expected, rtol=1e-5, atol=1e-6, err_msg=name)
            np.testing.assert_allclose(averaging.average[name].double().numpy(), expected, rtol=1e-5, atol=1e-6)
        trained = [name for name, p in model.named_parameters() if p.requires_grad] + ["block1.bn1.running_var"]
        assert all(np.abs(after[name] - live[name]).max() > 1e-4 for name in trained)  # pulled back, not kept
        assert after["block1.bn1.num_batches_tracked"] == live["block1.bn1.num_batches_tracked"] == step
