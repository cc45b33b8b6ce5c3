import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from cifar_lightning.augment import (
    alternating_flip,
    alternating_flip_choice,
    cutout,
    random_crop,
    random_flip,
    random_translate,
    tta_logits,
)
from cifar_lightning.config import Settings, check
from cifar_lightning.config.types import TTALevel
from cifar_lightning.errors import ConfigError


def images(n=16):
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_crop_without_padding_is_identity():
    x = images()
    assert torch.equal(random_crop(x, 0, torch.Generator().manual_seed(0)), x)


def test_crop_takes_a_window_of_the_padded_image():
    x = images()
    out = random_crop(x, 4, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = F.pad(x, (4, 4, 4, 4))
    for i in range(len(x)):
        windows = [padded[i, :, dy : dy + 32, dx : dx + 32] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(out[i], w) for w in windows)
    # Shifts differ between images of one batch (not one crop for the whole batch).
    assert len({tuple(torch.nonzero(out[i, 0] != 0)[0].tolist()) for i in range(len(x))}) > 1


def test_crop_and_flip_are_seeded():
    x = images()
    a = random_flip(random_crop(x, 4, g := torch.Generator().manual_seed(7)), g)
    b = random_flip(random_crop(x, 4, h := torch.Generator().manual_seed(7)), h)
    c = random_flip(random_crop(x, 4, k := torch.Generator().manual_seed(8)), k)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_flip_mirrors_about_half_the_images():
    x = images(200)
    out = random_flip(x, torch.Generator().manual_seed(0))
    same = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    mirrored = torch.tensor([torch.equal(o, i.flip(2)) for o, i in zip(out, x)])
    assert bool((same | mirrored).all())
    assert 60 < int(mirrored.sum()) < 140


def test_translate_shifts_content_with_reflected_borders():
    x = images()
    out = random_translate(x, 2, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = F.pad(x, (2, 2, 2, 2), mode="reflect")
    shifts = []
    for i in range(len(x)):
        windows = {(dy, dx): padded[i, :, dy : dy + 32, dx : dx + 32] for dy in range(5) for dx in range(5)}
        found = [shift for shift, window in windows.items() if torch.equal(out[i], window)]
        assert found, f"image {i} is not a shifted copy"
        dy, dx = found[0]
        shifts.append((dy, dx))
        # The content itself moved: the part still inside the frame equals the original, shifted.
        r, c = dy - 2, dx - 2
        assert torch.equal(
            out[i, :, max(0, -r) : 32 - max(0, r), max(0, -c) : 32 - max(0, c)],
            x[i, :, max(0, r) : 32 - max(0, -r), max(0, c) : 32 - max(0, -c)],
        )
    assert len(set(shifts)) > 1  # one shift per image, not one per batch
    assert torch.equal(random_translate(x, 0, torch.Generator()), x)


def test_translate_is_seeded():
    x = images()
    a = random_translate(x, 2, torch.Generator().manual_seed(5))
    b = random_translate(x, 2, torch.Generator().manual_seed(5))
    c = random_translate(x, 2, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_alternating_flip_mirrors_the_other_half_in_odd_epochs():
    x = images(200)
    choice = alternating_flip_choice(200, torch.Generator().manual_seed(0))
    assert torch.equal(choice, alternating_flip_choice(200, torch.Generator().manual_seed(0)))
    assert 60 < int(choice.sum()) < 140
    even, odd = alternating_flip(x, choice, 0), alternating_flip(x, choice, 1)
    for i in range(200):
        assert torch.equal(even[i], x[i].flip(2) if choice[i] else x[i])  # an exact mirror, or untouched
        assert torch.equal(odd[i], x[i] if choice[i] else x[i].flip(2))  # the other way round next epoch
    assert torch.equal(alternating_flip(x, choice, 2), even) and torch.equal(alternating_flip(x, choice, 3), odd)


def test_cutout_fills_exactly_one_square_per_image():
    x = torch.randint(1, 256, (32, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    fill = torch.tensor([7, 8, 9], dtype=torch.uint8)
    out = cutout(x, 8, torch.Generator().manual_seed(2), fill=fill)
    corners = set()
    for i in range(len(x)):
        changed = torch.nonzero((out[i] != x[i]).any(dim=0))
        assert len(changed) == 64  # an 8x8 square (no pixel of x equals the fill in all channels by chance here)
        top, left = changed.min(dim=0).values.tolist()
        assert changed.max(dim=0).values.tolist() == [top + 7, left + 7]
        assert torch.equal(out[i, :, top : top + 8, left : left + 8], fill.view(3, 1, 1).expand(3, 8, 8))
        corners.add((top, left))
    assert len(corners) > 1
    assert torch.equal(cutout(x, 8, torch.Generator().manual_seed(2), fill=fill), out)  # seeded
    assert not torch.equal(cutout(x, 8, torch.Generator().manual_seed(3), fill=fill), out)
    assert torch.equal(cutout(x, 0, torch.Generator()), x)


def test_tta_logits_average_the_mirrored_and_shifted_views():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(5)).eval()
    x = torch.randn(6, 3, 32, 32)
    model(x)
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    up_left, down_right = padded[:, :, :32, :32], padded[:, :, 2:, 2:]
    assert torch.equal(up_left[:, :, 1:, 1:], x[:, :, :31, :31])
    assert torch.equal(down_right[:, :, :31, :31], x[:, :, 1:, 1:])

    def mirror(v):
        return (model(v) + model(v.flip(3))) / 2

    with torch.no_grad():
        assert torch.allclose(tta_logits(model, x, level=0), model(x))
        assert torch.allclose(tta_logits(model, x, level=1), mirror(x), atol=1e-6)
        expected = mirror(x) / 2 + (mirror(up_left) + mirror(down_right)) / 4
        assert torch.allclose(tta_logits(model, x, level=2), expected, atol=1e-6)


class WithTTA(Settings):
    tta: TTALevel = 0


def test_tta_levels_are_the_integers_0_1_2_only():
    """The one declaration of the level (config.types.TTALevel) that every schema with a `tta` uses."""
    for value in (0, 1, 2):
        check(OmegaConf.create({"tta": value}), "evaluate", "nothing was evaluated", root=WithTTA)
    for value in (3, -1, True, 2.0, "2"):
        with pytest.raises(ConfigError, match=r"tta must be one of 0, 1, 2 \(0: none, 1: with mirror images, 2: al"):
            check(OmegaConf.create({"tta": value}), "evaluate", "nothing was evaluated", root=WithTTA)
