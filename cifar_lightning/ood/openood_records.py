"""The records behind docs/results/ood_openood.md: what the page keeps of each evaluated seed (EvaluatedModel), or of a
model whose seeds' evaluation folders are gone (ModelBlock, its rows as last computed), in a JSON file without paths,
so that the page grows seed by seed (python -m cifar_lightning.ood.openood --records)."""

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cifar_lightning.errors import CifarLightningError, one_line


class OpenOODComparisonError(CifarLightningError):
    """An evaluation folder is missing, unreadable or has no OOD results."""


@dataclass(frozen=True)
class EvaluatedModel:
    """One seed of one model: what the page needs of an evaluate.py folder, and what the records file keeps of it."""

    experiment: str
    loss: str
    test_acc: float
    tta: int
    near_far: Mapping[str, Mapping[str, Mapping[str, float | None] | None]]  # detector -> near/far -> auroc/fpr95
    chosen: str | None  # the detector chosen on the validation halves; None in an ood.json from before the split
    label: str | None = None  # the user's name for it (--labels): seeds of one model share it
    seed: str = "0"
    train: tuple[str, ...] = ()  # the training run's overrides, less paths (seed= left out)
    evaluate: tuple[str, ...] = ()  # the evaluation's overrides, less paths
    source: str = ""  # where the figures came from when not from an evaluation folder
    folder: str = field(default="", compare=False)  # where it was read from (not kept in the records)

    @property
    def name(self) -> str:
        return self.label or f"{self.experiment}, {self.loss}"

    def record(self) -> dict[str, Any]:
        """Its entry in the records file: everything but the machine's paths."""
        return {key: value for key, value in asdict(self).items() if key != "folder"}


@dataclass(frozen=True)
class ModelBlock:
    """What the page shows of one model: its commands line, its rows of the models table, and its near/far cells
    per detector. Computed from its seeds, or carried in the records file as last computed when the seeds' figures
    are gone (`source` says so)."""

    name: str
    command: str
    rows: list[list[Any]]
    detectors: dict[str, list[str]]
    source: str = ""


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        what = "pass folders that evaluate.py wrote with OOD detection on (ood=none writes no ood.json)"
        raise OpenOODComparisonError(f"{path} does not exist: {what}, e.g. logs/evaluate/runs/<date>_<time>.") from None
    except (OSError, ValueError) as exc:
        raise OpenOODComparisonError(f"{path} cannot be read ({one_line(exc)}): run evaluate.py again.") from None


def seeds_of(models: Sequence[EvaluatedModel]) -> dict[str, list[EvaluatedModel]]:
    """Models by name, in first-seen order: the folders of one name are seeds of one model."""
    groups: dict[str, list[EvaluatedModel]] = {}
    for model in models:
        groups.setdefault(model.name, []).append(model)
    return groups


def load_records(path: Path) -> dict[str, list[EvaluatedModel] | ModelBlock]:
    """The records file's models by label, in page order; none when it does not exist yet."""
    if not path.exists():
        return {}
    records = read_json(path)
    try:
        models: dict[str, list[EvaluatedModel] | ModelBlock] = {}
        for entry in records["models"]:
            if "carried" in entry:
                models[entry["label"]] = ModelBlock(name=entry["label"], **entry["carried"])
            else:
                models[entry["label"]] = [
                    EvaluatedModel(**{**seed, "train": tuple(seed["train"]), "evaluate": tuple(seed["evaluate"])})
                    for seed in entry["seeds"]
                ]
    except (KeyError, TypeError) as exc:
        raise OpenOODComparisonError(
            f"{path} is not a records file this version reads ({one_line(exc)}): restore it from git."
        ) from None
    return models


def merge(
    records: dict[str, list[EvaluatedModel] | ModelBlock], models: Sequence[EvaluatedModel]
) -> dict[str, list[EvaluatedModel] | ModelBlock]:
    """The records with the new evaluations: a seed replaces the same seed of its model, and a model whose block was
    carried is replaced by its new seeds (figures without their seeds cannot be averaged with new ones)."""
    merged = dict(records)
    for name, seeds in seeds_of(models).items():
        earlier = merged.get(name)
        kept = [m for m in earlier if m.seed not in {s.seed for s in seeds}] if isinstance(earlier, list) else []
        merged[name] = sorted([*kept, *seeds], key=lambda m: int(m.seed) if m.seed.isdigit() else m.seed)
    return merged


def save_records(path: Path, models: dict[str, list[EvaluatedModel] | ModelBlock]) -> None:
    entries = [
        {"label": name, "carried": {k: v for k, v in asdict(value).items() if k != "name"}}
        if isinstance(value, ModelBlock)
        else {"label": name, "seeds": [model.record() for model in value]}
        for name, value in models.items()
    ]
    path.write_text(json.dumps({"page": RECORDS_ABOUT, "models": entries}, indent=1, ensure_ascii=False) + "\n")


RECORDS_ABOUT = (
    "The figures behind docs/results/ood_openood.md, per seed (or, where the seeds' evaluation folders are gone, the "
    "model's rows as last computed): python -m cifar_lightning.ood.openood --records <this file> rebuilds the page."
)
