"""hpo.md and its plots: what a study found, and the command that retrains its best trial. Written into the
sweep directory when a worker's sweep ends, and on demand (python -m cifar_lightning.hpo)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import optuna
from optuna.trial import FrozenTrial, TrialState

from cifar_lightning.errors import one_line
from cifar_lightning.hpo.study import OBJECTIVE, OVERRIDES, PRUNER, RUN_DIR, STATUS, STORAGE, TASK_OVERRIDES
from cifar_lightning.tables import markdown_table

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from optuna.visualization import matplotlib as optuna_plots  # noqa: E402

log = logging.getLogger(__name__)

REPORT_FILE = "hpo.md"
PLOTS: dict[str, Callable[[optuna.Study], Any]] = {
    "optimization_history.png": optuna_plots.plot_optimization_history,
    "intermediate_values.png": optuna_plots.plot_intermediate_values,  # the per-epoch curves the pruner saw
    "param_importances.png": optuna_plots.plot_param_importances,
    "slice.png": optuna_plots.plot_slice,
    "contour.png": optuna_plots.plot_contour,
}


def command(overrides: Sequence[str], trial: FrozenTrial) -> str:
    """The train.py command that trains a trial alone: the sweep's own overrides and the trial's values."""
    return " ".join(["python train.py", *overrides, *trial.user_attrs.get(OVERRIDES, [])])


def full_length(overrides: Sequence[str]) -> list[str]:
    """The sweep's overrides without a shortened trainer.max_epochs: the run trains its recipe's own epochs."""
    return [line for line in overrides if not line.startswith("trainer.max_epochs=")]


def draw_plots(study: optuna.Study, out_dir: Path) -> dict[str, str | None]:
    """Each plot's file name -> None when drawn, else why not (too few trials, a single parameter, ...)."""
    outcome: dict[str, str | None] = {}
    for name, plot in PLOTS.items():
        try:
            # Optuna's plots switch matplotlib's global style to ggplot: rc_context gives it back, so that
            # figures drawn later in this process keep their own colours.
            with warnings.catch_warnings(), matplotlib.rc_context():
                warnings.simplefilter("ignore")  # Optuna's ExperimentalWarning on every matplotlib plot
                axes = plot(study)
            figure = axes.flat[0].figure if hasattr(axes, "flat") else axes.figure
            figure.savefig(out_dir / name, dpi=110, bbox_inches="tight")
            plt.close(figure)
            outcome[name] = None
        except Exception as exc:  # Optuna refuses plots the study cannot support yet
            outcome[name] = one_line(exc, 200) or type(exc).__name__
            (out_dir / name).unlink(missing_ok=True)
            plt.close("all")
    return outcome


def format_value(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def trial_rows(study: optuna.Study, names: Sequence[str]) -> list[list[str]]:
    return [
        [
            str(trial.number),
            trial.user_attrs.get(STATUS) or trial.state.name.lower(),
            format_value(trial.value) if trial.state == TrialState.COMPLETE else "",
            str(len(trial.intermediate_values)),
            *(format_value(trial.params.get(name)) for name in names),
            "" if trial.duration is None else f"{trial.duration.total_seconds():.0f}",
        ]
        for trial in study.get_trials(deepcopy=False)
    ]


def render(study: optuna.Study, plots: dict[str, str | None]) -> str:
    attrs = study.user_attrs
    objective, direction = attrs.get(OBJECTIVE, "value"), study.direction.name.lower()
    trials = study.get_trials(deepcopy=False)
    names = sorted({name for trial in trials for name in trial.params})
    states = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
    lines = [
        f"# Hyperparameter search: study `{study.study_name}`",
        "",
        f"- storage: `{attrs.get(STORAGE)}`",
        f"- objective: {direction} `{objective}` (validation split; the test set takes no part in the search)",
        f"- pruner: `{(attrs.get(PRUNER) or {}).get('_target_', 'none')}`",
        f"- trials: {len(trials)} ({', '.join(f'{n} {s}' for s, n in states.items() if n)})",
        "",
    ]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        lines += [
            f"## Best trial: {best.number}, {objective} {best.value:.4f}",
            "",
            markdown_table(["parameter", "value"], [[k, format_value(v)] for k, v in best.params.items()]).rstrip(),
            "",
            f"Run directory: `{best.user_attrs.get(RUN_DIR)}`",
            "",
            "Retrain it alone, exactly as the trial ran:",
            "",
            f"    {command(attrs.get(TASK_OVERRIDES, []), best)}",
            "",
        ]
        task = attrs.get(TASK_OVERRIDES, [])
        if full_length(task) != task:
            lines += [
                "At full length (the study shortened training with trainer.max_epochs; this drops that override, so "
                "the run trains for its experiment's own number of epochs):",
                "",
                f"    {command(full_length(task), best)}",
                "",
            ]
    else:
        lines += ["No trial has completed yet.", ""]
    lines += [
        "## Trials",
        "",
        f"`{objective}`: the objective (blank for pruned or failed trials); epochs: epochs reported to the pruner.",
        "",
        markdown_table(["trial", "status", objective, "epochs", *names, "seconds"], trial_rows(study, names)).rstrip(),
        "",
        "## Plots",
        "",
    ]
    for name, why_not in plots.items():
        lines.append(f"![{name}]({name})" if why_not is None else f"- {name}: not drawn ({why_not})")
        lines.append("")
    return "\n".join(lines)


def write_report(study: optuna.Study, out_dir: str | Path) -> Path:
    """Write hpo.md and the plots into out_dir; returns hpo.md's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / REPORT_FILE
    path.write_text(render(study, draw_plots(study, out_dir)))
    log.info("study report: %s", path)
    return path
