"""The real services some tests need (Slurm, PostgreSQL, Chromium): skipped where one is missing, but
failed under CI (CI=true), whose .ci/run installs and starts each of them (scripts/local_*.sh)."""

from __future__ import annotations

import os

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
