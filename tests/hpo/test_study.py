"""The study in its storage: opening it, refusing what cannot work, and what counts towards n_trials."""

import sys

import optuna
import pytest
from optuna.trial import TrialState

from cifar_lightning.errors import ConfigError, SearchError
from cifar_lightning.hpo.study import (
    INTERRUPTED,
    OBJECTIVE,
    STATUS,
    STORAGE,
    build_pruner,
    build_sampler,
    counted,
    default_storage,
    load_study,
    open_storage,
    open_study,
    shown_url,
)

MEDIAN = {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 1}


def new_study(tmp_path, direction="minimize", objective="val_loss"):
    storage = open_storage(default_storage(tmp_path))
    sampler = build_sampler({"_target_": "optuna.samplers.RandomSampler"})
    return open_study(storage, "s", objective, direction, sampler, MEDIAN)


def test_a_study_records_its_objective_and_reopens_with_its_pruner(tmp_path):
    study = new_study(tmp_path)
    assert default_storage(tmp_path) == f"sqlite:///{tmp_path.resolve()}/optuna.db"
    assert study.user_attrs[OBJECTIVE] == "val_loss" and study.user_attrs[STORAGE].endswith("optuna.db")
    again = load_study(default_storage(tmp_path))  # the only study in the storage: found without its name
    assert again.study_name == "s" and isinstance(again.pruner, optuna.pruners.MedianPruner)


def test_a_study_with_another_direction_or_objective_is_refused(tmp_path):
    new_study(tmp_path)
    with pytest.raises(SearchError, match="minimizes val_loss, but the config asks to maximize val_acc"):
        new_study(tmp_path, "maximize", "val_acc")


def test_an_unreachable_storage_is_refused(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    for url in (f"sqlite:///{blocked}/sub/optuna.db", "nosuchdialect://host/db"):
        with pytest.raises(SearchError, match="cannot be opened"):
            open_storage(url)


@pytest.mark.parametrize(
    "url, module, package",
    [
        ("postgresql://optuna@127.0.0.1/optuna", "psycopg", 'pip install "psycopg[binary]" (pip install -e ".[hpo]"'),
        ("mysql://optuna@127.0.0.1/optuna", "MySQLdb", "pip install mysqlclient"),
        ("mysql+pymysql://optuna@127.0.0.1/optuna", "pymysql", "pip install pymysql"),
    ],
)
def test_a_missing_database_driver_is_named_with_its_pip_package(url, module, package, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # import fails, as where the package is not installed
    with pytest.raises(SearchError, match="driver .* which is not installed") as error:
        open_storage(url)
    assert package in str(error.value) and "no trial was run" in str(error.value)
    if module == "MySQLdb":
        assert "or pymysql with a mysql+pymysql:// URL" in str(error.value)


def test_a_password_inside_the_storage_url_is_refused_before_connecting(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # refused before the driver (and the server) is needed
    with pytest.raises(ConfigError, match=r"^hpo\.storage holds a password .*No trial was run\. Fix: .*PGPASSWORD"):
        load_study("postgresql://optuna:s3cret@127.0.0.1/optuna", "s")


def test_unknown_samplers_and_pruners_are_refused():
    with pytest.raises(SearchError, match="unknown or invalid sampler 'optuna.samplers.NoSuchSampler'"):
        build_sampler({"_target_": "optuna.samplers.NoSuchSampler"})
    with pytest.raises(SearchError, match="is not an Optuna pruner"):
        build_pruner({"_target_": "optuna.samplers.RandomSampler"})
    assert isinstance(build_pruner(None), optuna.pruners.NopPruner)


def test_each_worker_offsets_the_sampler_seed():
    random = {"_target_": "optuna.samplers.RandomSampler", "seed": 0}
    first, second = (build_sampler(random, offset) for offset in (0, 1))
    space = optuna.distributions.FloatDistribution(0, 1)
    draw = [s.sample_independent(None, None, "x", space) for s in (first, second)]
    assert draw[0] != draw[1]
    assert draw[0] == build_sampler(random).sample_independent(None, None, "x", space)  # a lone worker: the seed


def test_killed_and_interrupted_trials_do_not_count_their_retries_do(tmp_path):
    study = new_study(tmp_path)
    done = study.ask()
    done.set_user_attr(STATUS, "completed")
    study.tell(done, 1.0)
    study.ask()  # running
    killed = study.ask()
    study.tell(killed, state=TrialState.FAIL)  # no status: its worker died
    stopped = study.ask()
    stopped.set_user_attr(STATUS, INTERRUPTED)
    study.tell(stopped, state=TrialState.FAIL)
    assert counted(study.get_trials()) == 2


def test_passwords_never_show():
    assert shown_url("postgresql://user:secret@host/db") == "postgresql://user:***@host/db"
