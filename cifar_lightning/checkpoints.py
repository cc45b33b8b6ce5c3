"""Read checkpoints written by train.py and rebuild their model, refusing anything else: loading is weights-only
(opening a checkpoint from elsewhere cannot run code), and the rebuilt model must match its weights exactly.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from torch import nn

from cifar_lightning.config.schema import problems as schema_problems
from cifar_lightning.errors import CifarLightningError, ConfigError, ResumeError, one_line
from cifar_lightning.ood_training import ROTATION_HEAD, attach_t2fnorm
from cifar_lightning.runs import RunDir

#: Packages a checkpoint's model `_target_` may come from: importing a module can run code, so a
#: tampered config must not name just any one.
TRUSTED_MODEL_PACKAGES = ("cifar_lightning.", "torchvision.models.")

_FIX_WRITTEN_BY_TRAIN = (
    "Fix: pass a checkpoint written by train.py, e.g. ckpt=logs/train/runs/<date>_<time>/checkpoints/best.ckpt, "
    "or its run directory as run_dir=logs/train/runs/<date>_<time>"
)


class CheckpointError(CifarLightningError):
    """A checkpoint is missing, unreadable, unsafe, or not one of ours."""


def _reason(exc: BaseException) -> str:
    """The exception's type and the first sentence of its message (torch's often run to a page)."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    first = first.split(". ")[0].rstrip(".")
    return f"{type(exc).__name__}: {first}" if first and first != type(exc).__name__ else type(exc).__name__


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a train.py checkpoint onto the CPU, weights only; CheckpointError for any file train.py did not write."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise CheckpointError(
            f"the checkpoint {path} is a folder, not a file. Fix: pass a train.py run directory as "
            f"run_dir={path}, or a checkpoint file such as ckpt={path / 'checkpoints' / 'best.ckpt'}."
        )
    if not path.is_file():
        raise CheckpointError(f"the checkpoint {path} does not exist. {_FIX_WRITTEN_BY_TRAIN}.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" not in str(exc).lower():
            raise CheckpointError(
                f"the checkpoint {path} is corrupt ({_reason(exc)}). Fix: copy it again from where it was "
                f"written, or train again; nothing was evaluated."
            ) from exc
        detail = _reason(exc.__context__) if exc.__context__ is not None else "objects beyond tensors"
        raise CheckpointError(
            f"{path} is not a safe checkpoint: it holds Python objects that could run code when loaded "
            f"(torch refused: {detail}), so it was not loaded. Fix: evaluate only checkpoints written by "
            f"train.py (checkpoints/best.ckpt or last.ckpt of a run directory); if this one is, it is damaged: "
            f"use another copy or train again."
        ) from exc
    except Exception as exc:  # torch reports damage as RuntimeError, EOFError, KeyError, ...: all mean the same
        raise CheckpointError(
            f"the checkpoint {path} is truncated or corrupt and could not be read ({_reason(exc)}). "
            f"Fix: copy it again from where it was written (an interrupted copy or a full "
            f"disk leaves a short file), or train again; nothing was evaluated."
        ) from exc
    check_is_ours(checkpoint, path)
    return checkpoint


def check_is_ours(checkpoint: Any, path: str | Path) -> None:
    """Refuse a loadable file that train.py did not write: it lacks the weights or the run config."""
    missing = []
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        missing.append("`state_dict` (the weights)")
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    run_config = hparams.get("run_config") if isinstance(hparams, dict) else None
    if not isinstance(run_config, dict) or not isinstance(run_config.get("model"), dict):
        missing.append("`hyper_parameters.run_config` with a `model` entry (the config that rebuilds the model)")
    if missing:
        raise CheckpointError(
            f"{path} is not a cifar-lightning checkpoint: it has no {' and no '.join(missing)}. "
            f"{_FIX_WRITTEN_BY_TRAIN}; checkpoints from other projects cannot be evaluated here."
        )


def run_config(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The resolved config of the run that wrote the checkpoint."""
    return checkpoint["hyper_parameters"]["run_config"]


def trained_epoch(checkpoint: dict[str, Any]) -> int | None:
    """The epoch (from 1) the checkpoint was written in or after, or None if it does not say: the fit loop's
    `started` count (Lightning's `epoch` is one short for a save inside fit, but not for one after it)."""
    try:
        started = checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["started"]
    except (KeyError, TypeError):
        started = None
    if isinstance(started, int) and started >= 1:
        return started
    epoch = checkpoint.get("epoch")
    return epoch + 1 if isinstance(epoch, int) else None


def training_position(run: RunDir) -> dict[str, Any]:
    """The last checkpoint's epoch (from 1) and global step, after checking it holds a full training state."""
    path = run.last_checkpoint
    fix = (
        f"The run directory was left as it is. Fix: resume from another copy of the run, or start it again "
        f"(python train.py <its overrides>; its settings are in {run.config})"
    )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch reports damage as RuntimeError, EOFError, UnpicklingError, ...
        raise ResumeError(
            f"cannot resume {run.root}: its last checkpoint {path} is truncated or corrupt "
            f"({type(exc).__name__}: {one_line(exc, 200)}). {fix}."
        ) from exc
    needed = ("state_dict", "optimizer_states", "loops", "epoch", "global_step")
    missing = [key for key in needed if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise ResumeError(
            f"cannot resume {run.root}: {path} is not a full training checkpoint of train.py "
            f"(it has no {', '.join(missing)}). {fix}."
        )
    return {"epoch": trained_epoch(checkpoint), "global_step": int(checkpoint["global_step"])}


def _checked_model_target(model_config: dict[str, Any], source: str) -> None:
    """Refuse a model config that would import or call something other than a trusted nn.Module class."""
    target = model_config.get("_target_")
    nested = [key for key, value in model_config.items() if key != "_target_" and "_target_" in str(value)]
    try:
        trusted = isinstance(target, str) and target.startswith(TRUSTED_MODEL_PACKAGES)
        found = get_class(target) if trusted else None
    except (ImportError, ValueError, AttributeError):
        found = None
    if not (isinstance(found, type) and issubclass(found, nn.Module)) or nested:
        raise CheckpointError(
            f"the checkpoint {source} names a model that is not allowed: `_target_: {target!r}`"
            f"{' with nested targets in ' + ', '.join(nested) if nested else ''} (it must be an nn.Module class "
            f"from {' or '.join(TRUSTED_MODEL_PACKAGES)}, with plain arguments), so it was not built: its run config "
            f"was probably edited. {_FIX_WRITTEN_BY_TRAIN}."
        )


def _weight_mismatch(expected: dict[str, torch.Tensor], given: dict[str, Any]) -> list[str]:
    """How the checkpoint's weights differ from the model's, one phrase per kind; [] if they fit."""

    def listed(keys: list[str]) -> str:
        return ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")

    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        f"{k} {tuple(getattr(given[k], 'shape', ()))} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in given and (not isinstance(given[k], torch.Tensor) or given[k].shape != expected[k].shape)
    ]
    kinds = {"missing from the checkpoint": missing, "not in the model": unexpected}
    kinds["shapes differ (checkpoint vs model)"] = shapes
    return [f"{kind}: {listed(keys)}" for kind, keys in kinds.items() if keys]


def build_model(checkpoint: dict[str, Any], source: str | Path = "given") -> nn.Module:
    """The checkpoint's model, rebuilt from its run config, weights loaded strictly, in eval mode (channels-last
    where the run trained so); source: where the checkpoint came from, for messages."""
    config = run_config(checkpoint)
    model_config = dict(config["model"])
    _checked_model_target(model_config, str(source))
    try:
        if found := schema_problems(model_config, "model"):  # its schema (cifar_lightning/config/model.py)
            raise ValueError(found[0][1])
        model = instantiate(model_config)  # an nn.Module: _checked_model_target allows nothing else
    except (InstantiationException, ValueError, TypeError) as exc:
        cause: BaseException = exc.__cause__ if isinstance(exc, InstantiationException) and exc.__cause__ else exc
        raise CheckpointError(
            f"the model of the checkpoint {source} cannot be rebuilt from its run config ({_reason(cause)}): "
            f"the config was probably edited. {_FIX_WRITTEN_BY_TRAIN}."
        ) from exc
    state = checkpoint["state_dict"].items()  # beside `model.`: a RotPred run's rotation head (ood_training.py)
    weights = {key.removeprefix("model."): value for key, value in state if not key.startswith(f"{ROTATION_HEAD}.")}
    problems = _weight_mismatch(model.state_dict(), weights)
    if problems:
        arguments = ", ".join(f"{k}={v!r}" for k, v in model_config.items() if k != "_target_")
        raise CheckpointError(
            f"the weights in the checkpoint {source} do not fit the model its run config describes "
            f"({model_config.get('_target_')} with {arguments or 'no arguments'}): {'; '.join(problems)}. "
            f"The checkpoint comes from another architecture or its config was edited. {_FIX_WRITTEN_BY_TRAIN}."
        )
    model.load_state_dict(weights, strict=True)
    attach_t2fnorm(model, (config.get("module") or {}).get("t2fnorm_tau"))
    if (config.get("module") or {}).get("channels_last", False):
        model = model.to(memory_format=torch.channels_last)
    return model.eval()


def normalization(checkpoint: dict[str, Any], source: str | Path = "given") -> dict[str, list[float]]:
    """The training split's per-channel mean and std saved by CIFAR10DataModule ({"mean": [...], "std": [...]})."""
    stats = checkpoint.get("CIFAR10DataModule")
    fine = isinstance(stats, dict) and all(
        isinstance(stats.get(key), (list, tuple))
        and len(stats[key]) == 3
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in stats[key])
        for key in ("mean", "std")
    )
    if not fine or not all(v > 0 for v in stats["std"]):
        raise CheckpointError(
            f"the checkpoint {source} holds no usable normalization statistics (`CIFAR10DataModule` with three "
            f"`mean` and three positive `std` values), so its images cannot be normalized as in training. "
            f"{_FIX_WRITTEN_BY_TRAIN}."
        )
    return {"mean": [float(v) for v in stats["mean"]], "std": [float(v) for v in stats["std"]]}


def chosen_checkpoint(ckpt: Any, run_dir: Any, script: str, more: str = "") -> Path:
    """`ckpt`, or the checkpoint `run_dir` keeps (exactly one of them); script and more: for the examples."""
    if (ckpt is None) == (run_dir is None):
        given = "both ckpt and run_dir were given" if ckpt is not None else "neither ckpt nor run_dir was given"
        raise ConfigError(
            f"{script} needs exactly one checkpoint, but {given}. Fix: pass a checkpoint file, python {script} "
            f"ckpt=logs/train/runs/<date>_<time>/checkpoints/best.ckpt{more}, or a train.py run directory, python "
            f"{script} run_dir=logs/train/runs/<date>_<time>{more} (its best.ckpt is used, or last.ckpt for a run "
            f"trained without a validation split)."
        )
    if ckpt is not None:
        return Path(str(ckpt)).expanduser()
    run = RunDir(str(run_dir))
    best = run.kept_checkpoint()
    if not best.is_file():
        problem = "does not exist" if not run.root.is_dir() else f"holds no {best.relative_to(run.root)}"
        raise CheckpointError(
            f"the run directory {run.root} {problem}. Fix: pass a directory that train.py wrote "
            f"(run_dir=logs/train/runs/<date>_<time>), or a checkpoint file directly with ckpt=<path>."
        )
    return best


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file (a checkpoint, an exported model), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
