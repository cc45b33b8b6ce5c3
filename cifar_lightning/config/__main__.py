"""The configuration reference: python -m cifar_lightning.config [--out docs/reference/configuration.md].

Every key of every entry point and config group with its default, allowed values and doc, and every preset,
all derived from cifar_lightning/config/'s schemas and conf/ (cifar_lightning/config/reference.py).
"""

import argparse
from pathlib import Path

from cifar_lightning.config.reference import reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write the Markdown here instead of printing it")
    args = parser.parse_args()
    text = reference()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
