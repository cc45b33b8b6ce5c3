"""The `ood` group (conf/ood/default.yaml extends it): OODSettings is what detection needs, OODConfig adds evaluate.py's
own keys. Hyperparameters: the papers' (or OpenOOD's) values for CIFAR-10."""

import typing
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from cifar_lightning.config.schema import Settings, preset

#: Detector names as configs spell them, and the pytorch-ood class behind each.
DETECTOR_LABELS = {
    "msp": "max softmax probability (MaxSoftmax)",
    "energy": "energy (EnergyBased)",
    "max_logit": "max logit (MaxLogit)",
    "entropy": "entropy (Entropy)",
    "gen": "generalized entropy (GEN)",
    "weighted_ebo": "weighted energy (WeightedEBO)",
    "kl_matching": "KL matching (KLMatching)",
    "mahalanobis": "Mahalanobis",
    "rmd": "relative Mahalanobis (RMD)",
    "knn": "KNN",
    "vim": "ViM",
    "she": "simplified Hopfield energy (SHE)",
    "nnguide": "nearest-neighbour guidance (NNGuide)",
    "fdbd": "decision boundary distance (fDBD)",
    "react": "rectified activations (ReAct)",
    "ash": "activation shaping (ASH)",
    "scale": "activation scaling (SCALE)",
    "dice": "sparsified head (DICE)",
    "gradnorm": "gradient norm (GradNorm)",
    "odin": "ODIN",
    "rotpred": "rotation prediction (RotPred's score; models trained with module.rotpred_weight > 0)",
}
#: Detectors that score images through the whole network, not the features the others share: ODIN a gradient step
#: and a second pass per image, RotPred four rotated passes (evaluate.py: ~1 minute each on 2 CPU cores).
IMAGE_DETECTORS = ("odin", "rotpred")
#: What evaluate.py measures unless told otherwise: the detectors that read the features extracted once per set.
#: The image detectors run when named (ood.detectors=[knn,odin]) or with ood.detectors=all.
DEFAULT_DETECTORS = [name for name in DETECTOR_LABELS if name not in IMAGE_DETECTORS]
#: ood.detectors=all: every detector.
ALL_DETECTORS = "all"
Direction = Literal["below", "above"]
DIRECTIONS = typing.get_args(Direction)
#: The report's method by name, beside the detectors (ood_detectors.pt, ood.gallery_detectors).
MEAN_ACTIVATION = "mean_activation"
DetectorName = Literal[tuple(DETECTOR_LABELS)]  # type: ignore[valid-type]
FeaturedName = Literal[(MEAN_ACTIVATION, *DETECTOR_LABELS)]  # type: ignore[valid-type]
Share = Annotated[float, Field(ge=0, lt=1)]
PositiveShare = Annotated[float, Field(gt=0, le=1)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Count = Annotated[int, Field(gt=0)]
WEIGHTS = "null or 10 numbers >= 0 (one per class, not all 0)"
Weights = Annotated[list[Annotated[float, Field(ge=0, allow_inf_nan=False)]], Field(min_length=10, max_length=10)]
LAYERS = {"must": "a list of layer names (or null)"}
SETS = "a mapping of set names to {path: ...} or {noise: gaussian|uniform, n: ...}"
NAMES = ", ".join(DETECTOR_LABELS)
Detectors = Annotated[
    list[DetectorName], Field(json_schema_extra={"must": f"{ALL_DETECTORS}, or a list of distinct names among {NAMES}"})
]
Featured = Annotated[
    list[FeaturedName], Field(json_schema_extra={"must": f"a list of names among {MEAN_ACTIVATION}, {NAMES}"})
]


class DetectorHyperparameters(Settings):
    """Every detector's hyperparameters (ood.json's settings list them in this order)."""

    knn_k: Count = Field(50, description="KNN: distance to the k-th nearest normalized training feature")
    vim_dim: int | None = Field(None, gt=0, description="ViM: principal subspace dimension; null = half the features")
    gen_gamma: Positive = Field(0.1, description="GEN: exponent of its generalized entropy")
    gen_m: int | None = Field(None, gt=0, description="GEN: top-M classes it reads; null = all")
    weighted_ebo_weights: Weights | None = Field(
        None, json_schema_extra={"must": WEIGHTS}, description="WeightedEBO: a weight per class; null = 1 each (energy)"
    )
    react_percentile: PositiveShare = Field(0.9, description="ReAct: clip at this percentile of training activations")
    ash_variant: Literal["ash-s", "ash-p", "ash-b"] = Field("ash-b", description="ASH: binarize, prune or rescale")
    ash_percentile: Share = Field(0.9, description="ASH: share of each image's penultimate activations pruned")
    scale_percentile: Share = Field(0.85, description="SCALE: share treated as pruned to compute its factor")
    dice_p: Share = Field(0.9, description="DICE: share of the head's weight contributions masked")
    nnguide_k: Count = Field(100, description="NNGuide: neighbours")
    nnguide_bank: PositiveShare = Field(0.01, description="NNGuide: share of the training features in its bank")
    gradnorm_temperature: Positive = Field(1.0, description="GradNorm: softmax temperature")
    odin_temperature: Positive = Field(1000.0, description="ODIN: softmax temperature")
    odin_eps: float = Field(0.0014, ge=0, allow_inf_nan=False, description="ODIN: input step on the [0, 1] scale")

    @model_validator(mode="after")
    def _some_weight(self):
        if self.weighted_ebo_weights is not None and not any(self.weighted_ebo_weights):
            raise ValueError(f"ood.weighted_ebo_weights must be {WEIGHTS}")
        return self


class ThresholdSettings(Settings):
    """How every threshold is chosen on the validation split alone."""

    method: Literal["percentile", "histogram"] = Field("percentile", description="keep id_keep, or a histogram edge")
    id_keep: PositiveShare = Field(0.95, description="percentile: share of validation images kept as ID")
    bins: Count = Field(50, description="histogram: bins of the validation scores")
    min_fraction: Share = Field(0.001, description="histogram: outer bins under this share are ignored")


class MeanActivationSettings(Settings):
    """The report's method: a layer's per-image mean activation, OOD when below (or above) a threshold."""

    layers: list[str] | None = Field(None, json_schema_extra=LAYERS, description="activation layers measured; null=all")
    layer: str | None = Field(None, description="the layer in the detectors' table and gallery; null = the last")
    direction: Direction = Field("below", description="where OOD lies")


class OODSettings(DetectorHyperparameters):
    """What detection needs: the detectors, their hyperparameters, the threshold rule, the report's method."""

    detectors: Detectors = Field(
        DEFAULT_DETECTORS,
        description=f"pytorch-ood's detectors measured; default: all but {', '.join(IMAGE_DETECTORS)}",
    )
    threshold: ThresholdSettings = ThresholdSettings()
    mean_activation: MeanActivationSettings = MeanActivationSettings()
    gallery_detectors: Featured = Field([MEAN_ACTIVATION, "knn"], description="detectors drawn in figures, if measured")
    validation_share: Annotated[float, Field(gt=0, lt=1)] = Field(
        0.5, description="share of each OOD set held out to choose on (ood/protocol.py); the tables report the rest"
    )
    split_seed: int = Field(0, ge=0, description="seeds the split of every OOD set into validation and test parts")

    @field_validator("detectors", mode="before")
    @classmethod
    def _all(cls, value):
        return list(DETECTOR_LABELS) if value == ALL_DETECTORS else value

    @model_validator(mode="after")
    def _distinct(self):
        if len(set(self.detectors)) != len(self.detectors):
            raise ValueError("ood.detectors lists a detector twice: list each once")
        return self


class OODSetSettings(Settings):
    """One OOD set: a file or folder (`path`), or seeded noise (`noise`, `n`)."""

    path: str | None = Field(None, description="an .npz with uint8 `images`, or a folder of images")
    fetch: Literal["cifar100", "mnist", "fashion_mnist"] | None = Field(None, description="builds a missing path")
    noise: Literal["gaussian", "uniform"] | None = Field(None, description="synthetic images instead of a path")
    n: int | None = Field(None, gt=0, description="noise images")
    kind: str | None = Field(None, description="near | far | synthetic | custom: the tables' column label")
    seed: int | None = Field(None, description="the noise's seed; null = the job's")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.path is None) == (self.noise is None):
            raise ValueError("give exactly one of `path` and `noise` (path=/data/my_set.npz, or noise=gaussian n=100)")
        if self.fetch is not None and not (self.path or "").endswith(".npz"):
            raise ValueError(f"fetch={self.fetch} needs the .npz path it writes, e.g. path=/data/{self.fetch}_test.npz")
        if self.noise is not None and self.n is None:
            raise ValueError("noise needs n, the number of images (e.g. n=10000)")
        return self


@preset("ood", "default_schema", key="ood")
class OODConfig(OODSettings):
    """evaluate.py's `ood` node: detection settings plus the sets, the fit subset and the figures."""

    enabled: bool = Field(True, description="false (or ood=none): no OOD detection")
    data_dir: str = Field("${data.data_dir}/ood", description="folder of the standard sets' .npz files")
    download: bool = Field(  # type: ignore[assignment]
        "${data.download}", description="build a missing standard set from torchvision, downloading its files"
    )
    sets: dict[str, OODSetSettings] = Field(
        {}, description="the OOD test sets by name", json_schema_extra={"must": SETS}
    )
    fit_images: int | None = Field(None, gt=0, description="training images the detectors learn from; null = all")
    gallery_size: int = Field(8, ge=0, description="images per half-row of each gallery; 0 = no galleries")

    @model_validator(mode="after")
    def _enough(self):
        if self.enabled and not self.sets:
            fix = "keep conf/ood/default.yaml's, add one with +ood.sets.mine.path=/data/my_set.npz, or use ood=none"
            raise ValueError(f"no OOD sets are configured (ood.sets is empty): {fix}")
        least = max(self.knn_k, self.nnguide_k, 10)
        if self.enabled and self.fit_images is not None and self.fit_images < least:
            rule = f"null or an integer >= max(knn_k, nnguide_k, 10) = {least}"
            raise ValueError(f"ood.fit_images must be {rule}, got {self.fit_images}")
        return self
