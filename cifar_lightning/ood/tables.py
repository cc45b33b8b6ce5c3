"""The OOD results as tables: ood.md (detector x OOD set, one table per metric), ood_layers.md (the
report's Table 2: every activation layer a row) and the same tables for report.html."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cifar_lightning.ood.detection import OODResult
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


def detector_tables(result: OODResult) -> list[Table]:
    return [metric_table(result, "detectors", metric) for metric in DETECTOR_METRICS]


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
    return (
        f"In-distribution: the CIFAR-10 test set ({counts['id_test']:,} images). Mahalanobis, KNN (k="
        f"{result.settings['knn_k']}) and ViM are fitted on the training split ({counts['fit']:,} images). Every "
        f"threshold is chosen on the validation split alone ({counts['val']:,} images{trained_on}): {rule}. The "
        f"mean-activation "
        f"method (the report's) calls an image OOD when a layer's mean activation is {result.settings['direction']} "
        f"its threshold. Detection accuracy is the mean of the share of in-distribution test images kept and the "
        f"share of OOD images caught at that threshold. FPR@95%TPR is the share of OOD images accepted when 95% of "
        f"the in-distribution test images are kept. OOD sets: {sets}."
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
