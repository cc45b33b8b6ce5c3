"""The OOD results as tables: ood.md (a summary of every detector: mean AUROC and FPR@95 over the near and the far
OOD sets, as OpenOOD reports them, with its fit and scoring seconds; then detector x OOD set, one table per
metric), ood_layers.md (the report's Table 2: every activation layer a row) and the same tables for report.html."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cifar_lightning.ood.detection import SUMMARY_KINDS, SUMMARY_METRICS, OODResult
from cifar_lightning.ood.detectors import FITTED, IMAGE_DETECTORS
from cifar_lightning.report import Table
from cifar_lightning.tables import markdown_table

#: Metric key, heading, and whether higher is better.
METRICS = {
    "auroc": ("AUROC", True),
    "fpr95": ("FPR@95%TPR", False),
    "aupr_in": ("AUPR-IN", True),
    "aupr_out": ("AUPR-OUT", True),
    "detection_acc": ("Detection accuracy at the validation threshold", True),
}
DETECTOR_METRICS = ("auroc", "fpr95", "aupr_in", "aupr_out", "detection_acc")
LAYER_METRICS = ("detection_acc", "auroc", "fpr95")


def metric_table(result: OODResult, group: str, metric: str) -> Table:
    """Rows = detectors (or layers), columns = OOD sets and their mean; values in %."""
    rows_by_name = getattr(result, group)
    sets = list(result.sets)
    header = ["detector" if group == "detectors" else "layer"]
    header += [f"{name} ({result.sets[name]['kind']})" for name in sets] + ["mean"]
    if group == "layers":
        header.append("threshold (mean activation)")
    rows = []
    for name, per_set in rows_by_name.items():
        values = [100 * per_set[s][metric] for s in sets]
        row = [name, *(f"{v:.2f}" for v in values), f"{sum(values) / len(values):.2f}"]
        if group == "layers":
            threshold = result.thresholds["layers"][name]
            row.append(f"{-threshold if result.settings['direction'] == 'below' else threshold:.4g}")
        rows.append(row)
    heading, higher_better = METRICS[metric]
    return Table(f"{heading} (%, {'higher' if higher_better else 'lower'} is better)", header, rows)


def summary_table(result: OODResult) -> Table:
    """One row per detector: the mean AUROC and FPR@95 (%) over the near and over the far OOD sets (OpenOOD's
    summary; "-" where no set is of that kind), and the seconds of its fit and of its scoring."""
    means = result.kind_means()
    seconds = result.detector_seconds()
    header = ["detector"]
    header += [f"{kind} {METRICS[metric][0]}" for metric in SUMMARY_METRICS for kind in SUMMARY_KINDS]
    header += ["fit (s)", "scoring (s)"]
    rows = []
    for name in result.detectors:
        values = [f"{100 * means[name][kind][metric]:.2f}" if means[name][kind] is not None else "-"
                  for metric in SUMMARY_METRICS for kind in SUMMARY_KINDS]  # fmt: skip
        rows.append([name, *values, f"{seconds[name]['fit']:.2f}", f"{seconds[name]['score']:.2f}"])
    return Table("Summary: mean over the near and the far OOD sets (%), and seconds per detector", header, rows)


def detector_tables(result: OODResult) -> list[Table]:
    return [summary_table(result), *(metric_table(result, "detectors", metric) for metric in DETECTOR_METRICS)]


def layer_tables(result: OODResult) -> list[Table]:
    return [metric_table(result, "layers", metric) for metric in LAYER_METRICS]


def setup_note(result: OODResult) -> str:
    """One paragraph: what was fitted and thresholded on what, so the tables can be read alone."""
    counts, threshold = result.counts, result.settings["threshold"]
    if threshold["method"] == "percentile":
        rule = f"the value that keeps {threshold['id_keep']:.0%} of the validation images as in-distribution"
    else:
        rule = (f"the edge of the validation histogram ({threshold['bins']} bins, ignoring outer bins with under "
                f"{threshold['min_fraction']:.1%} of the images)")  # fmt: skip
    trained_on = (", held out of the detectors' fit but trained on: the run held out no validation split"
                  if result.settings.get("val_trained_on") else "")  # fmt: skip
    sets = "; ".join(f"{name}: {info['n']:,} images, {info['kind']}, from {info['source']}"
                     for name, info in result.sets.items())  # fmt: skip
    fitted = [f"knn (k={result.settings['knn_k']})" if name == "knn" else name for name in result.states
              if name in FITTED]  # fmt: skip
    fitted_text = (f"Fitted on the training split ({counts['fit']:,} images): {', '.join(fitted)}; the other "
                   f"detectors need no fit. ")  # fmt: skip
    left_out = "".join(f" {name} is left out: pytorch-ood could not fit it ({reason})." for name, reason in
                       result.left_out.items())  # fmt: skip
    images = [name for name in result.states if name in IMAGE_DETECTORS]
    image_text = (f" {', '.join(images)} perturbs every image through the whole network instead, so its scoring "
                  f"seconds include those passes." if images else "")  # fmt: skip
    return (
        f"In-distribution: the CIFAR-10 test set ({counts['id_test']:,} images). {fitted_text if fitted else ''}"
        f"Every threshold is chosen on the validation split alone ({counts['val']:,} images{trained_on}): {rule}. "
        f"The mean-activation method (the report's) calls an image OOD when a layer's mean activation is "
        f"{result.settings['direction']} its threshold. Detection accuracy is the mean of the share of "
        f"in-distribution test images kept and the share of OOD images caught at that threshold. FPR@95%TPR is the "
        f"share of OOD images accepted when 95% of the in-distribution test images are kept. The summary averages "
        f"over the sets of kind near and of kind far, as OpenOOD reports them; synthetic and custom sets are in the "
        f"per-set tables only. Seconds: fitting on the training features and scoring the validation, test and OOD "
        f"sets; extracting the features, once per set and shared by the detectors, took "
        f"{result.feature_seconds:.1f} s more.{image_text}{left_out} OOD sets: {sets}."
    )


def markdown(table: Table) -> str:
    return f"## {table.title}\n\n" + markdown_table(table.header, table.rows)


def write_markdown(path: Path, title: str, note: str, tables: Sequence[Table]) -> Path:
    path = Path(path)
    path.write_text(f"# {title}\n\n{note}\n\n" + "\n".join(markdown(table) for table in tables))
    return path


def write_tables(result: OODResult, out_dir: Path, subject: str) -> list[Path]:
    """ood.md and ood_layers.md in out_dir; `subject` names the model (e.g. its experiment and checkpoint)."""
    note = setup_note(result)
    return [
        write_markdown(Path(out_dir) / "ood.md", f"OOD detection: {subject}", note, detector_tables(result)),
        write_markdown(
            Path(out_dir) / "ood_layers.md", f"OOD detection by mean activation, per layer: {subject}",
            note + " The last column is each layer's threshold on the mean activation.", layer_tables(result),
        ),
    ]  # fmt: skip
