"""Model registry: name -> nn.Module class (`model=<name>` picks conf/model/<name>.yaml). Every model's last
module is an `nn.Linear` named `fc`, the logits from the penultimate features: OOD detectors rely on this.
"""

from torch import nn

from cifar_lightning.models.fast_net import FastNet
from cifar_lightning.models.report_cnn import ReportCNN
from cifar_lightning.models.resnet import ResNet18

MODELS: dict[str, type[nn.Module]] = {
    "report_cnn": ReportCNN,
    "resnet18": ResNet18,
    "fast_net": FastNet,
}

__all__ = ["MODELS", "FastNet", "ResNet18", "ReportCNN"]
