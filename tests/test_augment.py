import torch
import torch.nn.functional as F

from cifar_lightning.augment import random_crop, random_flip


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
