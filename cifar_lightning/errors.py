"""Errors a user can fix. Each message is one paragraph: what is wrong, and how to fix it.

Entry points print these without a traceback and exit non-zero; anything else is a bug and
keeps its traceback.
"""

import math


class CifarLightningError(Exception):
    """Base class of user-fixable errors (bad config, data or checkpoint)."""

    exit_code = 2


class ConfigError(CifarLightningError):
    """A config value is unknown or invalid."""


class DataError(CifarLightningError):
    """The data set is missing, corrupt or unreadable."""


class ResumeError(CifarLightningError):
    """A run cannot be resumed: its directory, config or last checkpoint is missing or unusable, or an
    override would change its result."""


class TrainingDiverged(CifarLightningError):
    """The training loss became NaN or infinite. Exit status 3, so scripts (and Slurm) can tell it from
    bad input (2): the config was valid, the optimization was not."""

    exit_code = 3

    def __init__(self, message: str, step: int, epoch: int, loss: float) -> None:
        super().__init__(message)
        self.step, self.epoch, self.loss = step, epoch, loss


class SearchError(CifarLightningError):
    """A hyperparameter search cannot start: its search space, sampler, pruner, storage or study is unusable.
    Raised before any trial runs (cifar_lightning.hpo)."""


class TrialPruned(CifarLightningError):
    """An Optuna pruner stopped this hyperparameter-search trial: its validation metric was not promising.
    Not a fault; the run's metrics.json says `status: pruned`. Exit status 4 where it ends a process."""

    exit_code = 4

    def __init__(self, message: str, epoch: int, value: float) -> None:
        super().__init__(message)
        self.epoch, self.value = epoch, value


def one_line(text: object, limit: int | None = None) -> str:
    """An exception or message on one line (whitespace runs become one space), cut to `limit` characters: how
    a library's multi-line error is quoted inside one of ours."""
    line = " ".join(str(text).split())
    return line if limit is None else line[:limit]


def is_number(value: object, finite: bool = False) -> bool:
    """True for an int or float (not a bool); with finite, also not inf or nan (a value read from a JSON record)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and (not finite or math.isfinite(value))


def is_int(value: object, minimum: int | None = None) -> bool:
    """True for an integer (not a bool), >= minimum when one is given (a value read from a record or a search space)."""
    return isinstance(value, int) and not isinstance(value, bool) and (minimum is None or value >= minimum)
