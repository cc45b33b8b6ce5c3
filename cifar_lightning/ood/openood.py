"""Our OOD figures (evaluate.py output folders) beside OpenOOD v1.5's published CIFAR-10 benchmark, as the page
docs/results/ood_openood.md: a table of models, then every detector's near/far AUROC beside OpenOOD's. Folders given
the same --labels are seeds of one model: their figures are the mean ± sample std over them. Every figure is on the
OOD sets' test halves; the detector each model would use is the one chosen on its validation halves."""

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifar_lightning.ablation.stats import mean_std
from cifar_lightning.errors import CifarLightningError, one_line
from cifar_lightning.ood.detection import SUMMARY_KINDS
from cifar_lightning.ood.openood_records import (
    EvaluatedModel,
    ModelBlock,
    OpenOODComparisonError,
    load_records,
    merge,
    read_json,
    save_records,
    seeds_of,
)
from cifar_lightning.ood.protocol import TestDataChoiceError
from cifar_lightning.runs import RunDir, run_overrides
from cifar_lightning.tables import markdown_table

SOURCE = "OpenOOD v1.5, results/cifar10.csv of github.com/Jingkang50/OpenOOD (Zhang et al., 2023, arXiv 2306.09301)"
OPENOOD_MODEL = "ResNet-18 trained 100 epochs with cross-entropy, 95.06 ± 0.30 % test accuracy, 3 training runs"


@dataclass(frozen=True)
class Published:
    """One OpenOOD v1.5 CIFAR-10 row: its method name and the mean ± std (%) AUROC over its near and far sets."""

    method: str
    near: float
    near_std: float
    far: float
    far_std: float

    def cell(self, kind: str) -> str:
        return f"{getattr(self, kind):.2f} ± {getattr(self, kind + '_std'):.2f}"


#: Our detector -> OpenOOD's row for the same post-hoc method (none for entropy, weighted_ebo, nnguide, the
#: report's mean activation); fDBD's row is one run (std 0.00).
PUBLISHED: dict[str, Published] = {
    "msp": Published("MSP", 88.03, 0.25, 90.73, 0.43),
    "energy": Published("EBO", 87.58, 0.46, 91.21, 0.92),
    "max_logit": Published("MLS", 87.52, 0.47, 91.10, 0.89),
    "gen": Published("GEN", 88.20, 0.30, 91.35, 0.69),
    "kl_matching": Published("KLM", 79.19, 0.80, 82.68, 0.21),
    "mahalanobis": Published("MDS", 84.20, 2.40, 89.72, 1.36),
    "rmd": Published("RMDS", 89.80, 0.28, 92.20, 0.21),
    "knn": Published("KNN", 90.64, 0.20, 92.96, 0.14),
    "vim": Published("VIM", 88.68, 0.28, 93.48, 0.24),
    "she": Published("SHE", 81.54, 0.51, 85.32, 1.43),
    "fdbd": Published("fDBD", 90.42, 0.00, 93.16, 0.00),
    "react": Published("ReAct", 87.11, 0.61, 90.42, 1.41),
    "ash": Published("ASH", 75.27, 1.04, 78.49, 2.58),
    "scale": Published("SCALE", 82.55, 0.36, 86.39, 1.86),
    "dice": Published("DICE", 78.34, 0.79, 84.23, 1.89),
    "gradnorm": Published("GradNorm", 54.90, 0.98, 57.55, 3.22),
    "odin": Published("ODIN", 82.87, 1.85, 87.96, 0.61),
}
#: Training-time method -> OpenOOD's row (scored with MSP), and that model's test accuracy (%).
PUBLISHED_TRAINING: dict[str, tuple[Published, float]] = {
    "logitnorm": (Published("LogitNorm + MSP", 92.33, 0.08, 96.74, 0.06), 94.30),
    "t2fnorm": (Published("T2FNorm + MSP on features / tau", 92.79, 0.13, 96.98, 0.23), 94.69),
    "rotpred": (Published("RotPred + its score", 92.68, 0.27, 96.62, 0.18), 95.35),
}
#: How our sets differ from OpenOOD's, for the page's note.
SET_DIFFERENCES = (
    "The sets differ, so the figures are comparable in kind, not to the decimal. Ours: near-OOD is the CIFAR-100 "
    "test set (10,000 images, all of it, including classes close to CIFAR-10's); far-OOD is the MNIST and "
    "Fashion-MNIST test sets (grayscale 28x28, resized to 32x32 with the channel repeated); Gaussian and uniform "
    "noise are measured too but in no mean. OpenOOD v1.5: near-OOD is CIFAR-100 and TinyImageNet, with the "
    "images of classes overlapping CIFAR-10 removed; far-OOD is MNIST, SVHN, Textures and Places365. Their "
    "thresholds and hyperparameters are tuned on separate OOD validation sets; ours use no OOD image of the "
    "test halves (fixed hyperparameters from the papers, thresholds on CIFAR-10 validation images, the detector chosen "
    "on the validation halves of our own sets), and our models are smaller and shorter-trained than OpenOOD's "
    "ResNet-18."
)


#: Overrides that say where, not what: left out of the commands the page cites.
WHERE_OVERRIDES = (
    "data.data_dir",
    "hydra.",
    "run_dir",
    "ckpt",
    "callbacks.progress_bar",
    "trainer.enable_progress_bar",
    "progress",
)


def _overrides(folder: Path) -> list[str]:
    """A Hydra run's command-line overrides (its .hydra/overrides.yaml), less those that name this machine's paths."""
    overrides = run_overrides(RunDir(folder)) or []
    return [o for o in overrides if not o.lstrip("+~").startswith(WHERE_OVERRIDES)]


def read_evaluation(folder: str | Path, label: str | None = None) -> EvaluatedModel:
    """One evaluate.py output folder: test accuracy (evaluation.json), near/far summary and the validation halves'
    choice (ood.json), and the commands of its training run and of itself."""
    folder = Path(folder)
    evaluation, ood = read_json(folder / "evaluation.json"), read_json(folder / "ood.json")
    if "near_far" not in ood or "test_acc" not in evaluation:
        raise OpenOODComparisonError(f"{folder} has no near/far summary or test accuracy: evaluate it again.")
    train = _overrides(RunDir.of_checkpoint(evaluation["checkpoint"]).root) if evaluation.get("checkpoint") else []
    return EvaluatedModel(
        experiment=evaluation.get("experiment") or "model",
        loss=evaluation.get("loss") or "cross_entropy",
        test_acc=float(evaluation["test_acc"]),
        tta=int(evaluation.get("tta", 0)),
        near_far=ood["near_far"],
        chosen=(ood.get("validation") or {}).get("chosen"),
        label=label,
        seed=next((o.removeprefix("seed=") for o in train if o.startswith("seed=")), "0"),
        train=tuple(o for o in train if not o.startswith("seed=")),
        evaluate=tuple(_overrides(folder)),
        folder=str(folder),
    )


def command(name: str, seeds: Sequence[EvaluatedModel]) -> str:
    """A model's training command (its seeds folded into one seed=... list) and its evaluation command, without
    paths (one per group of seeds where the seeds were evaluated differently)."""
    train = [*seeds[0].train, f"seed={','.join(model.seed for model in seeds)}"]
    by_command: dict[str, list[str]] = {}
    for model in seeds:
        evaluate = " ".join(["run_dir=<run>", "data.data_dir=../shared/data", *model.evaluate])
        by_command.setdefault(f"`python evaluate.py {evaluate}`", []).append(model.seed)
    evaluations = [
        command if len(by_command) == 1 else f"seed{'s' * (len(group) > 1)} {','.join(group)}: {command}"
        for command, group in by_command.items()
    ]
    return f"- {name}: `python train.py {' '.join(train)}`, then {'; '.join(evaluations)}"


def commands(models: Sequence[EvaluatedModel]) -> str:
    """The commands lines of the page, one per model."""
    return "".join(f"{block.command}\n" for block in blocks(models))


def _percent(values: Sequence[float | None]) -> str:
    """The mean ± sample std (%) of a model's seeds; '-' when any seed lacks the figure."""
    if not values or any(value is None for value in values):
        return "-"
    mean, std = mean_std([100 * value for value in values])
    return f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def _kind_value(model: EvaluatedModel, detector: str, kind: str, metric: str) -> float | None:
    means = model.near_far.get(detector, {}).get(kind)
    return None if means is None else means[metric]


def chosen_detector(model: EvaluatedModel) -> str:
    """The detector chosen on the model's validation halves; refused for an evaluation from before the split."""
    if model.chosen is None:
        raise TestDataChoiceError(
            f"{model.folder or model.name}/ood.json holds no validation halves (it comes from before the split "
            f"protocol), so a detector could only be chosen on the test sets, which would make the tables "
            f"optimistic. Fix: run python evaluate.py again on its checkpoint."
        )
    return model.chosen


def model_rows(name: str, seeds: Sequence[EvaluatedModel]) -> list[list[Any]]:
    """A model's rows of the models table (mean ± std over its seeds): MSP's, its training method's own
    detector's and the validation-chosen detector's near/far AUROC and FPR@95 (%) on the test halves."""
    metrics = [(metric, kind) for metric in ("auroc", "fpr95") for kind in SUMMARY_KINDS]
    chosen = [chosen_detector(model) for model in seeds]
    accuracy, tta = _percent([model.test_acc for model in seeds]), seeds[0].tta
    fixed = [d for d in ("msp", "rotpred") if all(_kind_value(m, d, "near", "auroc") is not None for m in seeds)]
    rows = []
    for detector in fixed:
        values = [_percent([_kind_value(m, detector, kind, metric) for m in seeds]) for metric, kind in metrics]
        rows.append([name, len(seeds), accuracy, tta, detector, *values])
    picks = ", ".join(f"{d} x{chosen.count(d)}" for d in dict.fromkeys(chosen))
    values = [_percent([_kind_value(m, c, kind, metric) for m, c in zip(seeds, chosen)]) for metric, kind in metrics]
    rows.append([name, len(seeds), accuracy, tta, f"chosen on validation ({picks})", *values])
    return rows


def block(name: str, seeds: Sequence[EvaluatedModel]) -> ModelBlock:
    """What the page shows of a model, from its seeds."""
    detectors = list(dict.fromkeys(detector for model in seeds for detector in model.near_far))
    cells = {
        detector: [_percent([_kind_value(m, detector, kind, "auroc") for m in seeds]) for kind in SUMMARY_KINDS]
        for detector in detectors
    }
    sources = "; ".join(f"seed {m.seed}: {m.source}" for m in seeds if m.source)
    return ModelBlock(name, command(name, seeds), model_rows(name, seeds), cells, sources)


def blocks(models: Sequence[EvaluatedModel]) -> list[ModelBlock]:
    return [block(name, seeds) for name, seeds in seeds_of(models).items()]


def models_table(models: Sequence[ModelBlock]) -> str:
    """Per model: test accuracy and its detectors' rows, then OpenOOD's training-time methods."""
    header = ["model", "seeds", "test acc. (%)", "TTA", "detector"]
    header += [f"{kind} {label}" for label in ("AUROC", "FPR@95") for kind in SUMMARY_KINDS]
    rows = [row for model in models for row in model.rows]
    for method, (published, accuracy) in PUBLISHED_TRAINING.items():
        cells = [published.cell("near"), published.cell("far"), "-", "-"]
        rows.append([f"OpenOOD: ResNet-18, {method}", 3, f"{accuracy:.2f}", "-", published.method, *cells])
    return markdown_table(header, rows)


def detectors_table(models: Sequence[ModelBlock]) -> str:
    """Per detector: each model's near and far mean AUROC (%, mean ± std over seeds) and OpenOOD's."""
    names = list(dict.fromkeys(detector for model in models for detector in model.detectors))
    header = ["detector"]
    for model in models:
        header += [f"{model.name}: near", f"{model.name}: far"]
    header += ["OpenOOD method", "OpenOOD near", "OpenOOD far"]
    rows = []
    for detector in names:
        row = [detector]
        for model in models:
            row += model.detectors.get(detector, ["-", "-"])
        published = PUBLISHED.get(detector)
        row += [published.method, published.cell("near"), published.cell("far")] if published else ["-"] * 3
        rows.append(row)
    return markdown_table(header, rows)


def render(models: Sequence[ModelBlock]) -> str:
    """The whole page: a note on what is compared, then the two tables."""
    sources = "".join(f"- {model.name}: {model.source}\n" for model in models if model.source)
    return (
        "# OOD detection beside OpenOOD v1.5 (CIFAR-10)\n\n"
        f"Published figures: {SOURCE}; their post-hoc rows score one model: {OPENOOD_MODEL}. Ours: near and far "
        "are the mean AUROC (and FPR@95%TPR) over the test halves of our sets of that kind, as OpenOOD averages over "
        f"its own; models with several seeds show the mean ± sample standard deviation over them. {SET_DIFFERENCES}"
        "\n\n"
        "Commands (each seed trained and evaluated on its own; the page is written by `python -m "
        "cifar_lightning.ood.openood <evaluation folders> --labels <a label per folder> --records "
        "docs/results/ood_openood.json --out docs/results/ood_openood.md`, not run by the tests: needs the "
        "evaluation folders of the runs below; tests/ood/test_openood.py runs it on made-up ones):\n\n"
        + "".join(f"{model.command}\n" for model in models)
        + (f"\nFigures not computed from evaluation folders at hand:\n\n{sources}" if sources else "")
        + "\n## Models\n\n"
        "MSP is OpenOOD's detector for LogitNorm and T2FNorm (on a T2FNorm model our MSP reads the features divided "
        "by tau, as OpenOOD's does), rotpred RotPred's own score. 'Chosen on validation' is, for each seed, the "
        "detector with the highest near-OOD AUROC on the validation halves of the OOD sets (how many seeds chose "
        "which in brackets), measured on the test halves it never saw.\n\n"
        f"{models_table(models)}\n"
        "## Detectors: near and far mean AUROC (%) beside OpenOOD's\n\n"
        "OpenOOD's figures are mean ± std over its three training runs; '-' where a method has no published row.\n\n"
        f"{detectors_table(models)}"
    )


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cifar_lightning.ood.openood",
        description="Put evaluate.py's OOD results beside OpenOOD v1.5's published CIFAR-10 figures.",
    )
    parser.add_argument("folders", nargs="*", metavar="EVAL_DIR", help="an evaluate.py output folder")
    parser.add_argument("--labels", nargs="+", metavar="LABEL", help="a name per EVAL_DIR (default: experiment, loss)")
    parser.add_argument(
        "--records",
        type=Path,
        help="a JSON file of earlier seeds' figures: read, joined by the EVAL_DIRs, written back",
    )
    parser.add_argument("--out", type=Path, help="write the page here as well (it is always printed)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    labels = args.labels or [None] * len(args.folders)
    if len(labels) != len(args.folders):
        cli.error(f"--labels names {len(labels)} models but {len(args.folders)} EVAL_DIRs: give one label per folder")
    if not args.folders and args.records is None:
        cli.error("nothing to show: give evaluate.py output folders (EVAL_DIR ...), a --records file, or both")
    try:
        models = [read_evaluation(folder, label) for folder, label in zip(args.folders, labels)]
        records = merge(load_records(args.records) if args.records else {}, models)
        page = render(
            [value if isinstance(value, ModelBlock) else block(name, value) for name, value in records.items()]
        )
        for path in (args.records, args.out):
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
        if args.records is not None:
            save_records(args.records, records)
        if args.out is not None:
            args.out.write_text(page)
    except OSError as exc:
        print(f"error: cannot write {exc.filename} ({one_line(exc)}): choose a writable path.", file=sys.stderr)
        return 2
    except CifarLightningError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    print(page, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
