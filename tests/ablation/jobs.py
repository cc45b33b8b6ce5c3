"""Synthetic sweeps whose numbers are known: Hydra job directories as train.py writes them (.hydra/config.yaml,
config.yaml, metrics.json), for the ablation tests."""

import json
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from cifar_lightning.runs import METRICS_SCHEMA_VERSION

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Test accuracy of seeds 0, 1, 2 per configuration (fractions; multiples of 1/1000 so the
# confusion matrices reproduce them exactly).
ACCURACIES = {
    "base": [0.600, 0.610, 0.620],
    "improved": [0.660, 0.670, 0.665],
    "literal_improved": [0.640, 0.650, 0.645],
    "no_scheduler": [0.620, 0.625, 0.615],
    "no_l2": [0.615, 0.610, 0.620],
    "no_batchnorm": [0.605, 0.600, 0.610],
    "no_dropout": [0.625, 0.630, 0.620],
}


def confusion(accuracy: float) -> list[list[int]]:
    """1000 test images per class, `accuracy` of them right, the rest taken for the next class."""
    right = round(1000 * accuracy)
    matrix = np.zeros((10, 10), dtype=int)
    for true in range(10):
        matrix[true, true] = right
        matrix[true, (true + 1) % 10] = 1000 - right
    return matrix.tolist()


def history(epochs: int, accuracy: float) -> list[dict]:
    return [
        {
            "epoch": e,
            "train_loss": 2.0 / e,
            "train_acc": accuracy * e / epochs,
            "val_loss": 2.2 / e,
            "val_acc": accuracy * e / epochs - 0.01,
            "lr": 0.001,
        }
        for e in range(1, epochs + 1)
    ]


def hydra_config(name: str, seed: int, planned: int) -> str:
    """Hydra's own copy: plain name and seed, interpolations left unresolved."""
    return (
        f"seed: {seed}\nexperiment_name: ${{ablation.name}}\n"
        f"ablation:\n  name: {name}\n  seeds: {planned}\n"
        "paths:\n  output_dir: ${hydra:runtime.output_dir}\n"
    )


def write_job(
    sweep: Path, job: int, name: str, seed: int, accuracy: float | None, planned: int = 3, epochs: int = 4
) -> Path:
    """One Hydra job directory; accuracy None leaves it unfinished (no config.yaml, no metrics.json)."""
    job_dir = sweep / str(job)
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "config.yaml").write_text(hydra_config(name, seed, planned))
    (job_dir / ".hydra" / "overrides.yaml").write_text(f"- seed={seed}\n- ablation={name}\n")
    if accuracy is None:
        return job_dir
    resolved = {"seed": seed, "experiment_name": name, "ablation": {"name": name, "seeds": planned}}
    (job_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)))
    metrics = {
        "schema_version": METRICS_SCHEMA_VERSION,
        "status": "completed",
        "test_acc": accuracy,
        "test_loss": 1.0,
        "best_val_loss": 1.1,
        "best_epoch": epochs - 1,
        "epochs_run": epochs,
        "train_seconds": 60.0 + seed,
        "seed": seed,
        "ablation": name,
        "test_confusion": confusion(accuracy),
        "classes": CLASSES,
        "history": history(epochs, accuracy),
    }
    (job_dir / "metrics.json").write_text(json.dumps(metrics))
    return job_dir


def write_seed_sweep(sweep: Path, seed: int, names: list[str] | None = None) -> Path:
    """One sweep of `python train.py -m +ablation=all seed=<seed>`: every configuration (or `names`) at one seed."""
    for job, name in enumerate(names or ACCURACIES):
        write_job(sweep, job, name, seed, ACCURACIES[name][seed])
    return sweep
