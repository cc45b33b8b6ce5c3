"""Resume (train.py resume=<run dir>): continue a run from its last.ckpt with its own config.yaml, in place, with
only overrides that cannot change the result; everything is checked before the run directory changes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cifar_lightning.checkpoints import training_position
from cifar_lightning.errors import ResumeError, one_line
from cifar_lightning.runs import COMPLETED, DIVERGED, RunDir, readable_metrics
from cifar_lightning.training import fit_and_record

log = logging.getLogger(__name__)

#: Overrides a resume accepts: none of them can change what the run computes. A key also covers
#: its subkeys (callbacks.progress_bar.refresh_rate); `hydra...` (Hydra's own settings) are accepted too.
RESUME_OVERRIDES = (
    "resume",
    "trainer.max_epochs",  # upward only, and not with a per-step schedule or averaging ramp
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "callbacks.progress_bar",
    "callbacks.model_summary",
    "callbacks.device_stats",
    "callbacks.model_checkpoint.every_n_train_steps",
    "data.data_dir",
    "data.download",
    "paths.log_dir",
)
_RESUME_FIX = "Fix: pass only those, or start a new run with the changed settings"


def _is_hydra(key: str) -> bool:
    return key == "hydra" or key.startswith(("hydra.", "hydra/"))


def _allowed_on_resume(key: str) -> bool:
    return _is_hydra(key) or f"{key}.".startswith(tuple(f"{allowed}." for allowed in RESUME_OVERRIDES))


def _parse_overrides(run: RunDir, overrides: Sequence[str]) -> list[Any]:
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as exc:
        raise ResumeError(f"cannot resume {run.root}: the overrides cannot be parsed ({exc}).") from exc
    refused = [o.input_line for o in parsed if not _allowed_on_resume(o.key_or_group) or o.is_sweep_override()]
    if refused:
        raise ResumeError(
            f"cannot resume {run.root} with {', '.join(refused)}: a resumed run keeps the config it started with "
            f"({run.config}), and these could change its result. A resume accepts only "
            f"{', '.join(RESUME_OVERRIDES[1:])} and hydra.* (trainer.max_epochs upward only). {_RESUME_FIX} "
            f"(python train.py <its overrides>)."
        )
    return parsed


def _per_step_plan(config: DictConfig) -> str | None:
    """What in the run spans its planned number of steps (so max_epochs cannot grow), or None."""
    target = OmegaConf.select(config, "scheduler._target_")
    try:
        interval = getattr(get_class(target), "interval", "epoch") if isinstance(target, str) else "epoch"
    except (ImportError, ValueError, AttributeError):
        interval = "epoch"
    if interval == "step":
        return f"its per-step learning-rate schedule ({target})"
    if (OmegaConf.select(config, "averaging.ramp_power") or 0) > 0:
        return "its weight averaging's decay ramp (averaging.ramp_power > 0)"
    return None


def _apply_overrides(run: RunDir, config: DictConfig, parsed: list[Any]) -> list[str]:
    """Apply the (allowed) overrides to the saved config; returns the ones that changed it."""
    changed = []
    for override in parsed:
        key = override.key_or_group
        if key == "resume" or _is_hydra(key):
            continue
        if key == "trainer.max_epochs":
            value, saved = override.value(), config.trainer.max_epochs
            if not isinstance(value, int) or isinstance(value, bool) or value < saved:
                raise ResumeError(
                    f"cannot resume {run.root} with trainer.max_epochs={value!r}: the run was planned for {saved} "
                    f"epochs and a resume can only extend it (an integer >= {saved}). {_RESUME_FIX}."
                )
            plan = _per_step_plan(config)
            if value != saved and plan is not None:
                raise ResumeError(
                    f"cannot resume {run.root} with trainer.max_epochs={value}: {plan} is laid out over the "
                    f"{saved} planned epochs, so more epochs would change the steps already planned. "
                    f"{_RESUME_FIX}."
                )
        if override.is_delete():
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(config, parent) if parent else config
            if isinstance(node, DictConfig) and leaf in node:
                del node[leaf]
        else:
            OmegaConf.update(config, key, override.value(), merge=False, force_add=True)
        changed.append(override.input_line)
    return changed


def _relocated(value: Any, old: str, new: str) -> Any:
    """The config with every path inside the run's old location moved to its new one."""
    if isinstance(value, dict):
        return {key: _relocated(item, old, new) for key, item in value.items()}
    if isinstance(value, list):
        return [_relocated(item, old, new) for item in value]
    if isinstance(value, str) and (value == old or value.startswith(old + "/")):
        return new + value[len(old) :]
    return value


def resume(run_dir: str | Path, overrides: Sequence[str] = (), output_dir: str | Path | None = None) -> dict[str, Any]:
    """Continue the run in `run_dir` in place, so that the result equals an uninterrupted run's (CPU); output_dir:
    Hydra's, which must be the run directory. Raises ResumeError before anything changes."""
    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise ResumeError(
            f"cannot resume {run.root}: no such directory. Fix: pass a run directory that train.py wrote, "
            f"e.g. resume=logs/train/runs/<date>_<time>."
        )
    if not run.last_checkpoint.is_file():
        raise ResumeError(
            f"cannot resume {run.root}: it has no {run.last_checkpoint.relative_to(run.root)} (the run stopped before "
            f"its first checkpoint, or this is not a train.py run directory). Fix: start the run again "
            f"(python train.py <its overrides>), or pass another run directory."
        )
    try:
        saved = OmegaConf.load(run.config)
        if not isinstance(saved, DictConfig) or "trainer" not in saved or "paths" not in saved:
            raise ValueError("it is not a train.py run config")
    except (OSError, ValueError, OmegaConfBaseException) as exc:
        raise ResumeError(
            f"cannot resume {run.root}: its config {run.config} is missing or unreadable "
            f"({one_line(exc, 200)}). The run directory was left as it is. Fix: restore "
            f"config.yaml from a copy of the run (the checkpoint's hyper_parameters.run_config holds it too), "
            f"or start the run again."
        ) from exc
    if output_dir is not None and Path(output_dir).resolve() != run.root.resolve():
        raise ResumeError(
            f"cannot resume {run.root} into {output_dir}: a resume writes into the run it continues. Fix: run it "
            f"alone, python train.py resume={run.root} (not in a -m sweep, and without hydra.run.dir)."
        )
    position = training_position(run)
    config = OmegaConf.create(OmegaConf.to_container(saved))
    changed = _apply_overrides(run, config, _parse_overrides(run, overrides))
    previous = readable_metrics(run)
    if previous.get("status") == DIVERGED:
        raise ResumeError(
            f"cannot resume {run.root}: it diverged (see its metrics.json), and with its own settings it would diverge "
            f"again. Fix: start a new run with a lower learning rate (optim.lr=...)."
        )
    if previous.get("status") == COMPLETED and config.trainer.max_epochs <= saved.trainer.max_epochs:
        raise ResumeError(
            f"cannot resume {run.root}: it already completed its {saved.trainer.max_epochs} epochs. Fix: to train it "
            f"further, raise trainer.max_epochs (e.g. trainer.max_epochs={saved.trainer.max_epochs + 10})."
        )
    container = OmegaConf.to_container(config, resolve=True)
    old_root = str(container["paths"]["output_dir"])
    new_root = str(run.root.resolve())
    container = _relocated(container, old_root.rstrip("/"), new_root)
    container["paths"]["output_dir"] = new_root
    container["resume"] = new_root
    if container.get("hpo"):  # the study told its trial's outcome already: a resume reports to no study
        container["hpo"] = {key: None for key in container["hpo"]}
    logged = (run.root, run.last_checkpoint, *position.values(), f" with {', '.join(changed)}" if changed else "")
    log.info("resuming %s from %s (written in epoch %d, at step %d)%s", *logged)
    resumes = [*(previous.get("resumes") or []), {**position, "overrides": changed}]
    return fit_and_record(OmegaConf.create(container), RunDir(new_root), run.last_checkpoint, resumes)
