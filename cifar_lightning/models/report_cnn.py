"""The course report's CNN: three 5x5 conv layers (32/32/64) with ReLU and unpadded 3x3 stride-2 max pooling
(32 -> 15 -> 7 -> 3), FC 64, FC 10; stable layer names, so that evaluation code can hook a layer by name.
"""

from collections import OrderedDict

from torch import nn


class ReportCNN(nn.Sequential):
    """The report's CNN, with optional batch norm (after conv1 only, or after every conv) and dropout before
    fc2; settings: cifar_lightning/config/model.py."""

    def __init__(self, num_classes: int = 10, batch_norm: str = "none", dropout: float = 0.0) -> None:
        layers: list[tuple[str, nn.Module]] = []
        in_channels = 3
        for i, out_channels in enumerate((32, 32, 64), start=1):
            layers.append((f"conv{i}", nn.Conv2d(in_channels, out_channels, kernel_size=5, padding=2)))
            if batch_norm == "all" or (batch_norm == "first" and i == 1):
                layers.append((f"bn{i}", nn.BatchNorm2d(out_channels)))
            layers.append((f"relu{i}", nn.ReLU()))
            layers.append((f"pool{i}", nn.MaxPool2d(kernel_size=3, stride=2)))
            in_channels = out_channels
        layers += [
            ("flatten", nn.Flatten()),
            ("fc1", nn.Linear(64 * 3 * 3, 64)),
            ("relu4", nn.ReLU()),
            ("dropout", nn.Dropout(dropout)),
            ("fc2", nn.Linear(64, num_classes)),
        ]
        super().__init__(OrderedDict(layers))
        self.batch_norm, self.dropout_p, self.num_classes = batch_norm, float(dropout), num_classes
