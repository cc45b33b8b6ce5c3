"""Errors a user can fix. Each message is one paragraph: what is wrong, and how to fix it.

Entry points print these without a traceback and exit non-zero; anything else is a bug and
keeps its traceback.
"""


class CifarLightningError(Exception):
    """Base class of user-fixable errors (bad config, data or checkpoint)."""

    exit_code = 2


class ConfigError(CifarLightningError):
    """A config value is unknown or invalid."""


class DataError(CifarLightningError):
    """The data set is missing, corrupt or unreadable."""


def is_int(value: object, minimum: int) -> bool:
    """True for an integer (not a bool) >= minimum: the check behind many config errors."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum
