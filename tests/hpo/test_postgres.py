"""Optuna on a real PostgreSQL server (scripts/local_postgres.sh up; .ci/run starts it), as a user runs a shared
study: two workers in separate processes, a worker SIGKILLed mid-trial, and no password in any artefact.

The server, role and database come from the same variables as the script's (CIFAR_PG_USER, CIFAR_PG_DB,
CIFAR_PG_PORT, PGPASSWORD, with its defaults). The password reaches the workers as libpq's PGPASSWORD, never
inside the URL. Each test runs its own study and deletes it afterwards. The workers train tiny trials (slow)."""

import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import yaml
from omegaconf import OmegaConf
from optuna.storages import RetryFailedTrialCallback
from optuna.trial import TrialState

from cifar_lightning.hpo.study import OVERRIDES, RUN_DIR, STATUS, counted
from tests.conftest import compose_train
from tests.helpers import ROOT, assert_refused
from tests.hpo.test_search_cli import assert_no_duplicates, search_command
from tests.services import require

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("postgresql"),  # under -n N: one study database, one worker
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
]

HOST = "127.0.0.1"
SCRIPT_PASSWORD = "cifar-local-test-pw"  # scripts/local_postgres.sh's default


@dataclass
class Server:
    """The test database: its URL (no password in it) and the password libpq reads from PGPASSWORD."""

    url: str
    password: str

    def env(self) -> dict[str, str]:
        """A worker's environment: this one's, plus the password where libpq looks for it."""
        return {**os.environ, "PGPASSWORD": self.password, "PYTHONPATH": str(ROOT)}


def server_problem(user: str, db: str, port: str, password: str) -> str | None:
    """Why the test database cannot be used, or None."""
    try:
        import psycopg
    except ImportError:
        return 'psycopg (the PostgreSQL driver) is not installed: pip install -e ".[hpo]"'
    try:
        psycopg.connect(host=HOST, port=port, user=user, dbname=db, password=password, connect_timeout=5).close()
    except psycopg.Error as exc:
        return f"no PostgreSQL database {db} for {user} at {HOST}:{port} ({' '.join(str(exc).split())})"
    return None


@pytest.fixture(scope="module")
def server() -> Server:
    user, db = os.environ.get("CIFAR_PG_USER", "cifar"), os.environ.get("CIFAR_PG_DB", "cifar_optuna")
    port, password = os.environ.get("CIFAR_PG_PORT", "5432"), os.environ.get("PGPASSWORD", SCRIPT_PASSWORD)
    require(server_problem(user, db, port, password), "start it: scripts/local_postgres.sh up (as root)")
    return Server(f"postgresql://{user}@{HOST}:{port}/{db}", password)


@pytest.fixture
def study_name(server, monkeypatch) -> Iterator[str]:
    """A new study's name; the study is deleted from the server afterwards, also when the test fails."""
    monkeypatch.setenv("PGPASSWORD", server.password)  # this process's own connections
    name = f"pytest_{uuid.uuid4().hex[:8]}"
    yield name
    if name in optuna.get_all_study_names(server.url):
        optuna.delete_study(study_name=name, storage=server.url)


def worker(server: Server, log_dir: Path, data_dir: Path, study: str, output: Path, *overrides: str):
    """A search worker in its own process group (so a SIGKILL takes its trial with it), output to `output`."""
    command = search_command(
        log_dir, data_dir, f"hydra.sweeper.storage={server.url}", f"hydra.sweeper.study_name={study}", *overrides
    )
    with output.open("w") as out:
        return subprocess.Popen(
            command, cwd=ROOT, env=server.env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def finish(process: subprocess.Popen, output: Path) -> None:
    process.wait(timeout=900)
    assert process.returncode == 0, output.read_text()[-3000:]


def trials_of(server: Server, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=server.url).get_trials()


def trial_table(trials: list[optuna.trial.FrozenTrial]) -> str:
    """The study's trial table as the test saw it (printed: pytest -s shows it)."""
    rows = [f"{'trial':>5} {'state':8} {'status':9} {'value':>8} {'retry of':>8}  run_dir"]
    for t in trials:
        value = f"{t.value:.4f}" if t.value is not None else "-"
        retried = RetryFailedTrialCallback.retried_trial_number(t)
        retried = "-" if retried is None else retried
        run_dir = Path(t.user_attrs.get(RUN_DIR) or "-").name
        status = t.user_attrs.get(STATUS, "-")
        rows.append(f"{t.number:>5} {t.state.name:8} {status:9} {value:>8} {retried:>8}  {run_dir}")
    return "\n".join(rows)


def test_two_workers_share_one_postgresql_study_without_duplicates(server, study_name, tmp_path, data_dir):
    log_dir, sweep_dir = tmp_path / "logs", tmp_path / "logs" / "train" / "hpo" / study_name
    outputs = [tmp_path / f"worker{i}.log" for i in range(2)]
    workers = [worker(server, log_dir, data_dir, study_name, out, "hydra.sweeper.n_trials=6") for out in outputs]
    for process, out in zip(workers, outputs):
        finish(process, out)
    trials = trials_of(server, study_name)
    print(f"\n{study_name} on {server.url}:\n{trial_table(trials)}")
    assert len(trials) in (6, 7)  # both may ask the last trial at the same moment: at most one extra
    assert counted(trials) == len(trials) and [t.number for t in trials] == list(range(len(trials)))
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) for t in trials)
    run_dirs = [t.user_attrs[RUN_DIR] for t in trials]
    assert sorted(run_dirs) == sorted({str(sweep_dir / f"trial_{t.number}") for t in trials})  # each used once
    assert sorted(p.name for p in sweep_dir.glob("trial_*")) == sorted(Path(d).name for d in run_dirs)
    assert all(re.search(r"\] trial \d+: optim\.lr=", out.read_text()) for out in outputs)  # both ran trials
    assert_no_duplicates(trials, sweep_dir)

    # hpo.md's command trains the best trial's configuration alone: the same config, less the search's keys.
    report = (sweep_dir / "hpo.md").read_text()
    assert f"- storage: `{server.url}`" in report
    best = optuna.load_study(study_name=study_name, storage=server.url).best_trial
    command_line = re.search(r"Retrain it alone, exactly as the trial ran:\n\n    (.+)\n", report).group(1)
    overrides = command_line.split()[2:]
    assert not any(o.startswith(("hpo.", "hparams_search", "-m", "hydra.")) for o in overrides)
    trial_dir = sweep_dir / f"trial_{best.number}"
    retrained = OmegaConf.to_container(compose_train(overrides, trial_dir), resolve=True)
    trial_config = yaml.safe_load((trial_dir / "config.yaml").read_text())
    assert trial_config.pop("hpo")["trial"] == best.number and retrained.pop("hpo")["trial"] is None
    assert retrained == trial_config


def training_trial(output: Path, sweep_dir: Path) -> int | None:
    """The trial a worker has started training (its log names it and its run directory has Hydra's files)."""
    started = re.findall(r"\] trial (\d+): optim\.lr=", output.read_text())
    if started and (sweep_dir / f"trial_{started[-1]}" / ".hydra" / "config.yaml").is_file():
        return int(started[-1])
    return None


def test_a_sigkilled_workers_trial_is_retried_with_its_parameters_by_another_worker(
    server, study_name, tmp_path, data_dir
):
    log_dir, sweep_dir = tmp_path / "logs", tmp_path / "logs" / "train" / "hpo" / study_name
    settings = ["hydra.sweeper.n_trials=3", "trainer.max_epochs=3"]  # 3 epochs: time to kill it mid-trial
    outputs = [tmp_path / "killed.log", tmp_path / "survivor.log"]
    doomed = worker(server, log_dir, data_dir, study_name, outputs[0], *settings)
    survivor = worker(server, log_dir, data_dir, study_name, outputs[1], *settings)
    try:
        deadline, killed = time.monotonic() + 300, None
        while killed is None and time.monotonic() < deadline and doomed.poll() is None:
            time.sleep(0.2)
            killed = training_trial(outputs[0], sweep_dir)
        assert killed is not None, outputs[0].read_text()[-3000:]
        os.killpg(doomed.pid, signal.SIGKILL)  # the worker and its trial, mid-training, without a word
        doomed.wait()
        assert trials_of(server, study_name)[killed].state == TrialState.RUNNING  # never told
        finish(survivor, outputs[1])
    finally:
        for process in (doomed, survivor):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    trials = trials_of(server, study_name)
    print(f"\n{study_name} on {server.url} (worker killed in trial {killed}):\n{trial_table(trials)}")
    dead = trials[killed]
    assert dead.state == TrialState.FAIL and STATUS not in dead.user_attrs and RUN_DIR not in dead.user_attrs
    assert not (sweep_dir / f"trial_{killed}" / "metrics.json").exists()  # it never finished
    retries = [t for t in trials if RetryFailedTrialCallback.retried_trial_number(t) == killed]
    assert len(retries) == 1  # run again once, with the same parameters, by the worker that survived
    retry = retries[0]
    assert retry.params == dead.params and retry.user_attrs[OVERRIDES] == dead.user_attrs[OVERRIDES]
    assert retry.state in (TrialState.COMPLETE, TrialState.PRUNED) and retry.user_attrs[STATUS] in (
        "completed",
        "pruned",
    )
    assert re.search(rf"\] trial {retry.number}: optim\.lr=", outputs[1].read_text())  # the survivor ran it
    assert counted(trials) == 3 and all(t.state != TrialState.RUNNING for t in trials)
    assert_no_duplicates(trials, sweep_dir)


def files_holding(secret: bytes, *roots: Path) -> list[str]:
    """Every file under `roots` (text or binary: checkpoints, event files, databases) whose bytes hold `secret`."""
    files = [p for root in roots for p in ([root] if root.is_file() else root.rglob("*")) if p.is_file()]
    assert files, roots
    return [str(p) for p in files if secret in p.read_bytes()]


def test_no_password_in_any_artefact_of_a_study_with_mlflow(server, study_name, tmp_path, data_dir):
    log_dir = tmp_path / "logs"
    sweep_dir = log_dir / "train" / "hpo" / study_name
    secret = server.password.encode()
    tracking = ["logger=[tensorboard,mlflow]", "hydra.sweeper.n_trials=2", "trainer.max_epochs=1"]

    # The password inside the URL: refused before anything is written, the study never created.
    user_part = server.url.removeprefix("postgresql://").split("@")[0]
    with_password = server.url.replace(f"{user_part}@", f"{user_part}:{server.password}@")
    command = search_command(log_dir, data_dir, f"hydra.sweeper.storage={with_password}", *tracking)
    command += [f"hydra.sweeper.study_name={study_name}"]
    env = {k: v for k, v in server.env().items() if k != "PGPASSWORD"}
    refused = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    error = assert_refused(refused, "hydra.sweeper.storage holds a password inside its URL", "PGPASSWORD", "~/.pgpass")
    assert server.password not in refused.stdout + refused.stderr and ":***@" in error
    assert not log_dir.exists() and study_name not in optuna.get_all_study_names(server.url)

    # The documented way: the URL without it, the password in PGPASSWORD. Logged to TensorBoard and MLflow.
    output = tmp_path / "worker.log"
    finish(worker(server, log_dir, data_dir, study_name, output, *tracking), output)
    trials = trials_of(server, study_name)
    assert [t.state for t in trials if t.state == TrialState.COMPLETE] and len(trials) == 2
    for kind in (
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "metrics.json",
        "config.yaml",
        ".hydra/overrides.yaml",
    ):
        assert (sweep_dir / "trial_0" / kind).is_file(), kind  # the files the password once went into
    assert list(sweep_dir.glob("trial_0/**/events.out.tfevents.*")) and (log_dir / "mlflow.db").is_file()
    assert list((log_dir / "mlruns").rglob("metrics.json"))  # MLflow's artifacts
    assert files_holding(secret, log_dir, output) == []  # sweep dir, MLflow store (db, artifacts), logs
