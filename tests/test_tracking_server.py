"""logger=mlflow against a real MLflow tracking server: `mlflow server` on 127.0.0.1 (runs in a SQLite file,
artifacts served by the server itself), a tiny `python train.py logger=mlflow` run pointed at it with
logger.mlflow.artifact_location=null (the server chooses: its mlflow-artifacts:/ proxy, so the client uploads
over HTTP), then everything read back through the server's REST API alone, as any other client would:
params, per-epoch metric history, tags, and the metrics.json artifact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import pytest
import yaml

from tests.conftest import QUIET
from tests.helpers import only_run_dir, run_entry_point
from tests.services import require
from tests.serving_fixtures import free_port
from tests.test_tracking import TWO_EPOCHS  # two epochs of two batches: each per-epoch metric gets two points

# A server start and a train.py run: about 25 s here; runs with -m slow.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("mlflow_server"),
]  # under -n N: one server and its run, in one worker

STARTUP_TIMEOUT = 180  # seconds: the server imports MLflow and starts uvicorn on a busy 2-core machine
PER_EPOCH = ("train_loss", "train_acc", "val_loss", "val_acc")  # logged each epoch, kept in metrics.json's history


@dataclass
class TrackingServer:
    url: str
    process: subprocess.Popen
    log: Path
    artifacts: Path  # --artifacts-destination: where the server (not the client) writes uploaded artifacts


def server_command(port: int, store: Path, artifacts: Path) -> list[str]:
    """`mlflow server` as a team would start one, here on loopback: runs in SQLite, artifacts proxied by the server."""
    return [
        *(sys.executable, "-m", "mlflow", "server"),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
        *("--backend-store-uri", f"sqlite:///{store}", "--artifacts-destination", str(artifacts)),
    ]


def wait_until_healthy(server: TrackingServer, timeout: float) -> str:
    """Poll /health until the server answers 200: '' then, or why it never did (it exited, or timed out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return f"mlflow server exited with status {server.process.returncode}"
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=5) as answer:
                if answer.status == 200:
                    return ""
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    return f"mlflow server did not answer {server.url}/health within {timeout} s"


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group (mlflow starts uvicorn as a child), SIGKILL what outlives 20 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=20)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory) -> Iterator[TrackingServer]:
    """A real `mlflow server` on a free loopback port, stopped (with every process it started) at teardown."""
    require(None if find_spec("mlflow") else "the mlflow package is not installed", 'pip install -e ".[tracking]"')
    home = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    log = home / "server.log"
    # No job-execution workers (MLflow 3's GenAI jobs, a handful of huey processes): nothing here uses them.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log, "w") as out:  # a file, not a pipe: a full pipe would block the server
        process = subprocess.Popen(
            server_command(port, home / "mlflow.db", home / "artifacts"),
            cwd=home,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: stop() reaches uvicorn too
        )
    server = TrackingServer(f"http://127.0.0.1:{port}", process, log, home / "artifacts")
    try:
        problem = wait_until_healthy(server, STARTUP_TIMEOUT)
        assert not problem, f"{problem}:\n{log.read_text()[-3000:]}"
        yield server
    finally:
        stop(process)


def api(server: TrackingServer, endpoint: str, body: dict | None = None, **query: str) -> dict:
    """One call of the server's REST API (/api/2.0/mlflow/<endpoint>): POST `body` as JSON, else GET `query`."""
    url = f"{server.url}/api/2.0/mlflow/{endpoint}"
    if body is None:
        request = urllib.request.Request(f"{url}?{urllib.parse.urlencode(query)}")
    else:
        data = json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def download_artifact(server: TrackingServer, artifact_uri: str, path: str) -> bytes:
    """An artifact's bytes through the server's artifact proxy (/api/2.0/mlflow-artifacts/artifacts/...)."""
    assert artifact_uri.startswith("mlflow-artifacts:/"), artifact_uri  # stored by the server, not by the client
    where = artifact_uri.removeprefix("mlflow-artifacts:").strip("/")
    with urllib.request.urlopen(f"{server.url}/api/2.0/mlflow-artifacts/artifacts/{where}/{path}", timeout=30) as a:
        return a.read()


@pytest.fixture(scope="module")
def served_run(tracking_server, tmp_path_factory, data_dir) -> dict:
    """A tiny `python train.py logger=mlflow` run logged to the server; its run directory and its REST record."""
    log_dir = tmp_path_factory.mktemp("served") / "logs"
    mlflow = [
        "logger=mlflow",
        f"logger.mlflow.tracking_uri={tracking_server.url}",
        "logger.mlflow.artifact_location=null",
    ]
    result = run_entry_point(
        "train.py", *mlflow, *TWO_EPOCHS, f"data.data_dir={data_dir}", f"paths.log_dir={log_dir}", *QUIET, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = only_run_dir(log_dir)
    experiment = api(tracking_server, "experiments/get-by-name", experiment_name="train/runs")["experiment"]
    found = api(tracking_server, "runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    assert len(found) == 1, found
    run = api(tracking_server, "runs/get", run_id=found[0]["info"]["run_id"])["run"]
    return {"run_dir": run_dir, "metrics": json.loads((run_dir / "metrics.json").read_text()), "run": run}


def test_the_server_records_the_run_config_as_params(served_run):
    run, run_dir = served_run["run"], served_run["run_dir"]
    assert run["info"]["status"] == "FINISHED" and run["info"]["run_name"] == run_dir.name
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert float(params["optim.lr"]) == config["optim"]["lr"]
    assert params["trainer.max_epochs"] == "2" and params["model._target_"] == config["model"]["_target_"]
    assert params["logger.mlflow.tracking_uri"] == config["logger"]["mlflow"]["tracking_uri"]


@pytest.mark.parametrize("key", PER_EPOCH)
def test_the_server_holds_each_epochs_metric_as_metrics_json_history(served_run, tracking_server, key):
    run_id = served_run["run"]["info"]["run_id"]
    points = api(tracking_server, "metrics/get-history", run_id=run_id, metric_key=key)["metrics"]
    points.sort(key=lambda point: point["step"])
    history = served_run["metrics"]["history"]
    assert len(history) == 2 and len({point["step"] for point in points}) == len(points)
    assert [point["value"] for point in points] == pytest.approx([row[key] for row in history], rel=1e-6)


def test_the_server_holds_the_final_figures_and_tags(served_run):
    run, metrics, run_dir = served_run["run"], served_run["metrics"], served_run["run_dir"]
    final = {m["key"]: m["value"] for m in run["data"]["metrics"]}  # each metric's latest value
    for key in ("test_acc", "test_loss", "best_val_loss", "best_epoch", "epochs_run"):
        assert final[key] == pytest.approx(metrics[key], rel=1e-6), key
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["status"] == metrics["status"] == "completed" and tags["recipe"] == "report_base"
    assert tags["run_dir"] == str(run_dir.resolve())
    assert tags["best_checkpoint"] == metrics["best_checkpoint"] and Path(tags["best_checkpoint"]).is_file()
    assert tags["last_checkpoint"] == metrics["last_checkpoint"]


def test_the_metrics_json_artifact_was_uploaded_to_the_server(served_run, tracking_server):
    run = served_run["run"]
    listed = api(tracking_server, "artifacts/list", run_id=run["info"]["run_id"])
    assert [f["path"] for f in listed["files"]] == ["metrics.json"]
    saved = (served_run["run_dir"] / "metrics.json").read_bytes()
    assert download_artifact(tracking_server, run["info"]["artifact_uri"], "metrics.json") == saved
    # Written by the server under its --artifacts-destination: the client had no path to write to, only HTTP.
    (stored,) = tracking_server.artifacts.rglob("metrics.json")
    assert stored.read_bytes() == saved
