"""Load test of serve.py: N concurrent clients post an image to POST /predict for T seconds, each sending its next
request as soon as its last one is answered; prints requests/s, the p50/p95/p99 latency and the error count.

Against a server that is already running:
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --clients 16 --seconds 20

Or starting serve.py itself, once per max_batch_size (1 = no dynamic batching), one after the other:
    python benchmarks/serve_load.py --ckpt logs/train/runs/<date>_<time>/checkpoints/best.ckpt \\
        --batch-sizes 1 32 --clients 16 --seconds 20 [-- more serve.py overrides, e.g. ood.enabled=false]

The image is the first CIFAR-10 test image as a PNG (--data-dir), or --image. Each run starts with --warmup
seconds of the same load that are not counted. The clients share the machine with the server: on a small
machine they take CPU time from it, so compare runs made on the same machine at the same time.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from torchvision.datasets import CIFAR10

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Load:
    """What the clients saw in the measured window."""

    seconds: float
    latencies: list[float] = field(default_factory=list)  # seconds, answered requests (any status)
    errors: int = 0  # non-200 answers and failed connections

    def report(self, label: str) -> str:
        done = len(self.latencies)
        if not done:
            return f"{label}: no request was answered ({self.errors} errors)"
        p50, p95, p99 = np.percentile(np.array(self.latencies) * 1000, [50, 95, 99])
        return (
            f"{label}: {done / self.seconds:.1f} requests/s, latency p50 {p50:.1f} ms, p95 {p95:.1f} ms, "
            f"p99 {p99:.1f} ms, errors {self.errors} of {done + self.errors} requests"
        )


async def run_load(url: str, body: bytes, clients: int, seconds: float, warmup: float, gradcam: bool) -> Load:
    """`clients` concurrent closed-loop clients for warmup + seconds; only requests sent after the warmup count."""
    params = {"gradcam": "1"} if gradcam else {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    start = time.perf_counter()
    measure_from, end = start + warmup, start + warmup + seconds
    load = Load(seconds=seconds)

    async def client(http: httpx.AsyncClient) -> None:
        while (sent := time.perf_counter()) < end:
            try:
                response = await http.post("/predict", content=body, params=params)
                failed = response.status_code != 200
            except httpx.HTTPError:
                failed = True
            answered = time.perf_counter()
            if sent >= measure_from and answered <= end:
                if failed:
                    load.errors += 1
                else:
                    load.latencies.append(answered - sent)

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return load


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(
    ckpt: str, port: int, batch_size: int, batch_timeout: float, extra: list[str], log: Path
) -> subprocess.Popen:
    command = [
        sys.executable,
        "serve.py",
        f"ckpt={ckpt}",
        f"port={port}",
        f"max_batch_size={batch_size}",
        f"batch_timeout={batch_timeout}",
        "log_level=warning",
        *extra,
    ]
    print("$", " ".join(command[1:]), flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        return subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_until_ready(process: subprocess.Popen, url: str, log: Path, timeout: float = 600) -> None:
    """Poll url/health until serve.py answers 200; exit with its log when it exits or is not ready in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    problem = f"serve.py exited with status {process.returncode}"
    if process.poll() is None:
        problem = f"serve.py was not ready after {timeout:.0f} s"
        os.killpg(process.pid, signal.SIGKILL)
    sys.exit(f"{problem}; its log {log}:\n{log.read_text()[-3000:]}")


def stop_server(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)  # serve.py stops its workers on SIGTERM
    try:
        process.wait(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # only the process group this script started


def image_bytes(args: argparse.Namespace) -> bytes:
    if args.image is not None:
        return Path(args.image).read_bytes()
    buffer = io.BytesIO()
    Image.fromarray(CIFAR10(args.data_dir, train=False).data[0]).save(buffer, format="PNG")
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000")
    target.add_argument("--ckpt", help="start serve.py on this checkpoint, once per --batch-sizes entry")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32], help="max_batch_size of each run")
    parser.add_argument("--batch-timeout", type=float, default=0.01, help="batch_timeout of each run, seconds")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=20, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of load before measuring")
    parser.add_argument("--gradcam", action="store_true", help="ask for the Grad-CAM overlay too (?gradcam=1)")
    parser.add_argument("--image", help="the image file to post; default: the first CIFAR-10 test image")
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("CIFAR10_DATA_DIR", "data"),
        help="folder holding cifar-10-batches-py/ (for the default image)",
    )
    parser.add_argument("--log-dir", default="/tmp", help="where the started servers' logs go")
    parser.add_argument("serve_args", nargs="*", help="after --: more serve.py overrides")
    args = parser.parse_args()
    body = image_bytes(args)
    what = f"{args.clients} clients, {args.seconds:g} s" + (", with Grad-CAM" if args.gradcam else "")
    if args.url:
        print(
            asyncio.run(run_load(args.url, body, args.clients, args.seconds, args.warmup, args.gradcam)).report(
                f"{args.url} ({what})"
            )
        )
        return
    for batch_size in args.batch_sizes:
        port = free_port()
        url, log = f"http://127.0.0.1:{port}", Path(args.log_dir) / f"serve_load_b{batch_size}.log"
        process = start_server(args.ckpt, port, batch_size, args.batch_timeout, args.serve_args, log)
        try:
            wait_until_ready(process, url, log)
            load = asyncio.run(run_load(url, body, args.clients, args.seconds, args.warmup, args.gradcam))
        finally:
            stop_server(process)
        batching = "no batching" if batch_size == 1 else f"batch_timeout {args.batch_timeout:g} s"
        print(load.report(f"max_batch_size={batch_size} ({batching}; {what})"), flush=True)


if __name__ == "__main__":
    main()
