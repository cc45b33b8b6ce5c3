"""ResNet-18 in its CIFAR form (He et al. 2016): a 3x3 stride-1 stem without max-pool (torchvision's ImageNet stem
shrinks 32x32 images to 8x8 and loses accuracy), four stages of two basic blocks, average pooling and `fc`.
Layer names follow torchvision's.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the input (through a 1x1 conv + BN when the shape changes), then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                    bn=nn.BatchNorm2d(out_channels),
                )
            )
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class ResNet18(nn.Sequential):
    """CIFAR ResNet-18 (see the module docstring). widths: channels of the four stages."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] | list[int] = (64, 128, 256, 512)) -> None:
        widths = tuple(widths)
        layers: list[tuple[str, nn.Module]] = [
            ("conv1", nn.Conv2d(3, widths[0], 3, padding=1, bias=False)),
            ("bn1", nn.BatchNorm2d(widths[0])),
            ("relu", nn.ReLU(inplace=True)),
        ]
        in_channels = widths[0]
        for stage, width in enumerate(widths, start=1):
            stride = 1 if stage == 1 else 2
            blocks = nn.Sequential(BasicBlock(in_channels, width, stride), BasicBlock(width, width))
            layers.append((f"layer{stage}", blocks))
            in_channels = width
        layers += [
            ("avgpool", nn.AdaptiveAvgPool2d(1)),
            ("flatten", nn.Flatten()),
            ("fc", nn.Linear(in_channels, num_classes)),
        ]
        super().__init__(OrderedDict(layers))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        self.num_classes = num_classes
