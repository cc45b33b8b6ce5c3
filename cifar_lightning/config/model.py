"""The `model` group: one schema per network (conf/model/<name>.yaml extends it)."""

from typing import Annotated, Any, Literal

from pydantic import Field

from cifar_lightning.config.schema import Settings, preset

NumClasses = Annotated[int, Field(ge=2, description="outputs of the last layer (10 for CIFAR-10)")]
Width = Annotated[int, Field(ge=1)]


def channel_widths(default: list[int], must: str, description: str) -> Any:
    """A field holding exactly len(default) positive channel counts."""
    n = len(default)
    return Field(default, min_length=n, max_length=n, description=description, json_schema_extra={"must": must})


@preset("model", "report_cnn_schema")
class ReportCNNSettings(Settings):
    target = "cifar_lightning.models.ReportCNN"
    num_classes: NumClasses = 10
    batch_norm: Literal["none", "first", "all"] = Field(
        "none", description="none; first: after conv1 only (the report's text read literally); all: after every conv"
    )
    dropout: float = Field(0.0, ge=0, lt=1, description="probability of dropping an FC-64 activation before fc2")


@preset("model", "fast_net_schema")
class FastNetSettings(Settings):
    target = "cifar_lightning.models.FastNet"
    num_classes: NumClasses = 10
    widths: list[Width] = channel_widths([64, 256, 256], "three positive integers", "channels of the three conv groups")
    whiten_patch: int = Field(2, ge=1, le=4, description="side of the whitening patches (2: 24 whitening channels)")
    whiten_eps: float = Field(5e-4, ge=0, description="eigenvalue offset of the whitening")
    bn_momentum: float = Field(0.6, ge=0, lt=1, description="share of the old batch-norm statistics kept per step")
    head_scale: float = Field(1 / 9, gt=0, description="the logits' scale, applied to the features before fc")
    init_images: int = Field(5000, ge=1, description="first training images the whitening is computed from")


@preset("model", "resnet18_schema")
class ResNet18Settings(Settings):
    target = "cifar_lightning.models.ResNet18"
    num_classes: NumClasses = 10
    widths: list[Width] = channel_widths([64, 128, 256, 512], "four positive integers", "channels of the four stages")
