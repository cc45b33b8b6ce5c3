"""The `model` group: one schema per network (conf/model/<name>.yaml extends it)."""

from typing import Annotated, Literal

from pydantic import Field

from cifar_lightning.config.schema import Settings, preset

NumClasses = Annotated[int, Field(ge=2, description="outputs of the last layer (10 for CIFAR-10)")]
Width = Annotated[int, Field(ge=1)]


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
    widths: list[Width] = Field(
        [64, 256, 256],
        min_length=3,
        max_length=3,
        description="output channels of the three conv groups",
        json_schema_extra={"must": "three positive integers"},
    )
    whiten_patch: int = Field(2, ge=1, le=4, description="side of the whitening patches (2: 24 whitening channels)")
    whiten_eps: float = Field(5e-4, ge=0, description="eigenvalue offset of the whitening")
    bn_momentum: float = Field(0.6, ge=0, lt=1, description="share of the old batch-norm statistics kept per step")
    head_scale: float = Field(1 / 9, gt=0, description="the logits' scale, applied to the features before fc")
    init_images: int = Field(5000, ge=1, description="first training images the whitening is computed from")


@preset("model", "resnet18_schema")
class ResNet18Settings(Settings):
    target = "cifar_lightning.models.ResNet18"
    num_classes: NumClasses = 10
    widths: list[Width] = Field(
        [64, 128, 256, 512],
        min_length=4,
        max_length=4,
        description="channels of the four stages",
        json_schema_extra={"must": "four positive integers"},
    )
