"""Write a study's hpo.md and plots on demand.
python -m cifar_lightning.hpo <sweep dir or storage URL> [--study NAME] [--out DIR]"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cifar_lightning.errors import CifarLightningError, SearchError
from cifar_lightning.hpo.report import REPORT_FILE, write_report
from cifar_lightning.hpo.study import STORAGE_FILE, default_storage, load_study


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cifar_lightning.hpo", description=__doc__.splitlines()[0])
    parser.add_argument("target", help="a search's sweep directory, or a study storage URL")
    parser.add_argument("--study", default=None, help="the study's name (needed when the storage holds several)")
    parser.add_argument("--out", default=None, help=f"where {REPORT_FILE} and the plots go (default: the sweep dir)")
    args = parser.parse_args(argv)
    try:
        if "://" in args.target:  # a storage URL
            if not args.out:
                raise SearchError(f"{args.target} is a storage URL: pass --out <dir> for {REPORT_FILE} and the plots.")
            url, out = args.target, Path(args.out)
        elif not (Path(args.target) / STORAGE_FILE).is_file():
            raise SearchError(
                f"{Path(args.target)} holds no {STORAGE_FILE}: it is not the sweep directory of a search (python "
                f"train.py -m hparams_search=<name> writes one, e.g. logs/train/hpo/<study>/). Fix: pass that "
                f"directory, or the study's storage URL (e.g. postgresql://host/db) with --study."
            )
        else:  # a sweep directory
            url, out = default_storage(args.target), Path(args.out or args.target)
        path = write_report(load_study(url, args.study, setting="the storage URL argument"), out)
    except CifarLightningError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
