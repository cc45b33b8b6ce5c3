"""cifar-lightning: reproducible CIFAR-10 experiments on PyTorch Lightning and Hydra."""

__version__ = "0.1.0"
