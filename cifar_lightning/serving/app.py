"""serve.py's server: the settings checked, the checkpoint, calibration and OOD detector loaded once, then
ClassifierAPI in LitServe's workers behind UploadGuard, the web page at GET /, and every HTTP error as JSON."""

from __future__ import annotations

import base64
import logging
import socket
from importlib import resources
from pathlib import Path
from typing import Any

import litserve as ls
import torch
from omegaconf import DictConfig, OmegaConf
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from cifar_lightning.calibration import Calibration, choose_calibration
from cifar_lightning.checkpoints import chosen_checkpoint
from cifar_lightning.config import check
from cifar_lightning.config.inference import REQUEST_TIMEOUT, ServeSettings
from cifar_lightning.errors import ConfigError
from cifar_lightning.gradcam import configured_layer, gradcam_pngs
from cifar_lightning.inference import Classifier, pick_device
from cifar_lightning.ood.runtime import choose_detector, classify, detector_record
from cifar_lightning.ood.saved import OODDetector
from cifar_lightning.serving.stopping import Stopping
from cifar_lightning.serving.upload_guard import MEGABYTE, PREDICT_PATH, ImageRequest, UploadGuard, decode_payload

log = logging.getLogger(__name__)


class ClassifierAPI(ls.LitAPI):
    """The model in a LitServe worker: checked images in; top-k classes (calibrated with `calibration`'s
    temperature when there is one), OOD verdict and Grad-CAM overlay out. It is pickled into each worker process
    (LitServe spawns them); setup() loads the checkpoint there."""

    def __init__(
        self,
        settings: ServeSettings,
        checkpoint: Path,
        layer: str,
        detector: OODDetector | None,
        calibration: Calibration | None = None,
    ) -> None:
        batching = {"max_batch_size": settings.max_batch_size, "batch_timeout": settings.batch_timeout}
        super().__init__(**batching, api_path=PREDICT_PATH)
        self.settings, self.checkpoint, self.layer, self.detector = settings, checkpoint, layer, detector
        self.calibration = calibration

    def setup(self, device: str) -> None:
        if self.settings.cpu_threads is not None and torch.device(device).type == "cpu":
            torch.set_num_threads(self.settings.cpu_threads)
        self.classifier = Classifier.load(self.checkpoint, device=torch.device(device), tta=self.settings.tta)
        if self.calibration is not None:
            self.classifier.temperature = self.calibration.temperature

    def decode_request(self, request):
        return decode_payload(request)

    def predict(self, x):
        """One ImageRequest (max_batch_size=1) or a list of them (dynamic batching): one answer each."""
        return self.answer(x) if isinstance(x, list) else self.answer([x])[0]

    def answer(self, requests: list[ImageRequest]) -> list[dict[str, Any]]:
        """Each answer says whether its probabilities are calibrated (and by which temperature) and records the
        size of the batch it was computed in (`batch_size`)."""
        images = torch.stack([request.pixels for request in requests])
        scaled = {
            "calibrated": self.calibration is not None,
            "temperature": None if self.calibration is None else self.calibration.temperature,
        }
        answers = []
        for answer in classify(self.classifier, images, self.detector, self.settings.top_k):
            best, batch = answer["top_k"][0], len(requests)
            best = {"class": best["class"], "probability": best["probability"]}
            answers.append({**best, **scaled, **answer, "batch_size": batch})
        wanted = [i for i, request in enumerate(requests) if request.gradcam]
        if wanted:
            targets = [answers[i]["top_k"][0]["index"] for i in wanted]
            pngs = gradcam_pngs(self.classifier.model, self.layer, images[wanted], self.classifier.normalize, targets)
            for i, png in zip(wanted, pngs):
                overlay = base64.b64encode(png).decode("ascii")
                answers[i]["gradcam"] = {"class": answers[i]["class"], "layer": self.layer, "png_base64": overlay}
        return answers

    def encode_response(self, output):
        return output


class WebPage:
    """ASGI middleware answering GET / with the web page, where LitServe answers "litserve running"."""

    def __init__(self, app: ASGIApp, page: str) -> None:
        self.app, self.page = app, page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/" and scope["method"] == "GET":
            await HTMLResponse(self.page)(scope, receive, send)
        else:
            await self.app(scope, receive, send)


async def _json_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Every HTTP error as {"error": ...}, like the uploads UploadGuard refuses."""
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


def check_port_free(host: str, port: int) -> None:
    """Refuse a port another program holds now, with a fix, rather than let uvicorn exit on it later."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port} ({exc.strerror}). Fix: stop the program using that port, or pass "
                f"another one, e.g. python serve.py port={port + 1}."
            ) from exc


def build_server(
    settings: ServeSettings,
    classifier: Classifier,
    layer: str,
    detector: OODDetector | None,
    calibration: Calibration | None = None,
) -> ls.LitServer:
    """ClassifierAPI at POST /predict behind UploadGuard, the web page at GET /, JSON errors."""
    checkpoint, max_upload_bytes = classifier.checkpoint_path, int(settings.max_upload_mb * MEGABYTE)
    metadata = {
        "checkpoint": str(checkpoint),
        "epoch": classifier.checkpoint_epoch,
        "classes": list(classifier.classes),
        "top_k": settings.top_k,
        "tta": settings.tta,
        "gradcam_layer": layer,
        "max_upload_bytes": max_upload_bytes,
        "max_pixels": settings.max_pixels,
        "max_batch_size": settings.max_batch_size,
        "batch_timeout": settings.batch_timeout,
        "cpu_threads": settings.cpu_threads,
        "calibrated": calibration is not None,
        "calibration": None if calibration is None else calibration.record(),
        "ood": detector_record(detector),
    }
    page = resources.files("cifar_lightning").joinpath("web", "index.html").read_text(encoding="utf-8")
    server = ls.LitServer(
        ClassifierAPI(settings, checkpoint, layer, detector, calibration),
        accelerator="cuda" if pick_device(settings.device).type == "cuda" else "cpu",
        devices="auto",
        workers_per_device=settings.workers_per_device,
        timeout=REQUEST_TIMEOUT,
        model_metadata=metadata,
        middlewares=[
            (UploadGuard, {"max_bytes": max_upload_bytes, "max_pixels": settings.max_pixels}),
            (WebPage, {"page": page}),
        ],
    )
    server.app.add_exception_handler(HTTPException, _json_error)
    return server


def serve(cfg: DictConfig) -> None:
    """Check the settings, load the checkpoint, the calibration and the OOD detector, then serve until
    interrupted."""
    check(cfg, "serve", "nothing was served", root=ServeSettings)
    own = {
        key: OmegaConf.to_object(cfg[key]) if OmegaConf.is_config(cfg[key]) else cfg[key]
        for key in ServeSettings.model_fields
    }
    settings = ServeSettings.model_validate(own)
    checkpoint = chosen_checkpoint(settings.ckpt, settings.run_dir, "serve.py")
    pick_device(settings.device)  # device=gpu without CUDA is refused here
    check_port_free(settings.host, settings.port)
    # The checkpoint is loaded here once to refuse a bad one before any worker starts, and to fit or check the
    # detector; the workers load their own copy. Only fitting needs the configured device.
    device = settings.device if settings.ood.enabled and settings.ood.fit else "cpu"
    classifier = Classifier.load(checkpoint, device=device, tta=settings.tta)
    layer = configured_layer(classifier.model, settings.gradcam.layer, "serve", "nothing was served")
    calibration = choose_calibration(
        settings.calibration, settings.calibration_file, checkpoint, cfg.paths.log_dir, "serve"
    )
    detector = choose_detector(cfg, classifier, "serve")
    server = build_server(settings, classifier, layer, detector, calibration)
    del classifier
    ood = "no OOD detector" if detector is None else f"OOD detector {detector.name} from {detector.source}"
    scaled = "uncalibrated" if calibration is None else f"calibrated, temperature {calibration.temperature:.4g}"
    log.info(
        f"serving {checkpoint} at http://{settings.host}:{settings.port}/ ({scaled}; {ood}; max_batch_size="
        f"{settings.max_batch_size}, batch_timeout={settings.batch_timeout:g} s)"
    )
    Stopping().install()
    server.run(host=settings.host, port=settings.port, log_level=settings.log_level, generate_client_file=False)
