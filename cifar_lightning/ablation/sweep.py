"""Reading sweeps: the jobs of one or several Hydra multiruns (e.g. one sweep per seed), each a Run.
A configuration and seed with a result in two jobs is refused: which one counts is the user's call."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cifar_lightning.errors import CifarLightningError, is_int, is_number
from cifar_lightning.runs import COMPLETED, DIVERGED, HYDRA_DIR, RunDir, RunDirError, read_metrics

log = logging.getLogger(__name__)

#: Run.status of a job without a usable metrics.json (failed, killed, or still running).
UNFINISHED = "unfinished"
EXAMPLE = "python -m cifar_lightning.ablation logs/train/multiruns/<date>_<time>"


class SweepError(CifarLightningError):
    """A sweep directory is missing, holds no jobs, repeats a configuration and seed, or cannot be written to."""


@dataclass(frozen=True)
class Run:
    """One job of a sweep: completed, diverged (its settings' result, not missing) or unfinished (no metrics)."""

    name: str
    seed: int | None
    directory: Path
    planned_seeds: int | None = None
    metrics: dict[str, Any] | None = field(default=None, repr=False)
    status: str = COMPLETED


class SweepRuns(NamedTuple):
    """Every job of the sweeps read, split by status, and the sweep directories they came from."""

    finished: list[Run]
    unfinished: list[Run]
    diverged: list[Run] = []  # never mutated
    sweep_dirs: tuple[Path, ...] = ()


def find_job_dirs(sweep_dir: Path) -> list[Path]:
    """Hydra's job directories: the sweep's subdirectories holding .hydra/config.yaml or metrics.json."""
    jobs = [
        path
        for path in sweep_dir.iterdir()
        if path.is_dir() and ((path / HYDRA_DIR / "config.yaml").is_file() or RunDir(path).metrics.is_file())
    ]
    return sorted(jobs, key=lambda path: (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name))


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML file as plain containers, interpolations left as their `${...}` text; {} if unreadable."""
    try:
        loaded = OmegaConf.load(path) if path.is_file() else None
    except (OSError, yaml.YAMLError, OmegaConfBaseException) as exc:
        log.warning("cannot read %s (%s): ignored", path, exc)
        return {}
    if not isinstance(loaded, DictConfig):
        return {}
    return OmegaConf.to_container(loaded, resolve=False)  # type: ignore[return-value]


def job_metrics(job_dir: Path) -> tuple[str, dict[str, Any] | None]:
    """(completed, metrics) with a test accuracy, (diverged, metrics), or (unfinished, None)."""
    run = RunDir(job_dir)
    if not run.metrics.is_file():
        return UNFINISHED, None
    try:
        metrics = read_metrics(run)
    except RunDirError as exc:
        log.warning("%s: the job counts as unfinished", exc)
        return UNFINISHED, None
    if metrics.get("status") == DIVERGED:
        return DIVERGED, metrics
    if not is_number(metrics.get("test_acc"), finite=True):
        log.warning("%s has no test_acc: the job counts as unfinished", run.metrics)
        return UNFINISHED, None
    return COMPLETED, metrics


def is_name(value: Any) -> bool:
    """A configuration or experiment name: a non-empty string (null and `${...}` left aside by `plain`)."""
    return isinstance(value, str) and value != ""


def plain(mapping: dict[str, Any], dotted_key: str) -> Any:
    """The value at `a.b` in nested dicts, or None if absent or an unresolved `${...}` interpolation."""
    value: Any = mapping
    for key in dotted_key.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    if isinstance(value, str) and "${" in value:
        return None
    return value


def first(values: Iterable[Any], valid: Callable[[Any], bool]) -> Any:
    return next((value for value in values if valid(value)), None)


def read_run(job_dir: Path) -> Run:
    """Name, seed and planned seed count of one job, from metrics.json, else config.yaml, else .hydra/."""
    status, metrics = job_metrics(job_dir)
    configs = [read_yaml(RunDir(job_dir).config), read_yaml(job_dir / HYDRA_DIR / "config.yaml")]
    from_metrics = metrics or {}
    name = first([from_metrics.get("ablation"), *(plain(c, "ablation.name") for c in configs)], is_name)
    # A sweep without the ablation group (e.g. `-m seed=0,1,2`) is grouped by its experiment name.
    name = name or first([from_metrics.get("experiment"), *(plain(c, "experiment_name") for c in configs)], is_name)
    seed = first([from_metrics.get("seed"), *(plain(c, "seed") for c in configs)], is_int)
    # ablation.seeds has a default in every run's config; it is a plan only for jobs of an ablation.
    ablation_configs = [c for c in configs if is_name(plain(c, "ablation.name"))]
    planned = first([plain(c, "ablation.seeds") for c in ablation_configs], lambda v: is_int(v, 1))
    return Run(name or "unknown", seed, job_dir, planned_seeds=planned, metrics=metrics, status=status)


def sweep_job_dirs(sweep_dir: Path) -> list[Path]:
    """The job directories of one sweep; a SweepError naming the fix when there is no sweep there."""
    if not sweep_dir.is_dir():
        what = "is not a directory" if sweep_dir.exists() else "does not exist"
        raise SweepError(
            f"sweep directory {sweep_dir} {what}. Fix: pass the directory of a Hydra multirun, e.g. {EXAMPLE}."
        )
    job_dirs = find_job_dirs(sweep_dir)
    if not job_dirs:
        raise SweepError(
            f"{sweep_dir} holds no job directories (no subdirectory with .hydra/config.yaml or metrics.json). "
            f"Fix: pass the multirun directory that holds the jobs 0/, 1/, ... "
            f"(logs/train/multiruns/<date>_<time>), not a job or the multiruns folder itself."
        )
    return job_dirs


def as_sweep_dirs(sweep_dirs: str | Path | Sequence[str | Path]) -> tuple[Path, ...]:
    """One directory or several as Paths; the same directory given twice is a SweepError."""
    paths = (Path(sweep_dirs),) if isinstance(sweep_dirs, (str, Path)) else tuple(Path(d) for d in sweep_dirs)
    if not paths:
        raise SweepError(f"no sweep directory given. Fix: pass one or more, e.g. {EXAMPLE}.")
    resolved = [path.resolve() for path in paths]
    for i, key in enumerate(resolved):
        if key in resolved[:i]:
            raise SweepError(
                f"sweep directory {paths[i]} is given twice ({paths[resolved.index(key)]} is the same directory), "
                f"which would count each of its runs twice. Fix: name every sweep directory once."
            )
    return paths


def refuse_repeated_seeds(runs: Sequence[Run]) -> None:
    """A SweepError when a configuration and seed finished in two jobs (diverged ones never enter the mean)."""
    first_job: dict[tuple[str, int], Run] = {}
    repeated: list[tuple[Run, Run]] = []
    for run in (run for run in runs if run.status == COMPLETED and run.seed is not None):
        if (other := first_job.setdefault((run.name, run.seed), run)) is not run:
            repeated.append((other, run))
    if not repeated:
        return
    (one, two), more = repeated[0], len(repeated) - 1
    also = f" (and {more} more configuration and seed pair{'s' if more > 1 else ''} like it)" if more else ""
    raise SweepError(
        f"configuration {one.name!r} with seed {one.seed} has a result in two jobs, {one.directory} and "
        f"{two.directory}{also}; the table counts each seed once and cannot tell which one is meant. Fix: "
        f"aggregate only one of the sweep directories that ran it, or move the unwanted job directory out of "
        f"its sweep."
    )


def collect_runs(sweep_dirs: str | Path | Sequence[str | Path]) -> SweepRuns:
    """Every job of one or several sweeps, split into finished, unfinished (failed or interrupted) and diverged."""
    paths = as_sweep_dirs(sweep_dirs)
    runs = [read_run(job_dir) for sweep_dir in paths for job_dir in sweep_job_dirs(sweep_dir)]
    refuse_repeated_seeds(runs)
    return SweepRuns(
        [r for r in runs if r.status == COMPLETED],
        [r for r in runs if r.status == UNFINISHED],
        [r for r in runs if r.status == DIVERGED],
        paths,
    )
