"""Model registry: name -> nn.Module class. `model=<name>` picks `conf/model/<name>.yaml`,
whose `_target_` is one of these classes.
"""

from torch import nn

from cifar_lightning.models.seed_cnn import SeedCNN

MODELS: dict[str, type[nn.Module]] = {
    "seed_cnn": SeedCNN,
}

__all__ = ["MODELS", "SeedCNN"]
