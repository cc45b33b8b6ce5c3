"""The OOD tests' shared evaluate() run: OOD detection on the tiny run, once per session, for test_job.py and
test_saved.py. Small sets keep it to the 15,000 CIFAR-10 images evaluate.py always reads (10,000 test, 5,000
validation) plus about 1,300 more: the first 200 images of each real OOD set (cifar100, mnist, fashion_mnist, from
$CIFAR10_DATA_DIR/ood) in an ood.data_dir of their own, 200 of each noise, a folder of 3 images (and a broken file),
and 500 training images to fit on."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifar_lightning.evaluation import evaluate
from cifar_lightning.ood.detectors import DETECTOR_LABELS, IMAGE_DETECTORS
from tests.conftest import compose_evaluate

#: Images of each OOD set; training images the detectors are fitted on.
SET_SIZE, FIT_IMAGES = 200, 500
REAL_SETS = {"cifar100": "near", "mnist": "far", "fashion_mnist": "far"}
DEFAULT_SETS = [*REAL_SETS, "gaussian_noise", "uniform_noise"]
#: ODIN's passes through the whole network are left to tests/ood/test_detectors.py.
FEATURE_DETECTORS = [name for name in DETECTOR_LABELS if name not in IMAGE_DETECTORS]


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
    cfg = compose_evaluate([
        f"run_dir={tiny_run[0]}", f"data.data_dir={data_dir}", f"ood.data_dir={sets}", "ood.download=false",
        f"ood.fit_images={FIT_IMAGES}", f"ood.sets.gaussian_noise.n={SET_SIZE}", f"ood.sets.uniform_noise.n={SET_SIZE}",
        f"+ood.sets.mine.path={folder}", "ood.gallery_size=4", "gallery.size=4", "gradcam.count=1",
        f"ood.detectors=[{','.join(FEATURE_DETECTORS)}]",
    ], out, ood=True)  # fmt: skip
    evaluate(cfg)
    return log_dir, out
