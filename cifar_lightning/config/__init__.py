"""The settings of every job, declared once (cifar_lightning/config/schema.py says how). Importing this
package stores every schema in Hydra's ConfigStore, so conf/'s presets can extend them."""

from cifar_lightning.config import data, evaluate, inference, model, ood, search, train  # noqa: F401  (registers)
from cifar_lightning.config.schema import Settings, check, must_be, preset

__all__ = ["Settings", "check", "must_be", "preset"]
