"""hydra/launcher=slurm: hydra-submitit-launcher's Slurm launcher, whose sbatch refusals, and sweeps whose jobs
would need different sizes, end the command with one `error:` paragraph (cifar_lightning.cluster) instead of
submitit's traceback or a job that fails. Defined only where the
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
        """submitit's launcher; a sweep it cannot submit as asked exits with status 2 and submits no job."""

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            from submitit.core.utils import FailedJobError

            from cifar_lightning.cluster import check_one_job_shape, submission_error
            from cifar_lightning.errors import ConfigError

            try:
                check_one_job_shape(job_overrides)
                return super().launch(job_overrides, initial_job_idx)
            except ConfigError as exc:
                error = exc
            except FailedJobError as exc:
                if "sbatch: error" not in str(exc):  # a job that failed while running keeps submitit's report
                    raise
                error = submission_error(str(exc))
            print(f"error: {error}", file=sys.stderr)
            sys.exit(error.exit_code)
