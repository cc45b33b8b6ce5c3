"""A Hydra sweeper that runs an Optuna study: ask trials, launch them as train.py jobs, tell their outcome.

It replaces hydra-optuna-sweeper (see docs/search-and-tracking.md) on Optuna's ask-and-tell API. A sampler
`seed` is offset by the number of the worker's first trial: a lone worker on a new study is reproducible, and
two workers started together do not draw alike. Loaded through hydra_plugins/cifar_lightning_optuna."""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution
from optuna.storages import RDBStorage, RetryFailedTrialCallback, fail_stale_trials
from optuna.trial import TrialState

from cifar_lightning.config.schema import node_problems
from cifar_lightning.config.search import OBJECTIVES, SearchSettings
from cifar_lightning.errors import CifarLightningError, SearchError, one_line
from cifar_lightning.hpo.report import write_report
from cifar_lightning.hpo.space import build_space, draw, hydra_value, probe_values, trial_overrides
from cifar_lightning.hpo.study import (
    FAILED,
    INTERRUPTED,
    OVERRIDES,
    RUN_DIR,
    STATUS,
    TASK_OVERRIDES,
    build_sampler,
    counted,
    default_storage,
    open_storage,
    open_study,
    shown_url,
)
from cifar_lightning.runs import COMPLETED, PRUNED, RunDir, RunDirError, read_metrics

log = logging.getLogger(__name__)

#: Overrides that belong to the search, not to the configuration a trial trains (left out of hpo.md's commands).
SEARCH_KEYS = ("hparams_search", "hpo")


@dataclass
class Plan:
    """A checked search, ready to run."""

    study: optuna.Study
    storage: RDBStorage
    storage_url: str
    space: dict[str, BaseDistribution]
    fixed: list[str]


@contextmanager
def heartbeat(storage: RDBStorage, interval: int | None) -> Iterator[set[int]]:
    """Beat for the trial ids put in the yielded set (with an interval), so a killed worker's trials go stale."""
    trial_ids: set[int] = set()
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            for trial_id in list(trial_ids):
                storage.record_heartbeat(trial_id)

    if interval is not None:
        threading.Thread(target=beat, name="optuna-heartbeat", daemon=True).start()
    try:
        yield trial_ids
    finally:
        stop.set()


class OptunaSearch:
    """The sweeper's work; hydra_plugins.cifar_lightning_optuna.OptunaSweeper hands it Hydra's calls."""

    def __init__(self, **settings: Any) -> None:
        """settings: hydra.sweeper's keys (declared in cifar_lightning/config/search.py), checked in plan()."""
        plain = {
            k: OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig) else v for k, v in settings.items()
        }
        self.settings = {key: value for key, value in plain.items() if not key.startswith("_")}
        defaults = SearchSettings.model_construct()
        for key in SearchSettings.model_fields:
            setattr(self, key, plain.get(key, getattr(defaults, key)))

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        try:
            plan = self.plan(arguments)
        except CifarLightningError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(exc.exit_code)
        return self.run(plan)

    def check_composes(self, space: Mapping[str, BaseDistribution], fixed: Sequence[str]) -> None:
        """Each end of each range and each choice must compose into a train.py config (no unknown key or option)."""
        for name, dist in space.items():
            for value in probe_values(dist):
                override = trial_overrides({name: value})[0]
                try:
                    self.hydra_context.config_loader.load_sweep_config(self.config, [*fixed, override])
                except Exception as exc:
                    reason = one_line(exc, 300)
                    raise SearchError(
                        f"the search-space parameter {override} does not compose into a train.py config ({reason}). "
                        f"Fix hydra.sweeper.params: name existing config keys (python train.py --cfg job lists "
                        f"them; +key adds a new one) and existing config-group options; no trial was run."
                    ) from exc

    def plan(self, arguments: Sequence[str]) -> Plan:
        """Check the search and open its study; nothing is written before it returns (run() writes). A password in
        a URL was refused before Hydra started the sweep (credentials.RefusePasswords), and open_storage refuses one."""
        if found := node_problems(SearchSettings, self.settings, "hydra.sweeper"):
            raise SearchError(
                f"{found[0][1]}. Fix it in conf/hparams_search/<name>.yaml or on the command line "
                f"(hydra.sweeper.<key>=<value>); no trial was run."
            )
        space, fixed = build_space(self.params, arguments)
        self.check_composes(space, fixed)
        storage_url = self.storage or default_storage(self.config.hydra.sweep.dir)
        storage = open_storage(storage_url, self.heartbeat_interval, self.max_retry)
        sampler = build_sampler(self.sampler)
        study = open_study(storage, self.study_name, self.objective, self.direction, sampler, self.pruner)
        task = [line for line in fixed if line.split("=", 1)[0].lstrip("+~").split(".")[0] not in SEARCH_KEYS]
        study.set_user_attr(TASK_OVERRIDES, task)
        return Plan(study, storage, storage_url, space, fixed)

    def run(self, plan: Plan) -> list[Sequence[JobReturn]]:
        study = plan.study
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        log.info(
            "study %r in %s: %d of %d trials done; %s %s",
            study.study_name,
            shown_url(plan.storage_url),
            counted(study.get_trials(deepcopy=False)),
            self.n_trials,
            self.direction,
            self.objective,
        )
        returns: list[Sequence[JobReturn]] = []
        job_idx = 0
        # What makes a train.py job a trial of this study (cifar_lightning.hpo.trial).
        hpo_keys = [f"hpo.study={hydra_value(study.study_name)}", f"hpo.storage={hydra_value(plan.storage_url)}"]
        with heartbeat(plan.storage, self.heartbeat_interval) as beating:
            while True:
                with warnings.catch_warnings():  # "experimental", "meant for Study.optimize": ask-and-tell uses it too
                    warnings.simplefilter("ignore")
                    fail_stale_trials(study)  # a killed worker's trials fail and are enqueued again
                trials = study.get_trials(deepcopy=False)
                remaining = self.n_trials - counted(trials)
                if remaining <= 0:
                    if not self.wait_for_others(trials):
                        break
                    continue
                batch = []
                for _ in range(min(self.n_jobs, remaining)):
                    batch.append(study.ask())
                    if not returns and len(batch) == 1:  # the first trial: see the module docstring
                        study.sampler = build_sampler(self.sampler, seed_offset=batch[0].number)
                jobs = []
                for trial in batch:
                    overrides = trial_overrides({name: draw(trial, name, dist) for name, dist in plan.space.items()})
                    trial.set_user_attr(OVERRIDES, overrides)
                    if self.heartbeat_interval is not None:  # beats from now on (none at all never goes stale)
                        plan.storage.record_heartbeat(trial._trial_id)
                    beating.add(trial._trial_id)
                    log.info("trial %d: %s", trial.number, " ".join(overrides))
                    jobs.append([*plan.fixed, *overrides, *hpo_keys, f"hpo.trial={trial.number}"])
                try:
                    results = self.launcher.launch(jobs, initial_job_idx=job_idx)
                except BaseException:
                    self.interrupted(study, batch)
                    raise
                finally:
                    beating.clear()
                for trial, result in zip(batch, results):
                    self.tell(study, trial, result)
                returns.append(results)
                job_idx += len(batch)
        write_report(study, sweep_dir)
        return returns

    def wait_for_others(self, trials: Sequence[optuna.trial.FrozenTrial]) -> bool:
        """With n_trials reached: wait (True) while other workers' trials run, if a heartbeat can tell them alive."""
        running = [t.number for t in trials if t.state == TrialState.RUNNING]
        if not running or self.heartbeat_interval is None:
            if running:
                log.warning("trials %s still run elsewhere (or were killed); rerun to retry killed ones", running)
            return False
        log.info("waiting for trials %s (another worker's, or killed ones until their heartbeat goes stale)", running)
        time.sleep(min(self.heartbeat_interval, 10))
        return True

    def tell(self, study: optuna.Study, trial: optuna.trial.Trial, result: JobReturn) -> None:
        """Record the outcome of a trial's run: its objective, pruned, or failed (diverged, crashed, no record)."""
        run_dir = Path(result.hydra_cfg.hydra.runtime.output_dir) if result.hydra_cfg is not None else None
        status, metrics = FAILED, {}
        if result.status == JobStatus.COMPLETED and run_dir is not None:
            try:
                metrics = read_metrics(RunDir(run_dir))
                status = metrics.get("status") or FAILED
            except RunDirError as exc:
                log.error("trial %d: %s", trial.number, exc)
        value = metrics.get(OBJECTIVES[self.objective][0])
        if status == COMPLETED and not (isinstance(value, (int, float)) and math.isfinite(value)):
            status = FAILED
        trial.set_user_attr(STATUS, status)
        trial.set_user_attr(RUN_DIR, str(run_dir) if run_dir is not None else None)
        if status == COMPLETED:
            study.tell(trial, value)
        else:
            study.tell(trial, state=TrialState.PRUNED if status == PRUNED else TrialState.FAIL)
        shown = f"{self.objective} {value:.4f}" if status == COMPLETED else status
        level = logging.INFO if status in (COMPLETED, PRUNED) else logging.WARNING
        log.log(level, "trial %d: %s (%s)", trial.number, shown, run_dir)

    def interrupted(self, study: optuna.Study, batch: Sequence[optuna.trial.Trial]) -> None:
        """The worker is stopping mid-batch (Ctrl-C): fail its unfinished trials and enqueue them again."""
        for trial in batch:
            if study.get_trials(deepcopy=False)[trial.number].state != TrialState.RUNNING:
                continue
            trial.set_user_attr(STATUS, INTERRUPTED)
            study.tell(trial, state=TrialState.FAIL)
            RetryFailedTrialCallback(max_retry=self.max_retry)(study, study.get_trials(deepcopy=False)[trial.number])
            log.warning("trial %d interrupted: it will run again when the study continues", trial.number)
