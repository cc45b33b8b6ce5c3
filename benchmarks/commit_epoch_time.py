"""Seconds per epoch of the default recipe (`python train.py`) here and at another commit, side by side.

A change to the training path must not slow the default down. This script extracts the other commit's tree
(`git archive`, no checkout touched), then runs the same short job in both trees, alternating (here, there,
here, there, ...) so that a machine that drifts by 20% within minutes hits both sides alike:

    python benchmarks/commit_epoch_time.py --data-dir ../shared/data --commit c99f46b [--epochs 3 --repeats 4]

An epoch's seconds come from the run's own log: the time between two consecutive `epoch k/N` lines (so the first
epoch, which pays for start-up, is left out, and validation and checkpointing count). It prints the median per
side, their ratio (here / there) and each side's last validation figures, which show whether both computed the
same thing.
"""

from __future__ import annotations

import argparse
import io
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: "[2026-12-07 09:18:11,196][cifar_lightning.callbacks][INFO] - epoch 1/10: ... val_acc=0.4712 val_loss=1.665 ..."
EPOCH_LINE = re.compile(r"^\[(?P<time>[\d-]+ [\d:,]+)\]\[[\w.]+\]\[INFO\] - epoch (?P<epoch>\d+)/\d+: (?P<figures>.*)$")


def extract(commit: str, into: Path) -> Path:
    """The tree of `commit` under `into` (git archive: the commit's files, nothing else)."""
    tree = into / commit
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tree, filter="data")
    return tree


def epoch_lines(log: str) -> list[tuple[int, datetime, str]]:
    """(epoch, time, figures) of every `epoch k/N` line of a train.log."""
    found = []
    for line in log.splitlines():
        if match := EPOCH_LINE.match(line):
            when = datetime.strptime(match["time"], "%Y-%m-%d %H:%M:%S,%f")
            found.append((int(match["epoch"]), when, match["figures"]))
    return found


def epoch_seconds(log: str) -> list[float]:
    """The seconds of every epoch after the first: the gaps between consecutive epoch lines."""
    lines = epoch_lines(log)
    return [(later[1] - earlier[1]).total_seconds() for earlier, later in zip(lines, lines[1:])]


def run(tree: Path, out: Path, args: argparse.Namespace) -> dict:
    """One `python train.py` in `tree` (its own package first on the path), as a user runs it."""
    command = [
        sys.executable,
        "train.py",
        f"trainer.max_epochs={args.epochs}",
        f"data.data_dir={Path(args.data_dir).resolve()}",
        f"seed={args.seed}",
        f"hydra.run.dir={out}",
        "callbacks.progress_bar=null",  # the log, not a bar: both trees have this switch
        "trainer.enable_progress_bar=false",
        *args.overrides,
    ]
    result = subprocess.run(command, cwd=tree, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"error: train.py failed in {tree}:\n{result.stderr[-3000:]}")
    log = (out / "train.log").read_text()
    lines = epoch_lines(log)
    if len(lines) < 2:
        raise SystemExit(f"error: {out / 'train.log'} has {len(lines)} epoch lines; use --epochs 2 or more")
    return {"seconds": epoch_seconds(log), "last": lines[-1][2]}


def figures(line: str, keys: tuple[str, ...] = ("val_acc", "val_loss")) -> str:
    return " ".join(f"{key}={value}" for key, value in re.findall(r"(\w+)=(\S+)", line) if key in keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data/", help="folder holding cifar-10-batches-py/")
    parser.add_argument("--commit", default="c99f46b", help="the commit to compare with")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is left out")
    parser.add_argument("--repeats", type=int, default=4, help="runs per side, alternated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="more train.py overrides for both sides (e.g. a smaller run)")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be 2 or more: the first epoch pays for start-up and is left out")
    with tempfile.TemporaryDirectory(prefix="commit_epoch_time_") as scratch:
        trees = {"here": ROOT, args.commit: extract(args.commit, Path(scratch))}
        results: dict[str, list[dict]] = {side: [] for side in trees}
        for repeat in range(args.repeats):
            for side, tree in trees.items():
                result = run(tree, Path(scratch) / "runs" / f"{side}_{repeat}", args)
                results[side].append(result)
                seconds = ", ".join(f"{s:.2f}" for s in result["seconds"])
                print(f"round {repeat + 1}, {side}: {seconds} s per epoch; {figures(result['last'])}", file=sys.stderr)
    medians = {side: statistics.median(s for r in runs for s in r["seconds"]) for side, runs in results.items()}
    print("| tree | s per epoch (median) | epochs timed | last epoch |")
    print("|---|---:|---:|---|")
    for side, runs in results.items():
        print(
            f"| {side} | {medians[side]:.2f} | {sum(len(r['seconds']) for r in runs)} | {figures(runs[-1]['last'])} |"
        )
    print(f"\nhere / {args.commit}: {medians['here'] / medians[args.commit]:.3f}")
    print(f"command: python benchmarks/commit_epoch_time.py {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
