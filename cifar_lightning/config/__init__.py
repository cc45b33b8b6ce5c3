"""The settings of every job, declared once (cifar_lightning/config/schema.py says how). Importing this
package stores every schema in Hydra's ConfigStore, so conf/'s presets can extend them."""

from cifar_lightning.config import model, search  # noqa: F401  (registers the schemas)
from cifar_lightning.config import ood  # noqa: F401  (registers the `ood` group)
from cifar_lightning.config import data, evaluate  # noqa: F401  (registers `data` and evaluate.py's schemas)
from cifar_lightning.config import inference  # noqa: F401  (registers predict's, serve's, export's schemas)
from cifar_lightning.config import train  # noqa: F401  (registers train.py's schemas)
from cifar_lightning.config.schema import Settings, check, must_be, preset

__all__ = ["Settings", "check", "must_be", "preset"]
