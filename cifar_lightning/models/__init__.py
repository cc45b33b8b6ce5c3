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


def classifier_head(model: nn.Module) -> nn.Linear:
    """The model's last nn.Linear: its output is the logits, its input the penultimate features."""
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier head, so it has no penultimate features")
    return linears[-1]


__all__ = ["MODELS", "FastNet", "ResNet18", "ReportCNN", "classifier_head"]
