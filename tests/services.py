"""The real services some tests need (Slurm, PostgreSQL, Chromium): skipped where one is missing, but
failed under CI (CI=true), whose .ci/run installs and starts each of them (scripts/local_*.sh)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def require(problem: str | None, fix: str = "") -> None:
    """Skip the test when `problem` says the service it needs is not there; fail it under CI (CI=true), where
    every service is installed and started by .ci/run."""
    if not problem:
        return
    message = f"{problem}; {fix}" if fix else problem
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and the service this test needs is missing: {message}", pytrace=False)
    pytest.skip(message)


def slurm_problem() -> str | None:
    """Why no local Slurm cluster (scripts/local_cluster.sh) can take jobs, or None when it can: its default
    partition `debug` and the 2-node `multinode` must be up."""
    if shutil.which("sinfo") is None:
        return "Slurm is not installed"
    listed = subprocess.run(["sinfo", "-h", "-o", "%P %a"], capture_output=True, text=True, timeout=30)
    if listed.returncode != 0 or {"debug* up", "multinode up"} - set(listed.stdout.split("\n")):
        return f"no local Slurm cluster answers ({(listed.stderr or listed.stdout).strip()[:200]})"
    return None


#: Under `pytest -n N`, the tests that submit jobs to the local cluster run in one worker, one after the other,
#: as they were written to (each expects the cluster's nodes free; two at once would queue behind each other).
SLURM_CLUSTER = pytest.mark.xdist_group("slurm_cluster")


def require_slurm() -> None:
    require(slurm_problem(), "start one with `sudo scripts/local_cluster.sh up`")
