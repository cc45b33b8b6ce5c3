"""`python -m cifar_lightning.runs compare <runs, folders or globs>`: the runs leaderboard; exit 2 on an error."""

import sys

from cifar_lightning.runs.compare import main

if __name__ == "__main__":
    sys.exit(main())
