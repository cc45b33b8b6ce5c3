"""The serve.py server the serving tests share (tests/test_serving.py, tests/test_serve_browser.py), as a pytest
plugin both load with `pytest_plugins`, so that one session starts one server: serve.py in a subprocess on a free
port, on the tiny run, with dynamic batching and a KNN detector fitted at startup. At the end SIGTERM must stop it
and every process it started, cleanly."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import CIFAR10

from tests.conftest import DATA_DIR
from tests.helpers import ROOT

#: The shared server's max_batch_size: the batching test expects batches of 2 up to this many requests.
MAX_BATCH_SIZE = 8
STARTUP_TIMEOUT = 600  # seconds: two Python processes import torch on a busy machine, and a detector is fitted


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def png_bytes(pixels: np.ndarray) -> bytes:
    """(H, W, 3) or (H, W) uint8 -> a PNG file."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def cifar_test_pngs(n: int) -> list[tuple[bytes, int]]:
    """The first n CIFAR-10 test images as PNG files, with their labels."""
    test = CIFAR10(str(DATA_DIR), train=False)
    return [(png_bytes(test.data[i]), int(test.targets[i])) for i in range(n)]


#: A CIFAR-10 test image as a PNG file (empty when the data is absent: the data_dir fixture then fails the tests).
PNG = cifar_test_pngs(1)[0][0] if (DATA_DIR / "cifar-10-batches-py").is_dir() else b""


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        """The process runs and answers a valid image."""
        if self.process.poll() is not None:
            return False
        return httpx.post(f"{self.url}/predict", content=PNG, timeout=60).status_code == 200


def start_server(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:  # a file, not a pipe: a full pipe would block the server
        # Its own session (process group), so that the test can check that every process it started is gone.
        return subprocess.Popen(
            [sys.executable, "serve.py", *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_until_serving(process: subprocess.Popen, url: str, timeout: float) -> str:
    """Poll `url`/health until a serve.py started as `process` answers 200: '' then, or why it never did (it
    exited, or `timeout` seconds passed: then it is killed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"serve.py exited with status {process.returncode}"
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return ""
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    process.kill()
    return f"serve.py was not ready after {timeout:.0f} s"


def wait_until_ready(process: subprocess.Popen, url: str, log: Path) -> None:
    problem = wait_until_serving(process, url, STARTUP_TIMEOUT)
    if problem:
        pytest.fail(f"{problem}:\n{log.read_text()[-4000:]}")


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="session")
def server(tiny_run, data_dir, tmp_path_factory) -> Iterator[Server]:
    """serve.py on the tiny run, batching (up to 8 requests, 50 ms), with a KNN detector fitted on 500 images
    (one torch thread: the tests' machine may have few cores, shared).
    Shared with tests/test_serve_browser.py. At the end, SIGTERM must stop it and every process it started."""
    run, _ = tiny_run
    tmp = tmp_path_factory.mktemp("serve")
    port, log = free_port(), tmp / "server.log"
    process = start_server(
        [
            f"run_dir={run}",
            f"port={port}",
            f"paths.log_dir={tmp / 'logs'}",
            f"data.data_dir={data_dir}",
            "data.download=false",
            "ood.fit=true",
            "ood.fit_images=500",
            f"max_batch_size={MAX_BATCH_SIZE}",
            "batch_timeout=0.05",
            "cpu_threads=1",
            "log_level=warning",
        ],
        log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(process, url, log)
        yield Server(url, process, log)
    finally:
        stopped = process.poll() is None
        if stopped:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                stopped = False
        deadline = time.monotonic() + 30
        while group_alive(process.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        leftover = group_alive(process.pid)
        if leftover:
            os.killpg(process.pid, signal.SIGKILL)  # only this server's own process group
        if stopped:
            assert process.returncode == 0 and not leftover, (
                f"after SIGTERM: exit status {process.returncode}, processes left over: {leftover}\n"
                f"{log.read_text()[-4000:]}"
            )
            assert "Traceback" not in log.read_text(), log.read_text()[-4000:]
