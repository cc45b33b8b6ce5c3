"""The OOD tests' shared evaluate() run: OOD detection on the tiny run, once per session, for test_job.py and
test_saved.py. Small sets keep it to the 15,000 CIFAR-10 images evaluate.py always reads (10,000 test, 5,000
validation) plus about 1,300 more: the first 200 images of each real OOD set (cifar100, mnist, fashion_mnist, from
$CIFAR10_DATA_DIR/ood) in an ood.data_dir of their own, 200 of each noise, a folder of 3 images (and a broken file),
and 500 training images to fit on."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifar_lightning import inference
from cifar_lightning.evaluation import evaluate
from cifar_lightning.ood.detectors import DETECTOR_LABELS, IMAGE_DETECTORS
from tests.conftest import compose_evaluate

#: Images of each OOD set; training images the detectors are fitted on.
SET_SIZE, FIT_IMAGES = 200, 500
REAL_SETS = {"cifar100": "near", "mnist": "far", "fashion_mnist": "far"}
DEFAULT_SETS = [*REAL_SETS, "gaussian_noise", "uniform_noise"]
#: ODIN's passes through the whole network are left to tests/ood/test_detectors.py.
FEATURE_DETECTORS = [name for name in DETECTOR_LABELS if name not in IMAGE_DETECTORS]
#: Colours the OOD figures draw with (RGB in [0, 1]): the in-distribution histogram (matplotlib's C0 filled at alpha
#: 0.35, over white), the first OOD set's outline (C1), and the gallery's frames (tab:green: ID, tab:red: OOD).
ID_FILL, FIRST_OOD = (0.69, 0.81, 0.90), (1.0, 0.5, 0.05)
FRAME_ID, FRAME_OOD = (0.17, 0.63, 0.17), (0.84, 0.15, 0.16)
#: Every pass of the shared evaluation through inference.batches (every inference path's batching loop):
#: (description, images).
PASSES: list[tuple[str, int]] = []


def png_rgb(path: Path) -> np.ndarray:
    """A PNG file's pixels, RGB in [0, 1] (H x W x 3); fails if it is not a PNG."""
    with Image.open(path) as image:
        assert image.format == "PNG", (path, image.format)
        return np.asarray(image.convert("RGB")).astype(float) / 255


def colour_pixels(rgb: np.ndarray, colour: tuple[float, float, float], tolerance: float = 0.1) -> np.ndarray:
    """Where the image is `colour`, give or take `tolerance` in each channel: a boolean H x W mask."""
    return (np.abs(rgb - np.array(colour)) < tolerance).all(axis=-1)


@pytest.fixture(scope="session")
def ood_evaluated(tiny_run, data_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(log folder, output folder): evaluate() with OOD on, every feature detector, the default sets made small
    plus `mine`, a folder of images with a broken file; written to <log folder>/evaluate/runs/first/ as
    evaluate.py lays it out (find_detectors looks there)."""
    sets = tmp_path_factory.mktemp("ood_sets")
    for name in REAL_SETS:
        with np.load(data_dir / "ood" / f"{name}_test.npz") as real:
            np.savez(sets / f"{name}_test.npz", images=real["images"][:SET_SIZE])
    folder = tmp_path_factory.mktemp("my_set")
    for index in range(3):
        Image.fromarray(np.full((20, 30, 3), 60 * index, dtype=np.uint8)).save(folder / f"{index}.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    log_dir = tmp_path_factory.mktemp("logs")
    out = log_dir / "evaluate" / "runs" / "first"
    cfg = compose_evaluate(
        [
            f"run_dir={tiny_run[0]}",
            f"data.data_dir={data_dir}",
            f"ood.data_dir={sets}",
            "ood.download=false",
            f"ood.fit_images={FIT_IMAGES}",
            f"ood.sets.gaussian_noise.n={SET_SIZE}",
            f"ood.sets.uniform_noise.n={SET_SIZE}",
            f"+ood.sets.mine.path={folder}",
            "ood.gallery_size=4",
            "gallery.size=4",
            "gradcam.count=1",
            f"ood.detectors=[{','.join(FEATURE_DETECTORS)}]",
        ],
        out,
        ood=True,
    )
    every_batch = inference.batches

    def counted(images, *args, **kwargs):
        PASSES.append((kwargs.get("description", args[3] if len(args) > 3 else "Predicting"), len(images)))
        return every_batch(images, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(inference, "batches", counted)
        evaluate(cfg)
    return log_dir, out
