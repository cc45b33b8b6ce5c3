"""Two nodes: docs/scale.md's multi-node command, two `torchrun --nnodes=2` agents meeting at a c10d rendezvous,
here both on this machine (127.0.0.1) as two machines would run them. They train one run in one shared run
directory: one metrics.json with world_size 2 whose test figures equal a one-process evaluate.py of its
checkpoint.

With the c10d rendezvous the agents' ranks are assigned by the rendezvous itself (sorted by host, then agent
process id), not by `--node-rank`, which torchrun ignores for any backend but `static` (it warns when it is not
0). So every node runs the very same command, and any node may become rank 0, the one that writes the files."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import QUIET
from tests.helpers import ROOT
from tests.serving_fixtures import free_port
from tests.test_ddp import SYNC_RUN, assert_matches_evaluation

TIMEOUT = 400  # seconds for both agents: two torch imports, a rendezvous, 10 steps and a 10,000-image test
RANK = re.compile(r"Initializing distributed: GLOBAL_RANK: (\d+), MEMBER: \d+/(\d+)")


def node_command(endpoint: str, run_dir: str, job_id: str, *overrides: str) -> list[str]:
    """What each node types (docs/scale.md): `torchrun <these> train.py trainer=ddp ... hydra.run.dir=<shared>`,
    the same on every node; torchrun here is `python -m torch.distributed.run`, with this interpreter."""
    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    rendezvous = ["--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", f"--rdzv-id={job_id}"]
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.num_nodes=2"]
    return [
        *torchrun,
        "--nnodes=2",
        "--nproc-per-node=1",
        *rendezvous,
        "train.py",
        *ddp,
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]


def start_node(command: list[str], log: Path) -> subprocess.Popen:
    """One agent in its own process group (so that the test can end it and its trainer), output to a file."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    with open(log, "w") as out:  # a file, not a pipe: a full pipe would block the agent
        return subprocess.Popen(
            command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def wait_all(nodes: list[subprocess.Popen], timeout: float) -> list[int | None]:
    """Each agent's exit status, None for one still running after `timeout` seconds (from now, for all)."""
    deadline = time.monotonic() + timeout
    for node in nodes:
        try:
            node.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            pass
    return [node.poll() for node in nodes]


def kill_group(node: subprocess.Popen) -> None:
    """SIGKILL an agent's process group: the agent and the trainer it started (nothing, once both ended)."""
    try:
        os.killpg(node.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    node.wait(timeout=30)


@pytest.mark.slow  # two torchrun agents and their trainers, then an evaluation: about 30 s here
def test_two_torchrun_nodes_train_one_run_scored_like_evaluate(data_dir, tmp_path):
    run_dir, logs = tmp_path / "shared" / "run", [tmp_path / "node0.log", tmp_path / "node1.log"]
    overrides = [*SYNC_RUN, f"data.data_dir={data_dir}", f"paths.log_dir={tmp_path / 'logs'}", *QUIET]
    command = node_command(f"127.0.0.1:{free_port()}", str(run_dir), f"cifar-{tmp_path.name}", *overrides)
    nodes = []
    try:
        nodes = [start_node(command, log) for log in logs]
        statuses = wait_all(nodes, TIMEOUT)
    finally:
        for node in nodes:
            kill_group(node)
    outputs = [log.read_text() for log in logs]
    assert statuses == [0, 0], "\n\n".join(output[-3000:] for output in outputs)

    ranks = sorted(RANK.findall(output)[0] for output in outputs)  # one trainer per agent, in one world of 2
    assert ranks == [("0", "2"), ("1", "2")], ranks
    # One run: no node named a run directory of its own, and rank 0 alone wrote the files.
    assert list(tmp_path.rglob("metrics.json")) == [run_dir / "metrics.json"]
    assert len(list(run_dir.rglob("config.yaml"))) == 2  # the run's and Hydra's own (.hydra/), once each
    metrics = assert_matches_evaluation(run_dir, data_dir, tmp_path)
    assert metrics["world_size"] == 2 and metrics["epochs_run"] == 1
