"""The search space: config keys or groups and the Optuna distributions their values are drawn from, in Hydra's
sweep syntax (SYNTAX, as hydra-optuna-sweeper writes it). A trial's overrides are `key=value` per value."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from hydra.errors import HydraException
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from cifar_lightning.errors import SearchError, is_int, is_number, one_line

SYNTAX = (
    "interval(low, high), tag(log, interval(low, high)), tag(int, interval(low, high)), range(start, stop[, step]) "
    "or choice(a, b, ...)"
)


def _empty(key: str, what: str) -> SearchError:
    return SearchError(
        f"the search space of `{key}` is empty: {what}. Give it a non-empty range in hydra.sweeper.params "
        f"(e.g. {key}: interval(0.0, 0.5)) or on the command line; no trial was run."
    )


def _interval(key: str, sweep: IntervalSweep) -> BaseDistribution:
    low, high, log = sweep.start, sweep.end, "log" in sweep.tags
    if not (is_number(low, finite=True) and is_number(high, finite=True)):
        raise SearchError(f"`{key}`: interval bounds must be finite numbers, got {low!r} and {high!r}")
    if low >= high:
        raise _empty(key, f"interval({low}, {high}) has low >= high")
    if log and low <= 0:
        raise _empty(key, f"a log-scale interval needs low > 0, got {low}")
    if "int" in sweep.tags:  # Hydra's interval() reads its bounds as floats
        if low != int(low) or high != int(high):
            raise SearchError(f"`{key}`: tag(int, interval(...)) needs whole-number bounds, got {low} and {high}")
        return IntDistribution(int(low), int(high), log=log)
    return FloatDistribution(float(low), float(high), log=log)


def _range(key: str, sweep: RangeSweep) -> BaseDistribution:
    start, stop, step = sweep.start, sweep.stop, sweep.step
    if not all(is_int(v) for v in (start, stop, step)):
        raise SearchError(
            f"`{key}`: range() takes integers here, got range({start}, {stop}, {step}); for floats write "
            f"interval(low, high) or choice(a, b, ...)"
        )
    if step <= 0 or stop <= start:
        raise _empty(key, f"range({start}, {stop}, {step}) holds no value (the stop is excluded)")
    high = start + step * ((stop - 1 - start) // step)
    return IntDistribution(start, high, step=step)


def distribution(override: Override) -> BaseDistribution:
    """The Optuna distribution of one swept override."""
    key, value = override.get_key_element(), override.value()
    if isinstance(value, IntervalSweep):
        return _interval(key, value)
    if isinstance(value, RangeSweep) and not value.shuffle:
        return _range(key, value)
    if override.is_choice_sweep() or isinstance(value, (ChoiceSweep, RangeSweep)):
        choices = list(override.sweep_iterator(transformer=Transformer.identity))
        if not choices:
            raise _empty(key, "choice() lists no value")
        return CategoricalDistribution(choices)
    raise SearchError(f"`{key}`: {override.input_line} is not a search space Optuna can draw from; use {SYNTAX}")


def build_space(
    params: Mapping[str, Any] | None, arguments: Sequence[str]
) -> tuple[dict[str, BaseDistribution], list[str]]:
    """The distributions (config params, then command-line sweeps) and the fixed overrides of every trial."""
    lines = [f"{key}={value}" for key, value in (params or {}).items()]
    try:
        overrides = OverridesParser.create().parse_overrides([*lines, *arguments])
    except HydraException as exc:
        raise SearchError(
            f"the search space cannot be parsed: {one_line(exc)}. Write each parameter as "
            f"<config key>: {SYNTAX}, e.g. optim.lr: tag(log, interval(0.01, 0.2))."
        ) from exc
    space: dict[str, BaseDistribution] = {}
    fixed: list[str] = []
    for override in overrides:
        if override.is_sweep_override():
            space[override.get_key_element()] = distribution(override)
        elif override.input_line in arguments:
            fixed.append(override.input_line)
        else:
            raise SearchError(
                f"hydra.sweeper.params.{override.get_key_element()} is a single value ({override.input_line}), "
                f"not a search space: write {SYNTAX}, or set the value in the config instead"
            )
    if not space:
        raise SearchError(
            "the search space is empty: hydra.sweeper.params names no parameter. Add one in "
            "conf/hparams_search/<name>.yaml, e.g. optim.lr: tag(log, interval(0.01, 0.2)); no trial was run."
        )
    return space, fixed


def hydra_value(value: Any) -> str:
    """A drawn value as Hydra override text: numbers and plain words bare, other strings quoted."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if text and all(c.isalnum() or c in "_-./" for c in text) and not text[0].isdigit():
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def trial_overrides(params: Mapping[str, Any]) -> list[str]:
    """`key=value` overrides of a trial's drawn parameters."""
    return [f"{key}={hydra_value(value)}" for key, value in params.items()]


def probe_values(dist: BaseDistribution) -> list[Any]:
    """Values whose overrides must compose before the search starts: both ends, or every choice."""
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    return [dist.low, dist.high]


def draw(trial: Any, name: str, dist: BaseDistribution) -> Any:
    """Draw (or, for an enqueued retry, read back) one parameter of an Optuna trial."""
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_categorical(name, dist.choices)
