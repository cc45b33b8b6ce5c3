"""Run a fixed list of commands in a checkout and compare their outputs with another checkout's.

A refactor must not change what the project computes. This script runs the same jobs in two trees
(a 2-epoch base run, a resumed run, a 2-process DDP run, evaluate.py with OOD, predict.py, export.py in
both formats, a 2-trial search) and diffs every JSON and CSV they write, leaving out times, paths and
versions:

    python benchmarks/parity.py run --repo /tmp/old --out /tmp/parity/old --recipe seed
    python benchmarks/parity.py run --repo . --out /tmp/parity/new
    python benchmarks/parity.py diff /tmp/parity/old /tmp/parity/new

`--recipe` is the prefix of the report's recipes in that tree (`seed` before they were renamed,
`report` after), so the same jobs run under either name.
"""

import argparse
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

#: Keys whose values differ between any two runs (clock times, durations, paths, versions).
VOLATILE = (
    "time",
    "seconds",
    "date",
    "path",
    "dir",
    "ckpt",
    "versions",
    "python",
    "host",
    "started",
    "finished",
    "git_commit",
    "per_second",
)
#: Values the recipe rename changes (left out of the comparison as names, compared as a value otherwise).
RENAMED = {
    "seed_base": "report_base",
    "seed_improved": "report_improved",
    "seed_cnn": "report_cnn",
    "SeedCNN": "ReportCNN",
}


def commands(recipe: str, out: Path, data: str) -> list[tuple[str, list[str]]]:
    """The fixed job list: (name, argv) run in order from the checkout's root."""
    py, base = sys.executable, f"experiment={recipe}_base"
    common = [f"data.data_dir={data}", f"paths.log_dir={out / 'logs'}"]
    run = out / "base"
    return [
        ("train", [py, "train.py", base, "trainer.max_epochs=2", f"hydra.run.dir={run}", *common]),
        ("resume_first", [py, "train.py", base, "trainer.max_epochs=1", f"hydra.run.dir={out / 'resume'}", *common]),
        ("resume", [py, "train.py", f"resume={out / 'resume'}", "trainer.max_epochs=2"]),
        (
            "ddp",
            [
                py,
                "train.py",
                base,
                "trainer=ddp",
                "trainer.devices=2",
                "trainer.accelerator=cpu",
                "trainer.max_epochs=1",
                f"hydra.run.dir={out / 'ddp'}",
                *common,
            ],
        ),
        (
            "evaluate",
            [
                py,
                "evaluate.py",
                f"run_dir={run}",
                f"data.data_dir={data}",
                "progress=false",
                f"hydra.run.dir={out / 'evaluate'}",
            ],
        ),
        (
            "predict",
            [
                py,
                "predict.py",
                f"run_dir={run}",
                f"inputs={out / 'inputs'}",
                "progress=false",
                f"hydra.run.dir={out / 'predict'}",
            ],
        ),
        (
            "export_onnx",
            [
                py,
                "export.py",
                f"run_dir={run}",
                "format=onnx",
                f"data.data_dir={data}",
                f"hydra.run.dir={out / 'onnx'}",
            ],
        ),
        (
            "export_pt2",
            [py, "export.py", f"run_dir={run}", "format=pt2", f"data.data_dir={data}", f"hydra.run.dir={out / 'pt2'}"],
        ),
        (
            "search",
            [
                py,
                "train.py",
                "-m",
                f"hparams_search={recipe}_cnn",
                "hydra.sweeper.n_trials=2",
                "trainer.max_epochs=1",
                f"hydra.sweep.dir={out / 'search'}",
                *common,
            ],
        ),
    ]


def write_inputs(data: str, folder: Path, count: int = 12) -> None:
    """The first test images as PNG files: predict.py's inputs, the same bytes in both trees."""
    import pickle

    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    with open(Path(data) / "cifar-10-batches-py" / "test_batch", "rb") as handle:
        batch = pickle.load(handle, encoding="bytes")
    images = np.asarray(batch[b"data"][:count]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    for index, image in enumerate(images):
        Image.fromarray(image).save(folder / f"test_{index:02d}.png")


def run(repo: Path, out: Path, recipe: str, data: str, only: list[str] | None) -> None:
    out = out.resolve()
    write_inputs(data, out / "inputs")
    env = {**os.environ, "PYTHONPATH": str(repo.resolve()), "CIFAR10_DATA_DIR": data}
    for name, argv in commands(recipe, out, data):
        if only and name not in only:
            continue
        print(f"== {name}: {' '.join(argv[1:])}", flush=True)
        with open(out / f"{name}.log", "w") as log:
            code = subprocess.call(argv, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT)
        print(f"   exit {code}", flush=True)


def comparable(value: object, key: str = "") -> object:
    """The value with volatile keys dropped and recipe names mapped to their new spelling."""
    if isinstance(value, dict):
        return {
            RENAMED.get(k, k): comparable(v, k)
            for k, v in value.items()
            if not any(word in k.lower() for word in VOLATILE)
        }
    if isinstance(value, list):
        return [comparable(v, key) for v in value]
    if isinstance(value, str):
        for old, new in RENAMED.items():
            value = value.replace(old, new)
        return "<path>" if "/" in value else value
    return value


def differences(old: object, new: object, where: str = "") -> list[str]:
    """Human-readable differences between two comparable values (floats equal to 1e-9 relative)."""
    if isinstance(old, dict) and isinstance(new, dict):
        found = [f"{where}.{k}: only in old" for k in old.keys() - new.keys()]
        found += [f"{where}.{k}: only in new" for k in new.keys() - old.keys()]
        for k in old.keys() & new.keys():
            found += differences(old[k], new[k], f"{where}.{k}")
        return found
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in differences(a, b, f"{where}[{i}]")]
    if isinstance(old, float) and isinstance(new, float):
        same = math.isclose(old, new, rel_tol=1e-9, abs_tol=1e-12) or (math.isnan(old) and math.isnan(new))
        return [] if same else [f"{where}: {old!r} -> {new!r}"]
    return [] if old == new else [f"{where}: {old!r} -> {new!r}"]


def load(path: Path) -> object:
    if path.suffix == ".json":
        return comparable(json.loads(path.read_text()))
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    return comparable(
        [[float(c) if c.replace(".", "", 1).replace("-", "", 1).isdigit() else c for c in r] for r in rows]
    )


def diff(old_root: Path, new_root: Path) -> int:
    """Print every difference between the two output trees; returns the number of files that differ."""
    files = lambda root: {p.relative_to(root) for p in root.rglob("*") if p.suffix in (".json", ".csv")}  # noqa: E731
    old_files, new_files = files(old_root), files(new_root)
    bad = 0
    for name in sorted(old_files ^ new_files):
        print(f"{name}: only in {'old' if name in old_files else 'new'}")
        bad += 1
    for name in sorted(old_files & new_files):
        found = differences(load(old_root / name), load(new_root / name))
        print(f"{name}: {'same' if not found else f'{len(found)} differences'}")
        for line in found[:20]:
            print(f"    {line}")
        bad += bool(found)
    print(f"{len(old_files & new_files)} files compared, {bad} differ")
    return bad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="run the job list in one checkout")
    run_parser.add_argument("--repo", type=Path, default=Path("."))
    run_parser.add_argument("--out", type=Path, required=True)
    run_parser.add_argument("--recipe", default="report", help="the report recipes' prefix in that tree")
    run_parser.add_argument("--data", default=os.environ.get("CIFAR10_DATA_DIR", "../shared/data"))
    run_parser.add_argument("--only", nargs="*", help="run only these jobs (names as printed)")
    diff_parser = sub.add_parser("diff", help="compare two output folders")
    diff_parser.add_argument("old", type=Path)
    diff_parser.add_argument("new", type=Path)
    args = parser.parse_args()
    if args.command == "run":
        run(args.repo, args.out, args.recipe, str(Path(args.data).resolve()), args.only)
    else:
        sys.exit(1 if diff(args.old, args.new) else 0)


if __name__ == "__main__":
    main()
