"""The real services some tests need (Slurm, PostgreSQL, Chromium): skipped where one is missing, but
failed under CI (CI=true), whose .ci/run installs and starts each of them (scripts/local_*.sh)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def under_ci() -> bool:
    """True in CI, where every service is started by .ci/run: a missing one is a failure, not a skip."""
    return os.environ.get("CI", "").lower() == "true"


def require(problem: str | None, fix: str) -> None:
    """Skip the test (fail it under CI) when `problem` says the service it needs is not there."""
    if problem is None:
        return
    message = f"{problem}; {fix}"
    if under_ci():
        pytest.fail(f"CI must provide this service: {message}")
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


def require_slurm() -> None:
    require(slurm_problem(), "start one with `sudo scripts/local_cluster.sh up`")
