"""The `data` group: CIFAR-10's files, split, batches and training augmentation (conf/data/cifar10.yaml extends
it); train.py and evaluate.py both check it. The augmentation is drawn per image, in the order of the fields."""

from typing import Literal

from pydantic import Field

from cifar_lightning.config.schema import Settings, preset

FLIP = "false, true or alternating"
#: Images per inference batch (validation, test, evaluate.py's passes). On a CPU, batches of 1000 run at about
#: half the images/s of 128-250 (activations outgrow the caches: benchmarks/inference_throughput.py); a GPU barely
#: notices. 250 divides the 10,000 test and 5,000 validation images evenly.
EVAL_BATCH_SIZE = 250


@preset("data", "cifar10_schema")
class CIFAR10Settings(Settings):
    target = "cifar_lightning.data.CIFAR10DataModule"
    data_dir: str = Field("data/", description="folder holding cifar-10-batches-py/, relative to the launch folder")
    download: bool = Field(True, description="download torchvision's md5-checked copy when files are missing or bad")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="share of each class held out for validation; 0: none")
    split_seed: int = Field(0, description="seed of the split alone, so that every run validates on the same images")
    batch_size: int = Field(128, ge=1, description="training images per step")
    eval_batch_size: int = Field(EVAL_BATCH_SIZE, ge=1, description="images per validation and test batch")
    drop_last: bool = Field(False, description="leave each epoch's last, incomplete training batch out (airbench)")
    crop_padding: int = Field(0, ge=0, description="random crop with this much zero padding; 0: off (4 is usual)")
    translate: int = Field(0, ge=0, le=16, description="random shift by up to this many pixels, reflect padding")
    flip: bool | Literal["alternating"] = Field(
        False, description="random horizontal flip, or alternating per epoch", json_schema_extra={"must": FLIP}
    )
    cutout: int = Field(0, ge=0, le=32, description="side of a random square set to the training mean; 0: off")
    seed: int = Field(0, description="seed of the shuffling and the augmentation (conf/data/: the run's seed)")
    on_device: bool = Field(True, description="keep each split on the training device: no host copy per step")
