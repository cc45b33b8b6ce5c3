"""`python -m cifar_lightning.ablation SWEEP_DIR [SWEEP_DIR ...] [--out DIR]`: aggregate one or several
sweeps into one table and print it; exit 2 with one `error:` line when that fails."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from cifar_lightning.ablation.render import render_markdown
from cifar_lightning.ablation.summary import aggregate
from cifar_lightning.errors import CifarLightningError, one_line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cifar_lightning.ablation",
        description="Aggregate Hydra ablation multiruns into one table: ablation.csv, ablation.md, curves.png and "
        "confusion.png, and print the Markdown table. Several sweep directories (e.g. one per seed) make one "
        "table of all their runs.",
    )
    parser.add_argument(
        "sweep_dirs",
        type=Path,
        nargs="+",
        metavar="SWEEP_DIR",
        help="a multirun directory, e.g. logs/train/multiruns/<date>_<time>; give several to combine them",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="where to write the files (default: the sweep directory; required with several)",
    )
    args = parser.parse_args(argv)
    try:
        table = aggregate(args.sweep_dirs, args.out)
    except CifarLightningError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    print(render_markdown(table), end="")
    print(f"\nWrote {', '.join(path.name for path in table.files.values())} into {args.out or args.sweep_dirs[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
