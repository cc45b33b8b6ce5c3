"""The settings of predict.py, serve.py and export.py (conf/<entry>.yaml extends <entry>_schema), and of the OOD
runtime both predict and serve read as their `ood` node (conf/ood_runtime/default.yaml extends it, and both entry
configs take it from there)."""

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from cifar_lightning.config.ood import DETECTOR_LABELS, MEAN_ACTIVATION
from cifar_lightning.config.schema import Settings, preset
from cifar_lightning.config.types import Device, KeepHeap, TTALevel

#: Detectors an ood_detectors.pt may hold, by name.
SavedDetector = Literal[(*DETECTOR_LABELS, MEAN_ACTIVATION)]  # type: ignore[valid-type]
#: Largest image read, in pixels (width x height), checked from its header before decoding: a large phone photo.
MAX_PIXELS = 40_000_000
#: Seconds a request may wait in LitServe's queue before it answers 504 (LitServer's default).
REQUEST_TIMEOUT = 30.0


@preset("ood_runtime", "default_schema")
class OODRuntimeSettings(Settings):
    """predict.py's and serve.py's `ood` node: the detector that scores their images, saved or fitted now."""

    enabled: bool = Field(True, description="false, or ood=none: no OOD score or verdict")
    fit: bool = Field(False, description="fit the detector now on the run's training split instead of reading one")
    fit_images: int | None = Field(None, gt=0, description="with ood.fit: training images it learns from; null: all")
    file: str | None = Field(
        None, description="an ood_detectors.pt of evaluate.py; null: the newest one saved for this very checkpoint"
    )
    detector: SavedDetector | None = Field(
        None,
        description="which detector; not odin or rotpred (they score images); null: the file's default (chosen on "
        "the OOD sets' validation halves), or knn with ood.fit",
    )

    @field_validator("file")
    @classmethod
    def _one_source(cls, file: str | None, info: ValidationInfo) -> str | None:
        if file is not None and info.data.get("enabled") and info.data.get("fit"):
            raise ValueError(
                "ood.fit=true fits a detector now, so this saved one would go unused: give one of them "
                "(ood.file=null, or ood.fit=false)"
            )
        return file


class CheckpointSettings(Settings):
    ckpt: str | None = Field(None, description="a checkpoint file written by train.py")
    run_dir: str | None = Field(None, description="or a train.py run directory: its checkpoints/best.ckpt")


class ClassifySettings(CheckpointSettings):
    """What predict.py and serve.py share."""

    device: Device = "auto"
    tta: TTALevel = 0
    top_k: int = Field(3, ge=1, le=10, description="classes listed per image, most probable first, of 10")
    max_pixels: int = Field(MAX_PIXELS, gt=0, description="larger images are refused from their header, undecoded")
    seed: int = Field(0, ge=0, description="seeds the draw of ood.fit_images")
    calibration: bool = Field(
        True,
        description="divide the logits by the temperature evaluate.py fitted for this checkpoint (its "
        "calibration.json); false: raw softmax",
    )
    calibration_file: str | None = Field(
        None, description="a calibration.json of evaluate.py; null: the newest one saved for this very checkpoint"
    )
    ood: OODRuntimeSettings = OODRuntimeSettings()


@preset(None, "predict_schema")
class PredictSettings(ClassifySettings):
    """predict.py's own settings."""

    inputs: str | list[str] | None = Field(
        None,
        description="what to classify: files, folders, searched recursively, and quoted glob patterns",
        json_schema_extra={"must": "a file, a folder, a glob pattern or a list of them"},
    )
    batch_size: int = Field(256, gt=0, description="files decoded and predicted per batch")
    workers: int = Field(4, gt=0, description="threads decoding files; 1: decode in the main thread")
    progress: bool = Field(True, description="show a progress bar while predicting")
    keep_heap: KeepHeap = True


class GradcamLayer(Settings):
    layer: str | None = Field(None, description="the layer Grad-CAM weighs, by name; null: the model's last Conv2d")


@preset(None, "serve_schema")
class ServeSettings(ClassifySettings):
    """serve.py's own settings."""

    host: Literal["127.0.0.1", "0.0.0.0", "::"] = Field(
        "127.0.0.1", description="LitServe's choices: this machine only, every IPv4 or every IPv6 interface"
    )
    port: int = Field(8000, ge=1024, le=65535, description="the TCP port to listen on")
    max_batch_size: int = Field(32, gt=0, description="requests a worker runs in one forward pass; 1: no batching")
    batch_timeout: float = Field(0.01, ge=0, lt=REQUEST_TIMEOUT, description="seconds a worker waits for a batch")
    workers_per_device: int = Field(1, gt=0, description="inference processes per device, each with its own model")
    cpu_threads: int | None = Field(None, gt=0, description="torch threads per CPU worker; null: torch's default")
    max_upload_mb: float = Field(
        20, gt=0, allow_inf_nan=False, description="largest accepted request body, in megabytes; larger get 413"
    )
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = Field(
        "info", description="LitServe's and uvicorn's log level; info logs each request"
    )
    gradcam: GradcamLayer = GradcamLayer()


class ParityCheckSettings(Settings):
    images: int = Field(1000, gt=0, description="the first CIFAR-10 test images the exported file is checked on")
    batch_size: int = Field(256, gt=0, description="images per forward pass; the first image also runs alone")
    max_abs_diff: float = Field(1e-3, ge=0, description="largest |logit difference| from PyTorch allowed")
    min_agreement: float = Field(0.999, ge=0, le=1, description="smallest share of images with the same top-1 class")


@preset(None, "export_schema")
class ExportSettings(CheckpointSettings):
    """export.py's own settings."""

    format: Literal["onnx", "pt2"] = Field("onnx", description="onnx: model.onnx; pt2: model.pt2, torch.export's")
    opset: int = Field(20, ge=18, description="ONNX opset: torch's exporter writes 18 and up, 20 has Gelu")
    check: ParityCheckSettings = ParityCheckSettings()
