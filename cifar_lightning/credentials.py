"""No password inside a URL: a study's storage (hydra.sweeper.storage, hpo.storage) or MLflow's tracking URI with
`user:password@` is refused before anything is written. A value on Hydra's command line is copied into every
trial's overrides, config files, checkpoints (their hyper-parameters), TensorBoard and MLflow records and recorded
command, and a command line is visible to every user of the machine in `ps`. Each database client takes the
password from its own place instead (libpq's PGPASSWORD or ~/.pgpass, MySQL's option file, MLflow's variables).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig

from cifar_lightning.errors import ConfigError

WHY = (
    "a password on the command line or in a config is written into every trial's config and Hydra overrides, its "
    "checkpoints, TensorBoard and MLflow records and its recorded command, and is visible to every user of this "
    "machine in `ps`"
)


def url_password(url: object) -> str | None:
    """The password inside `url` (scheme://user:password@host/...), or None (no URL, or no password in it)."""
    if not isinstance(url, str) or "://" not in url:
        return None
    try:
        return urlsplit(url.strip()).password or None
    except ValueError:  # not a URL urllib can split: the library that opens it reports what is wrong
        return None


def with_netloc(url: str, password: str | None = "***", user: bool = True) -> str:
    """`url` with its password replaced (None: dropped), and its user name dropped unless `user`."""
    parts = urlsplit(url.strip())
    host = parts.netloc.rpartition("@")[2]
    login = (parts.username or "") if user else ""
    login += f":{password}" if password is not None and login else ""
    return urlunsplit(parts._replace(netloc=f"{login}@{host}" if login else host))


def password_fix(url: str) -> str:
    """Where the client behind `url` reads a password from, instead of the URL."""
    scheme = urlsplit(url.strip()).scheme.split("+")[0].lower()
    bare = with_netloc(url, password=None)
    if scheme in ("postgresql", "postgres"):
        return (
            f"drop it from the URL ({bare}) and give it to libpq, which every PostgreSQL driver uses: export "
            f"PGPASSWORD=<password> in the shell that starts the command, or a line "
            f"host:port:database:user:password in ~/.pgpass (chmod 600)"
        )
    if scheme in ("mysql", "mariadb"):
        return (
            f"drop it from the URL and name a MySQL option file instead ({bare}{'&' if '?' in bare else '?'}"
            f"read_default_file=~/.my.cnf), one "
            f"that holds [client] user=<user> password=<password> (chmod 600)"
        )
    if scheme in ("http", "https"):
        return (
            f"drop the user and password from the URL ({with_netloc(url, None, user=False)}) and export "
            f"MLFLOW_TRACKING_USERNAME=<user> and MLFLOW_TRACKING_PASSWORD=<password> (MLflow's client sends them)"
        )
    return f"drop it from the URL ({bare}) and give it the way this database's client reads it (its variable or file)"


def refuse_password(url: object, setting: str, stopped: str = "Nothing was run or written") -> None:
    """Raise ConfigError when `url` (the value of `setting`) holds a password (see the module docstring); the
    message says what was `stopped`."""
    if url_password(url) is None:
        return
    assert isinstance(url, str)
    raise ConfigError(
        f"{setting} holds a password inside its URL ({with_netloc(url)}), which is refused: {WHY}. {stopped}. "
        f"Fix: {password_fix(url)}."
    )


def config_urls(cfg: DictConfig | ListConfig, prefix: str = "", skip: str = "hydra") -> Iterator[tuple[str, object]]:
    """Every string value of `cfg` that could be a URL, by its dotted key, resolved where it resolves (an
    interpolation such as ${oc.env:MLFLOW_TRACKING_URI} is what the run would use); the `skip` node left out."""
    keys = cfg.keys() if isinstance(cfg, DictConfig) else range(len(cfg))
    for key in keys:
        name = f"{prefix}{key}" if isinstance(cfg, DictConfig) else f"{prefix.rstrip('.')}[{key}]"
        if name == skip:
            continue
        node = cfg._get_node(key)
        if isinstance(node, (DictConfig, ListConfig)):
            if not node._is_missing() and not node._is_none() and not node._is_interpolation():
                yield from config_urls(node, f"{name}.")
            continue
        raw = node._value()
        if not isinstance(raw, str) or ("://" not in raw and "${" not in raw):
            continue
        try:
            yield name, cfg[key]
        except Exception:  # an interpolation only its job can resolve (${hydra:...}): it holds no typed password
            continue


def refuse_passwords_in(cfg: DictConfig, stopped: str = "Nothing was run or written") -> None:
    """Refuse any URL with a password among the values of a job's config (Hydra's own node left out)."""
    for name, value in config_urls(cfg):
        refuse_password(value, name, stopped)


class RefusePasswords(Callback):
    """Hydra callback (conf/hydra/default.yaml): the check runs before Hydra writes a run's or a sweep's files
    (.hydra/config.yaml, overrides.yaml, multirun.yaml), which would otherwise hold the password."""

    def on_run_start(self, config: DictConfig, **kwargs: object) -> None:
        self.check(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: object) -> None:
        self.check(config)
        refuse_or_exit(lambda: refuse_password(config.hydra.sweeper.get("storage"), "hydra.sweeper.storage"))

    def check(self, config: DictConfig) -> None:
        refuse_or_exit(lambda: refuse_passwords_in(config))


def refuse_or_exit(check) -> None:  # noqa: ANN001 - a check that may raise ConfigError
    """Run `check`; on ConfigError print its `error:` paragraph and exit with its status (2), as entry points do."""
    try:
        check()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
