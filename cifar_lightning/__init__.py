"""cifar-lightning: reproducible CIFAR-10 experiments on PyTorch Lightning and Hydra."""

from importlib.metadata import PackageNotFoundError, version

from cifar_lightning import resolvers  # noqa: F401  (registers the configs' ${if_gpu:...})

try:
    __version__ = version("cifar-lightning")  # pyproject.toml declares it
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "unknown"
