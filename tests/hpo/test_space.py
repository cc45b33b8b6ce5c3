"""The search space: Hydra's sweep syntax to Optuna distributions, and drawn values back to overrides."""

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from cifar_lightning.errors import SearchError
from cifar_lightning.hpo.space import build_space, hydra_value, probe_values, trial_overrides


def test_each_syntax_gives_its_distribution_and_command_line_sweeps_join_in():
    space, fixed = build_space(
        {
            "optim.lr": "tag(log, interval(0.0001, 0.1))",
            "model.dropout": "interval(0.0, 0.5)",
            "data.batch_size": "choice(64, 128)",
            "scheduler": "choice(step, multistep)",
            "model.width": "range(16, 129, 16)",
            "trainer.max_epochs": "tag(int, interval(2, 8))",
            "data.eval_batch_size": "tag(int, log, interval(100, 1000))",
        },
        ["hparams_search=report_cnn", "trainer.max_epochs=4", "optim.momentum=interval(0.8,0.95)"],
    )
    assert space["optim.lr"] == FloatDistribution(0.0001, 0.1, log=True)
    assert space["model.dropout"] == FloatDistribution(0.0, 0.5)
    assert space["data.batch_size"] == CategoricalDistribution([64, 128])
    assert space["scheduler"] == CategoricalDistribution(["step", "multistep"])
    assert space["model.width"] == IntDistribution(16, 128, step=16)  # Hydra's range excludes its stop
    assert space["trainer.max_epochs"] == IntDistribution(2, 8)
    assert space["data.eval_batch_size"] == IntDistribution(100, 1000, log=True)
    assert space["optim.momentum"] == FloatDistribution(0.8, 0.95)  # a command-line sweep is searched too
    assert fixed == ["hparams_search=report_cnn", "trainer.max_epochs=4"]  # plain overrides hold for every trial


@pytest.mark.parametrize(
    "params, expected",
    [
        ({"model.dropout": "interval(0.5, 0.1)"}, "is empty: interval(0.5, 0.1) has low >= high"),
        ({"optim.lr": "tag(log, interval(0.0, 0.1))"}, "log-scale interval needs low > 0"),
        ({"model.width": "range(8, 8)"}, "holds no value"),
        ({"model.width": "tag(int, interval(1.5, 4))"}, "needs whole-number bounds"),
        ({"model.width": "range(0.5, 2.5)"}, "range() takes integers"),
        ({"model.dropout": "0.3"}, "is a single value (model.dropout=0.3), not a search space"),
        ({"model.dropout": "interval(0.1"}, "cannot be parsed"),
        ({}, "the search space is empty"),
    ],
)
def test_an_empty_or_unusable_space_is_refused(params, expected):
    with pytest.raises(SearchError) as error:
        build_space(params, [])
    assert expected in str(error.value)


@pytest.mark.parametrize("value", [0.05, 1e-05, 3, True, None, "step", "it's a b", "a=b,c", "1abc"])
def test_drawn_values_read_back_through_hydras_parser(value):
    (line,) = trial_overrides({"key": value})
    (override,) = OverridesParser.create().parse_overrides([line])
    assert override.value() == value and line.startswith("key=")


def test_probes_are_both_ends_or_every_choice():
    assert probe_values(FloatDistribution(0.1, 0.5)) == [0.1, 0.5]
    assert probe_values(CategoricalDistribution(["a", "b", "c"])) == ["a", "b", "c"]
    assert hydra_value(0.1) == "0.1"
