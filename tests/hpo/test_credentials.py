"""No password inside a storage or tracking URL (cifar_lightning.credentials): found wherever the config holds
one, refused with the client's own way to give it, quoted masked."""

import pytest

from cifar_lightning.credentials import config_urls, refuse_password, refuse_passwords_in, url_password
from cifar_lightning.errors import ConfigError
from tests.conftest import compose_train
from tests.helpers import assert_refused, run_entry_point

WHY = "written into every trial's config and Hydra overrides, its checkpoints, TensorBoard and MLflow"


@pytest.mark.parametrize(
    "url, password",
    [
        ("postgresql://optuna:s3cret@127.0.0.1:5432/optuna", "s3cret"),
        ("postgresql+psycopg://optuna:p%40ss@db/optuna", "p%40ss"),
        ("http://me:pw@mlflow.example:5000", "pw"),
        ("postgresql://optuna@127.0.0.1/optuna", None),
        ("sqlite:////tmp/optuna.db", None),
        ("./logs", None),
        (None, None),
        ("http://[broken", None),
    ],
)
def test_a_password_is_found_only_inside_a_urls_login(url, password):
    assert url_password(url) == password


@pytest.mark.parametrize(
    "url, fix",
    [
        (
            "postgresql://optuna:s3cret@127.0.0.1:5432/optuna",
            [
                "drop it from the URL (postgresql://optuna@127.0.0.1:5432/optuna)",
                "export PGPASSWORD=<password>",
                "host:port:database:user:password in ~/.pgpass (chmod 600)",
            ],
        ),
        (
            "mysql+pymysql://optuna:s3cret@db/optuna?charset=utf8mb4",
            ["(mysql+pymysql://optuna@db/optuna?charset=utf8mb4&read_default_file=~/.my.cnf)", "(chmod 600)"],
        ),
        (
            "https://me:s3cret@mlflow.example:5000/",
            [
                "(https://mlflow.example:5000/)",
                "MLFLOW_TRACKING_USERNAME=<user>",
                "MLFLOW_TRACKING_PASSWORD=<password>",
            ],
        ),
    ],
)
def test_a_password_in_a_url_is_refused_with_its_clients_own_way(url, fix):
    with pytest.raises(ConfigError) as error:
        refuse_password(url, "hydra.sweeper.storage")
    message = str(error.value)
    assert message.startswith("hydra.sweeper.storage holds a password inside its URL (")
    assert ":***@" in message and "s3cret" not in message
    assert WHY in message and "visible to every user of this machine in `ps`" in message
    assert "Nothing was run or written. Fix: " in message
    for text in fix:
        assert text in message


def test_a_url_without_password_passes():
    refuse_password("postgresql://optuna@127.0.0.1/optuna", "hydra.sweeper.storage")
    refuse_password(None, "hydra.sweeper.storage")


def test_every_url_in_a_jobs_config_is_checked_resolved(monkeypatch):
    cfg = compose_train(["logger=mlflow"])
    assert ("logger.mlflow.tracking_uri", "sqlite:///./logs/mlflow.db") in list(config_urls(cfg))
    refuse_passwords_in(cfg)  # the defaults hold none
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://me:s3cret@mlflow.example:5000")  # read by the config
    with pytest.raises(ConfigError, match=r"logger\.mlflow\.tracking_uri holds a password .*\(http://me:\*\*\*@"):
        refuse_passwords_in(compose_train(["logger=mlflow"]))
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(ConfigError, match=r"^hpo\.storage holds a password"):
        refuse_passwords_in(compose_train(["hpo.storage=postgresql://u:s3cret@h/d"]))


@pytest.mark.parametrize("sweep", [[], ["-m", "seed=0,1"]], ids=["run", "sweep"])
def test_a_run_or_sweep_with_a_password_in_its_tracking_uri_writes_nothing(sweep, tmp_path):
    # Hydra's callback refuses it before Hydra writes .hydra/ or multirun.yaml (they would hold the password).
    uri = "logger.mlflow.tracking_uri=http://me:sekrit-tracking@127.0.0.1:1"
    result = run_entry_point("train.py", *sweep, "logger=mlflow", uri, f"paths.log_dir={tmp_path / 'logs'}")
    error = assert_refused(result, "logger.mlflow.tracking_uri holds a password", "MLFLOW_TRACKING_PASSWORD")
    assert "sekrit-tracking" not in result.stdout + result.stderr + error
    assert not (tmp_path / "logs").exists()
