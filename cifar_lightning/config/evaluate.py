"""evaluate.py's own settings (conf/evaluate.yaml extends them); `data` and `ood` have schemas of their own."""

from typing import Literal

from pydantic import Field

from cifar_lightning.config.schema import Settings, preset
from cifar_lightning.config.types import Device, TTALevel


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
    batch_size: int = Field(1000, ge=1, description="test images per forward pass")
    progress: bool = Field(True, description="show a progress bar while predicting")
    seed: int = Field(0, ge=0, description="seeds Python, NumPy and torch (evaluation draws nothing at random)")
    gallery: GallerySettings = GallerySettings()
    gradcam: GradCAMSettings = GradCAMSettings()
