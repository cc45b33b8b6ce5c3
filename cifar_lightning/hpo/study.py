"""An Optuna study in its RDB storage, which all workers and trials share: its user attributes say what it
optimizes and how it prunes, so a trial's own process (a launcher's, a Slurm job) needs nothing else."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.utils import instantiate
from optuna.storages import RDBStorage, RetryFailedTrialCallback
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url

from cifar_lightning.credentials import refuse_password
from cifar_lightning.errors import SearchError, one_line

STORAGE_FILE = "optuna.db"
#: The pip package of each SQLAlchemy driver a storage URL may need (postgresql:// is psycopg 3's in SQLAlchemy 2).
DRIVER_PACKAGES = {
    "psycopg": '"psycopg[binary]" (pip install -e ".[hpo]" includes it)',
    "psycopg2": "psycopg2-binary (or postgresql:// for psycopg 3, which the hpo extra installs)",
    "mysqldb": "mysqlclient (it builds against the MySQL client library: apt-get install libmysqlclient-dev), "
    "or pymysql with a mysql+pymysql:// URL",
    "pymysql": "pymysql",
    "mysqlconnector": "mysql-connector-python",
    "mariadbconnector": "mariadb",
    "pg8000": "pg8000",
}

# Study user attributes (set by the sweeper).
OBJECTIVE, PRUNER, STORAGE = "objective", "pruner", "storage"
TASK_OVERRIDES = "task_overrides"
# Trial user attributes: how the trial's run ended, where it ran, and its `key=value` overrides.
STATUS, RUN_DIR, OVERRIDES = "status", "run_dir", "overrides"
# Outcomes beside metrics.json's statuses: no metrics.json at all, or the worker was stopped mid-trial.
FAILED, INTERRUPTED = "failed", "interrupted"


def default_storage(sweep_dir: str | Path) -> str:
    """SQLite in the sweep directory: re-running the same command reopens the same study."""
    return f"sqlite:///{Path(sweep_dir).expanduser().resolve() / STORAGE_FILE}"


def shown_url(url: str) -> str:
    """The storage URL with any password hidden, for logs, metrics.json and hpo.md."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: open_storage reports it
        return url


def check_driver(url: str) -> None:
    """Raise SearchError naming the pip package when the database driver `url` needs is not installed."""
    try:
        dialect = make_url(url).get_dialect()
    except Exception:  # not a URL, or no such database: RDBStorage reports it
        return
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        package = DRIVER_PACKAGES.get(dialect.driver, f"the package of Python's {dialect.driver} module")
        raise SearchError(
            f"the study storage {shown_url(url)} needs the {dialect.name} driver {dialect.driver}, which is not "
            f"installed ({one_line(exc, 200)}). Fix: pip install {package}; no trial was run."
        ) from exc


def open_storage(
    url: str, heartbeat_interval: int | None = None, max_retry: int = 1, setting: str = "hydra.sweeper.storage"
) -> RDBStorage:
    """The RDB storage at `url` (the value of `setting`), never with a password inside it (cifar_lightning.credentials);
    with a heartbeat, a killed worker's trial fails and is retried max_retry times."""
    refuse_password(url, setting, stopped="No trial was run")
    check_driver(url)
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None  # wait out writers
    beats = heartbeat_interval is not None
    try:
        if url.startswith("sqlite:///"):  # SQLite creates the file, not its folder
            Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
        return RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat_interval,
            grace_period=2 * heartbeat_interval if beats else None,
            heartbeat_stale_trial_callback=RetryFailedTrialCallback(max_retry=max_retry) if beats else None,
        )
    except Exception as exc:  # SQLAlchemy reports bad URLs, missing drivers and refused connections many ways
        reason = one_line(exc, 300)
        raise SearchError(
            f"the study storage {shown_url(url)} cannot be opened ({type(exc).__name__}: {reason}). Fix "
            f"{setting}: a reachable RDB URL such as sqlite:///logs/hpo.db or "
            f"postgresql://user@host/db (its password in PGPASSWORD or ~/.pgpass), or null for SQLite in the sweep "
            f"directory."
        ) from exc


def build_pruner(config: Mapping[str, Any] | None) -> optuna.pruners.BasePruner:
    """The pruner of a `_target_` config (null: never prune)."""
    if config is None:
        return optuna.pruners.NopPruner()
    return _instantiated(config, "pruner", optuna.pruners.BasePruner, "optuna.pruners.MedianPruner")


def build_sampler(config: Mapping[str, Any] | None, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler of a `_target_` config; a seed is offset (see sweeper.py: workers must not draw alike)."""
    config = dict(config or {"_target_": "optuna.samplers.TPESampler"})
    if config.get("seed") is not None:
        config["seed"] = int(config["seed"]) + seed_offset
    return _instantiated(config, "sampler", optuna.samplers.BaseSampler, "optuna.samplers.TPESampler")


def _instantiated(config: Mapping[str, Any], kind: str, base: type, example: str) -> Any:
    try:
        built = instantiate(dict(config))
        if not isinstance(built, base):
            raise TypeError(f"{config.get('_target_')} is not an Optuna {kind}")
    except Exception as exc:
        reason = one_line(exc.__cause__ or exc, 300)
        raise SearchError(
            f"unknown or invalid {kind} {config.get('_target_')!r} ({reason}). Fix hydra.sweeper.{kind}: a "
            f"_target_ naming an Optuna {kind} class, e.g. {example}, with its arguments; no trial was run."
        ) from exc
    return built


def open_study(
    storage: RDBStorage,
    name: str,
    objective: str,
    direction: str,
    sampler: optuna.samplers.BaseSampler,
    pruner_config: Mapping[str, Any] | None,
) -> optuna.Study:
    """Create the study, or load it to continue; an existing study must optimize the same thing the same way."""
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction=direction,
        sampler=sampler,
        pruner=build_pruner(pruner_config),
        load_if_exists=True,
    )
    saved_objective = study.user_attrs.get(OBJECTIVE)
    if study.direction != StudyDirection[direction.upper()] or saved_objective not in (None, objective):
        raise SearchError(
            f"study {name!r} in {shown_url(storage.url)} {study.direction.name.lower()}s "
            f"{saved_objective or 'its objective'}, but the config asks to {direction} {objective}. Fix: use "
            f"the study's own objective and direction, or start a new study (hydra.sweeper.study_name=<new name>)."
        )
    study.set_user_attr(OBJECTIVE, objective)
    study.set_user_attr(STORAGE, shown_url(storage.url))
    study.set_user_attr(PRUNER, dict(pruner_config) if pruner_config is not None else None)
    return study


def load_study(storage_url: str, name: str | None = None, setting: str = "hpo.storage") -> optuna.Study:
    """An existing study, with the pruner it was created with (a trial's process prunes as its sweeper asked)."""
    storage = open_storage(storage_url, setting=setting)
    names = optuna.get_all_study_names(storage)
    if name is None and len(names) == 1:
        name = names[0]
    if name not in names:
        raise SearchError(
            f"{shown_url(storage_url)} holds no study {name!r} (it holds: {', '.join(names) or 'none'}). Fix: pass "
            f"the study's name (--study <name>), or the storage or sweep directory the study ran in."
        )
    study = optuna.load_study(study_name=name, storage=storage)
    study.pruner = build_pruner(study.user_attrs.get(PRUNER))
    return study


def trial_id(study: optuna.Study, number: int) -> int:
    """The storage's id of trial `number` of the study (Optuna's Trial objects are built from ids)."""
    storage = study._storage
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), number)


def counted(trials: Sequence[FrozenTrial]) -> int:
    """Trials that count towards n_trials: ran to an outcome or running (a died or interrupted one's retry counts)."""
    ran = (None, INTERRUPTED)
    return sum(1 for t in trials if t.state == TrialState.RUNNING or t.user_attrs.get(STATUS) not in ran)
