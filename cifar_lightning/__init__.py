"""cifar-lightning: reproducible CIFAR-10 experiments on PyTorch Lightning and Hydra."""

from cifar_lightning import resolvers  # noqa: F401  (registers the configs' ${if_gpu:...})

__version__ = "0.1.0"
