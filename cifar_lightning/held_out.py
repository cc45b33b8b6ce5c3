"""The images evaluation sets OOD thresholds on: the run's own validation split, or for a run that held out none
(data.val_fraction=0) FALLBACK_VAL_FRACTION of its training images, which it was trained on (evaluation says so)."""

from collections.abc import Mapping
from typing import Any

FALLBACK_VAL_FRACTION = 0.02


def held_out_split(run_data: Mapping[str, Any] | None) -> tuple[dict[str, Any], bool]:
    """The (val_fraction, split_seed) a run's evaluation uses (the run's own, so that OOD detectors are fitted on its
    training split and thresholded on images it did not train on), and whether those images were trained on."""
    run_data = run_data if isinstance(run_data, Mapping) else {}
    split = {key: run_data[key] for key in ("val_fraction", "split_seed") if key in run_data}
    if split.get("val_fraction", 1) == 0:
        return {**split, "val_fraction": FALLBACK_VAL_FRACTION}, True
    return split, False
