"""Write a study's hpo.md and plots on demand.

python -m cifar_lightning.hpo <sweep dir or storage URL> [--study NAME] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cifar_lightning.errors import CifarLightningError, SearchError
from cifar_lightning.hpo.report import REPORT_FILE, write_report
from cifar_lightning.hpo.study import STORAGE_FILE, default_storage, load_study


def storage_of(target: str) -> tuple[str, Path | None]:
    """The storage URL of a sweep directory or URL, and the sweep directory (None for a URL)."""
    if "://" in target:
        return target, None
    sweep_dir = Path(target)
    if not (sweep_dir / STORAGE_FILE).is_file():
        raise SearchError(
            f"{sweep_dir} holds no {STORAGE_FILE}: it is not the sweep directory of a search (python train.py -m "
            f"hparams_search=<name> writes one, e.g. logs/train/hpo/<study>/). Fix: pass that directory, or the "
            f"study's storage URL (e.g. postgresql://host/db) with --study."
        )
    return default_storage(sweep_dir), sweep_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cifar_lightning.hpo", description=__doc__.splitlines()[0])
    parser.add_argument("target", help="a search's sweep directory, or a study storage URL")
    parser.add_argument("--study", default=None, help="the study's name (needed when the storage holds several)")
    parser.add_argument("--out", default=None, help=f"where {REPORT_FILE} and the plots go (default: the sweep dir)")
    args = parser.parse_args(argv)
    try:
        url, sweep_dir = storage_of(args.target)
        out = Path(args.out) if args.out else sweep_dir
        if out is None:
            raise SearchError(f"{args.target} is a storage URL: pass --out <dir> for {REPORT_FILE} and the plots.")
        path = write_report(load_study(url, args.study), out)
    except CifarLightningError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
