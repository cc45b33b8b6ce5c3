"""CIFAR-10 as in-memory uint8 tensors: the md5-checked files, batches cut on the training device (loader), and the
LightningDataModule that splits, augments and normalizes them."""

from cifar_lightning.data.files import CIFAR10_CLASSES, find_cifar10_problems, load_cifar10  # noqa: F401
from cifar_lightning.data.loader import TensorBatchLoader  # noqa: F401
from cifar_lightning.data.module import CIFAR10DataModule, normalize  # noqa: F401
