"""OOD detection as a step of evaluate.py: ood.json, the figures, ood_detectors.pt, ood.md (a near/far summary, then
detector x OOD set per metric) and ood_layers.md (the report's Table 2: a row per activation layer)."""

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from cifar_lightning.config import check
from cifar_lightning.config.ood import OODConfig, OODSettings
from cifar_lightning.errors import ConfigError
from cifar_lightning.inference import Classifier
from cifar_lightning.ood.detection import SUMMARY_KINDS, SUMMARY_METRICS, OODResult, check_layers, detect_ood
from cifar_lightning.ood.detectors import FITTED, IMAGE_DETECTORS
from cifar_lightning.ood.figures import write_figures
from cifar_lightning.ood.saved import DETECTORS_FILE, save_detectors
from cifar_lightning.ood.sets import OODSet, prepare_sets
from cifar_lightning.report import SectionItem, Table
from cifar_lightning.tables import markdown_table

log = logging.getLogger(__name__)


def ood_settings(ood: DictConfig) -> OODConfig:
    """The `ood` node of evaluate.py's config, validated against its schema (ConfigError otherwise)."""
    node = OmegaConf.to_container(ood, resolve=True)
    check(OmegaConf.create({"ood": node}), "evaluate", "nothing was evaluated")
    return OODConfig.model_validate(node)


def check_model_layers(model: torch.nn.Module, settings: OODSettings) -> None:
    """Refuse layer names the model does not have (ood.mean_activation.layers / .layer) before any work."""
    try:
        check_layers(model, settings.mean_activation.layers, settings.mean_activation.layer)
    except ValueError as exc:
        fix = "Fix the value on the command line (python evaluate.py ood.mean_activation.layer=null) or use ood=none"
        raise ConfigError(f"invalid `ood.mean_activation` config: {exc}. {fix}; nothing was evaluated.") from exc


def load_ood_sets(cfg: DictConfig) -> list[OODSet]:
    """The configured OOD sets, loaded before anything is written (a missing standard set built first)."""
    return prepare_sets(OmegaConf.to_container(cfg.ood.sets, resolve=True), seed=cfg.seed, download=cfg.ood.download)


def run_ood(
    classifier: Classifier,
    *,
    output_dir: Path,
    subject: str,
    gallery_size: int = 8,
    seed: int = 0,
    val_trained_on: bool = False,
    **detect: Any,
) -> list[tuple[str, list[SectionItem]]]:
    """detect_ood(**detect), its files in output_dir, and the report's sections; subject names the model in tables,
    val_trained_on says the threshold images were trained on (the run held out no validation split)."""
    result = detect_ood(classifier, **detect)
    id_images, ood_sets = detect["id_images"], detect["ood_sets"]
    result.settings["val_trained_on"] = val_trained_on
    out = Path(output_dir)
    summary = result.to_json()
    summary.update(checkpoint=str(classifier.checkpoint_path), experiment=classifier.config.get("experiment_name"))
    (out / "ood.json").write_text(json.dumps(summary, indent=2) + "\n")
    if classifier.checkpoint_path is not None:
        save_detectors(out / DETECTORS_FILE, result, classifier.checkpoint_path)
    write_tables(result, out, subject)
    images = {"CIFAR-10 test": id_images, **{s.name: s.images for s in ood_sets}}
    histograms, score_histograms, galleries = write_figures(result, images, out, gallery_size, seed)
    for name, seconds in result.detector_seconds().items():
        log.info("OOD detector %s: fit %.2f s, scoring %.2f s", name, seconds["fit"], seconds["score"])
    near = result.kind_means("validation")[result.chosen]["near"]
    chosen = f"{result.chosen}" + (f" (near AUROC {near['auroc']:.4f} on the validation halves)" if near else "")
    counts = len(ood_sets), len(result.detectors), len(result.layers), result.seconds, chosen
    log.info("OOD: %d sets, %d detectors, %d layers in %.1f s; chosen on the validation halves: %s", *counts)
    by_layer = "Out-of-distribution detection by mean activation, per layer (the report's method)"
    sections: list[tuple[str, list[SectionItem]]] = [
        ("Out-of-distribution detection: detectors x OOD sets", [setup_note(result), *detector_tables(result)]),
        (by_layer, [*layer_tables(result), *histograms]),
    ]
    if score_histograms:
        sections.append(("Outlier scores of the featured detectors (ood.gallery_detectors)", [*score_histograms]))
    if galleries:
        sections.append(("Images detected as in-distribution and as OOD", [*galleries]))
    return sections


#: Metric key, heading, and whether higher is better.
METRICS = {
    "auroc": ("AUROC", True),
    "fpr95": ("FPR@95%TPR", False),
    "aupr_in": ("AUPR-IN", True),
    "aupr_out": ("AUPR-OUT", True),
    "detection_acc": ("Detection accuracy at the validation threshold", True),
}
DETECTOR_METRICS = tuple(METRICS)
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
    """Per detector: the mean AUROC and FPR@95 (%) over the near and far test halves ("-": none), the near AUROC on
    the validation halves that chose the default detector (marked), and its seconds."""
    means, chosen_on = result.kind_means(), result.kind_means("validation")
    seconds = result.detector_seconds()
    columns = [(metric, kind) for metric in SUMMARY_METRICS for kind in SUMMARY_KINDS]
    header = ["detector", *(f"{kind} {METRICS[metric][0]}" for metric, kind in columns)]
    header += ["validation near AUROC", "fit (s)", "scoring (s)"]

    def percent(value: dict[str, float] | None, metric: str) -> str:
        return "-" if value is None else f"{100 * value[metric]:.2f}"

    rows = []
    for name in result.detectors:
        label = f"{name} (chosen)" if name == result.chosen else name
        values = [percent(means[name][k], m) for m, k in columns]
        rows.append([label, *values, percent(chosen_on[name]["near"], "auroc")])
        rows[-1] += [f"{seconds[name]['fit']:.2f}", f"{seconds[name]['score']:.2f}"]
    title = "Summary: mean over the near and the far OOD test halves (%), and seconds per detector"
    return Table(title, header, rows)


def detector_tables(result: OODResult) -> list[Table]:
    return [summary_table(result), *(metric_table(result, "detectors", metric) for metric in DETECTOR_METRICS)]


def layer_tables(result: OODResult) -> list[Table]:
    return [metric_table(result, "layers", metric) for metric in LAYER_METRICS]


def setup_note(result: OODResult) -> str:
    """One paragraph: what was fitted and thresholded on what, so the tables can be read alone."""
    counts, threshold = result.counts, result.settings["threshold"]
    rule = f"the value that keeps {threshold['id_keep']:.0%} of the validation images as in-distribution"
    if threshold["method"] == "histogram":
        rule = f"the edge of the validation histogram ({threshold['bins']} bins, ignoring outer bins with under "
        rule += f"{threshold['min_fraction']:.1%} of the images)"
    trained_on = ", held out of the detectors' fit but trained on: the run held out no validation split"
    trained_on = trained_on if result.settings.get("val_trained_on") else ""
    sets = "; ".join(
        f"{name}: {s['n']:,} images ({s['n_test']:,} in its test part), {s['kind']}, from {s['source']}"
        for name, s in result.sets.items()
    )
    fitted = [f"knn (k={result.settings['knn_k']})" if n == "knn" else n for n in result.states if n in FITTED]
    fitted_text = f"Fitted on the training split ({counts['fit']:,} images): {', '.join(fitted)}; the other "
    fitted_text += "detectors need no fit. "
    left_out = "".join(f" {n} is left out: it could not be fitted ({why})." for n, why in result.left_out.items())
    images = ", ".join(name for name in result.states if name in IMAGE_DETECTORS)
    image_text = f" {images} perturbs every image through the whole network instead, so its scoring seconds "
    image_text = image_text + "include those passes." if images else ""
    return (
        f"Each OOD set is split once (seed {result.settings['split_seed']}) into a validation part "
        f"({result.settings['validation_share']:.0%}) and a test part: the tables report the test parts against "
        f"the CIFAR-10 test set; the validation parts, against the validation split, chose the default detector "
        f"({result.chosen}: the highest mean near-OOD AUROC there) and were used for nothing else. "
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
    path.write_text(f"# {title}\n\n{note}\n\n" + "\n".join(markdown(table) for table in tables))
    return path


def write_tables(result: OODResult, out_dir: Path, subject: str) -> list[Path]:
    """ood.md and ood_layers.md in out_dir; `subject` names the model (e.g. its experiment and checkpoint)."""
    note, out_dir = setup_note(result), Path(out_dir)
    by_layer = "OOD detection by mean activation, per layer"
    layer_note = note + " The last column is each layer's threshold on the mean activation."
    return [
        write_markdown(out_dir / "ood.md", f"OOD detection: {subject}", note, detector_tables(result)),
        write_markdown(out_dir / "ood_layers.md", f"{by_layer}: {subject}", layer_note, layer_tables(result)),
    ]
