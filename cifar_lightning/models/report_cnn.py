"""The course report's CNN: three 5x5 conv layers (32/32/64) with ReLU and 3x3 stride-2 max
pooling, FC 64, FC 10.

Pooling is unpadded, as in the report's toolbox, so the feature maps go 32 -> 15 -> 7 -> 3
and FC 64 takes 64 * 3 * 3 = 576 inputs. Every layer has a stable name (conv1, bn1, relu1,
pool1, ..., fc1, relu4, dropout, fc2) so that evaluation code can hook a layer by name.
"""

from collections import OrderedDict

from torch import nn

from cifar_lightning.errors import is_fraction

BATCH_NORM_CHOICES = ("none", "first", "all")


class ReportCNN(nn.Sequential):
    """The report's CNN, with optional batch norm and dropout.

    batch_norm: "none"; "first" (after conv1 only: the report's text read literally);
        "all" (after every conv, before its ReLU: the variant that reaches the report's 66.6%).
    dropout: probability of dropping an FC-64 activation before the last FC layer.
    """

    def __init__(self, num_classes: int = 10, batch_norm: str = "none", dropout: float = 0.0) -> None:
        if batch_norm not in BATCH_NORM_CHOICES:
            raise ValueError(
                f"batch_norm must be one of {', '.join(BATCH_NORM_CHOICES)}, got {batch_norm!r}; "
                f"e.g. model.batch_norm=all"
            )
        if not is_fraction(dropout, zero=True, one=False):
            raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}; e.g. model.dropout=0.2")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
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
