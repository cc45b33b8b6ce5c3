"""`python -m cifar_lightning.runs compare <runs, folders or globs>`: the runs leaderboard; exit 2 on an error."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from cifar_lightning.errors import CifarLightningError, one_line
from cifar_lightning.runs.compare import (
    ACCURACIES,
    DEFAULT_OUT,
    DEFAULT_SORT,
    METRIC_COLUMNS,
    caption,
    compare,
    left_out,
    render_table,
    write_comparison,
)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cifar_lightning.runs", description="Tools for run directories.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    leaderboard = commands.add_parser(
        "compare",
        help="a table of runs: recipe, status, headline metrics and the overrides that differ",
        description="One row per run: its recipe, status and headline figures, then the config keys that differ "
        "between the runs and that a run's overrides set, sorted by a metric. Prints the Markdown table (120 "
        "columns at most) and writes compare.md and compare.csv (every differing key, full values).",
    )
    leaderboard.add_argument(
        "paths", nargs="+", metavar="PATH", help="run directories, folders holding runs at any depth, or quoted globs"
    )
    sense = f"{' and '.join(ACCURACIES)} descending, the others ascending; missing values last"
    leaderboard.add_argument("--sort", choices=METRIC_COLUMNS, default=DEFAULT_SORT, help=f"the metric ({sense})")
    order = leaderboard.add_mutually_exclusive_group()
    order.add_argument("--ascending", dest="descending", action="store_false", default=None, help="smallest first")
    order.add_argument("--descending", dest="descending", action="store_true", default=None, help="largest first")
    leaderboard.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        comparison = compare(args.paths, args.sort, args.descending)
        markdown, csv_path = write_comparison(comparison, args.out)
    except CifarLightningError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    print(caption(comparison), render_table(comparison), left_out(comparison), sep="\n", end="")
    print(f"Wrote {markdown} and {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
