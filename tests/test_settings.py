"""The settings mechanism (cifar_lightning/config/): one declaration gives the default Hydra composes, the
check and its message, and the reference."""

import re

import pytest
from omegaconf import OmegaConf
from pydantic import Field

from cifar_lightning.config import Settings, check, must_be, preset
from cifar_lightning.config.__main__ import reference
from cifar_lightning.config.schema import LOCATIONS
from cifar_lightning.errors import ConfigError


@preset("example", "demo_schema")
class DemoSettings(Settings):
    target = "tests.test_settings.Demo"
    rate: float = Field(0.1, ge=0, lt=1, description="a rate")
    scale: float = Field(1.0, gt=0, description="a scale")
    count: int = Field(3, ge=1, description="a count")
    mode: str | None = Field(None, description="a name or null")
    flag: bool = Field(False, description="a switch")


@pytest.mark.parametrize(
    "name, phrase",
    [("rate", "in [0, 1)"), ("scale", "a positive number"), ("count", "an integer >= 1"), ("flag", "true or false")],
)
def test_the_allowed_values_are_said_from_the_declaration(name, phrase):
    assert must_be(DemoSettings, name) == phrase


@pytest.mark.parametrize(
    "value, expected",
    [
        ({"rate": 1.0}, "demo.rate must be in [0, 1), got 1.0 (a rate)"),
        ({"count": True}, "demo.count must be an integer >= 1, got True"),
        ({"flag": "ture"}, "demo.flag must be true or false, got 'ture'"),
        ({"rates": 0.2}, "demo has no setting `rates` (its settings: rate, scale, count, mode, flag)"),
    ],
)
def test_a_bad_value_is_refused_with_its_key_the_allowed_values_and_a_fix(value, expected):
    cfg = OmegaConf.create({"demo": {"_target_": DemoSettings.target, **value}})
    with pytest.raises(ConfigError) as error:
        check(cfg, "train", "nothing was trained")
    message = str(error.value)
    assert expected in message and "\n" not in message
    assert re.search(r"Fix the value on the command line \(python train\.py demo\.\w+=<value>\)", message)
    assert message.endswith("; nothing was trained.")


def test_good_values_and_interpolations_pass():
    cfg = OmegaConf.create({"x": 0.5, "demo": {"_target_": DemoSettings.target, "rate": "${x}", "mode": None}})
    check(cfg, "train", "nothing was trained")


def test_the_reference_lists_every_setting_of_every_schema():
    """Every schema of a conf/ group or entry point, under its preset's name, every field a row; this file's demo
    schema (group `example`, no folder in conf/) is no setting of the project and stays out."""
    text = reference()
    for schema, where in LOCATIONS.items():
        if schema is DemoSettings:
            assert "example.rate" not in text and "demo_schema" not in text
            continue
        name = where.rsplit("/", 1)[-1].removesuffix("_schema")
        assert f"Keys of `{name}`" in text or f"### `{name}.py`" in text, where
        for field in schema.model_fields:
            assert re.search(rf"\| `([\w.]+\.)?{field}(\.[\w.]+)?` \|", text), (where, field)
