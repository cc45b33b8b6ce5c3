"""hydra/launcher=slurm: hydra-submitit-launcher's Slurm launcher, whose sbatch refusals end the command with
one `error:` paragraph (cifar_lightning.cluster) instead of submitit's traceback. Defined only where the
`cluster` extra is installed: Hydra imports every hydra_plugins module on each start."""

from __future__ import annotations

import sys
from collections.abc import Sequence

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher
except ImportError:  # pip install -e ".[cluster]"; conf/hydra/launcher/slurm.yaml then fails to load, saying so
    SubmititSlurmLauncher = None

if SubmititSlurmLauncher is not None:
    from hydra.core.utils import JobReturn

    class SlurmLauncher(SubmititSlurmLauncher):
        """submitit's launcher; a submission sbatch refuses exits with status 2 and submits no job."""

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            from submitit.core.utils import FailedJobError

            from cifar_lightning.cluster import submission_error

            try:
                return super().launch(job_overrides, initial_job_idx)
            except FailedJobError as exc:
                if "sbatch: error" not in str(exc):  # a job that failed while running keeps submitit's report
                    raise
                error = submission_error(str(exc))
            print(f"error: {error}", file=sys.stderr)
            sys.exit(error.exit_code)
