"""evaluate.py's own settings (conf/evaluate.yaml extends them); `data` and `ood` have schemas of their own."""

from typing import Literal

from pydantic import Field

from cifar_lightning.config.data import EVAL_BATCH_SIZE
from cifar_lightning.config.ood import Featured
from cifar_lightning.config.schema import Settings, preset
from cifar_lightning.config.types import Device, KeepHeap, TTALevel


class GallerySettings(Settings):
    size: int = Field(32, ge=0, description="images in correct.png and in wrong.png, most confident first")


class GradCAMSettings(Settings):
    layer: str | None = Field(None, description="layer whose activations Grad-CAM weighs; null: the last Conv2d")
    count: int = Field(8, ge=0, description="overlays of the first images of each gallery, in gradcam/; 0: none")
    explain: Literal["predicted", "label"] = Field(
        "predicted", description="the class each map explains; not true/false, which Hydra reads as booleans"
    )


@preset(None, "evaluate_schema")
class EvaluateSettings(Settings):
    ckpt: str | None = Field(None, description="a checkpoint file written by train.py")
    run_dir: str | None = Field(None, description="or a train.py run directory: its checkpoints/best.ckpt")
    device: Device = "auto"
    tta: TTALevel = 0
    batch_size: int = Field(EVAL_BATCH_SIZE, ge=1, description="test images per forward pass")
    progress: bool = Field(True, description="show a progress bar while predicting")
    keep_heap: KeepHeap = True
    seed: int = Field(0, ge=0, description="seeds Python, NumPy and torch, and the generated corruptions (robustness)")
    gallery: GallerySettings = GallerySettings()
    gradcam: GradCAMSettings = GradCAMSettings()
    robustness: Literal["none", "generated", "official"] = Field(
        "none",
        description="accuracy and OOD false alarms on CIFAR-10-C's 15 corruptions x 5 severities: generated here "
        "(a re-implementation of its recipe, labelled so) or the official files in <data.data_dir>/CIFAR-10-C/ "
        "(data.download=true fetches them); none: off",
    )
    robustness_images: int | None = Field(
        None, ge=1, description="test images per corruption and severity, the first ones; null: all 10,000"
    )
    robustness_detectors: Featured | None = Field(
        None,
        description="OOD detectors whose false alarms on corrupted images are measured; null: the one predict and "
        "serve use by default (chosen on the validation halves), msp and mean_activation (the report's rule)",
    )
