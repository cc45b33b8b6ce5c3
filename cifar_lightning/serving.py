"""The serving job behind serve.py: a train.py checkpoint behind an HTTP API, with LitServe.

    POST /predict            an image (multipart form field `file`, or the raw file as the body)
                             -> JSON: top-k classes, the OOD verdict when a detector is loaded, and `batch_size`:
                             how many requests the worker ran in the same forward pass as this one (1 up to
                             max_batch_size), so that one can see dynamic batching at work and tune max_batch_size
                             and batch_timeout for the traffic it gets
    POST /predict?gradcam=1  the same, plus the Grad-CAM overlay of the top class as a base64 PNG
    GET  /                   a self-contained web page (cifar_lightning/web/index.html) for trying it
    GET  /info, /health      LitServe's: the model and server settings; 200 once the workers are ready

How a request travels. LitServe runs the model in inference worker processes fed by a queue; with
max_batch_size > 1 a worker gathers up to that many requests (waiting at most batch_timeout seconds) into one
forward pass. LitServe 0.2.19 decodes every request of a batch inside one try block, so a bad upload decoded
there would fail the whole batch, and it parses any body that is not a form as JSON. So uploads are checked
and decoded before they reach the queue, in `UploadGuard`, an ASGI middleware in the HTTP server process: it
enforces max_upload_mb (on Content-Length and while reading), takes the image from the form or the raw body,
decodes it with images.load_image (max_pixels, decompression bombs) and answers 4xx JSON `{"error": ...}`
itself. Only a valid 3 x 32 x 32 image, as JSON, goes on to the workers; a batch never holds a bad request.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import litserve as ls
import numpy as np
import torch
from omegaconf import DictConfig
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, QueryParams, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from torch import Tensor, nn

from cifar_lightning.augment import TTA_LEVELS, is_tta_level
from cifar_lightning.checkpoints import chosen_checkpoint
from cifar_lightning.errors import ConfigError, invalid_setting, is_int, is_number
from cifar_lightning.gradcam import gradcam_pngs, last_conv_layer, layer_names
from cifar_lightning.images import INPUT_SIZE, ImageError, load_image
from cifar_lightning.inference import DEVICES, Classifier, Predictions, pick_device
from cifar_lightning.ood.saved import NAMES as DETECTOR_NAMES
from cifar_lightning.ood.saved import OODDetector, find_detectors, fit_detector, load_detector

log = logging.getLogger(__name__)

PREDICT_PATH = "/predict"
#: Hosts LitServe binds to (LitServer.run refuses any other).
HOSTS = ("127.0.0.1", "0.0.0.0", "::")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
#: Seconds a request may wait in LitServe's queue before it answers 504 (LitServer's default).
REQUEST_TIMEOUT = 30.0
#: Query values of ?gradcam= read as yes and as no.
YES, NO = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")
#: Past max_upload_mb the rest of a body is still read (and dropped), so that clients that send the whole body
#: before reading the answer (browsers, httpx, requests) get the 413 instead of a reset connection; past this
#: many bytes in all the server stops reading and the connection is closed after the 413.
DRAIN_LIMIT = 1 << 30
MEGABYTE = 1_000_000


@dataclass(frozen=True)
class ServeSettings:
    """serve.py's checked settings (conf/serve.yaml)."""

    checkpoint: Path
    host: str
    port: int
    device: str  # auto | cpu | gpu
    tta: int
    top_k: int
    max_batch_size: int
    batch_timeout: float
    workers_per_device: int
    cpu_threads: int | None  # torch threads per CPU worker; None = torch's default
    max_upload_bytes: int
    max_pixels: int
    gradcam_layer: str | None
    log_level: str


@dataclass(frozen=True)
class OODChoice:
    """The checked ood.* settings: which detector to serve, and from where."""

    enabled: bool
    file: Path | None
    detector: str | None  # None = ood.saved.DEFAULT_DETECTOR
    fit: bool
    fit_images: int | None


def _invalid(key: str, problem: str, example: str) -> ConfigError:
    return invalid_setting("serve", "nothing was served", key, problem, example)


def check_settings(cfg: DictConfig) -> ServeSettings:
    """Refuse a bad serving setting before anything is loaded or bound."""
    if cfg.host not in HOSTS:
        raise _invalid("host", f"LitServe binds only to {', '.join(HOSTS)}, got {cfg.host!r} (127.0.0.1: this "
                       f"machine only; 0.0.0.0 or ::: every network interface)", "host=0.0.0.0")  # fmt: skip
    if not is_int(cfg.port, 1024) or cfg.port > 65535:
        raise _invalid("port", f"must be an integer from 1024 to 65535, got {cfg.port!r}", "port=8000")
    if cfg.device not in DEVICES:
        raise _invalid("device", f"must be one of {', '.join(DEVICES)}, got {cfg.device!r}", "device=auto")
    pick_device(cfg.device)  # device=gpu without CUDA is refused here
    if not is_tta_level(cfg.tta):
        raise _invalid("tta", f"must be one of {', '.join(map(str, TTA_LEVELS))}, got {cfg.tta!r}", "tta=1")
    if not is_int(cfg.top_k, 1) or cfg.top_k > 10:
        raise _invalid("top_k", f"must be an integer from 1 to 10 (CIFAR-10's classes), got {cfg.top_k!r}", "top_k=3")
    if not is_int(cfg.max_batch_size, 1):
        raise _invalid("max_batch_size", f"must be a positive integer (1 = no batching), got {cfg.max_batch_size!r}",
                       "max_batch_size=32")  # fmt: skip
    if not is_number(cfg.batch_timeout, finite=True) or not 0 <= cfg.batch_timeout < REQUEST_TIMEOUT:
        raise _invalid("batch_timeout", f"must be a number of seconds >= 0 and < {REQUEST_TIMEOUT:g} (the request "
                       f"timeout), got {cfg.batch_timeout!r}", "batch_timeout=0.01")  # fmt: skip
    if not is_int(cfg.workers_per_device, 1):
        raise _invalid("workers_per_device", f"must be a positive integer, got {cfg.workers_per_device!r}",
                       "workers_per_device=1")  # fmt: skip
    if cfg.cpu_threads is not None and not is_int(cfg.cpu_threads, 1):
        raise _invalid("cpu_threads", f"must be a positive integer or null (torch's default), got {cfg.cpu_threads!r}",
                       "cpu_threads=1")  # fmt: skip
    if not is_number(cfg.max_upload_mb, finite=True) or cfg.max_upload_mb <= 0:
        raise _invalid("max_upload_mb", f"must be a positive number of megabytes, got {cfg.max_upload_mb!r}",
                       "max_upload_mb=20")  # fmt: skip
    if not is_int(cfg.max_pixels, 1):
        raise _invalid("max_pixels", f"must be a positive integer, got {cfg.max_pixels!r}", "max_pixels=40000000")
    if cfg.gradcam.layer is not None and not isinstance(cfg.gradcam.layer, str):
        raise _invalid("gradcam.layer", f"must be a layer name or null, got {cfg.gradcam.layer!r}",
                       "gradcam.layer=conv3")  # fmt: skip
    if cfg.log_level not in LOG_LEVELS:
        raise _invalid("log_level", f"must be one of {', '.join(LOG_LEVELS)}, got {cfg.log_level!r}",
                       "log_level=warning")  # fmt: skip
    return ServeSettings(
        checkpoint=chosen_checkpoint(cfg.get("ckpt"), cfg.get("run_dir"), "serve.py"),
        host=cfg.host, port=cfg.port, device=cfg.device, tta=cfg.tta,
        top_k=cfg.top_k, max_batch_size=cfg.max_batch_size, batch_timeout=float(cfg.batch_timeout),
        workers_per_device=cfg.workers_per_device, cpu_threads=cfg.cpu_threads,
        max_upload_bytes=int(cfg.max_upload_mb * MEGABYTE),
        max_pixels=cfg.max_pixels, gradcam_layer=cfg.gradcam.layer, log_level=cfg.log_level,
    )  # fmt: skip


def check_ood_settings(ood: DictConfig) -> OODChoice:
    for key in ("enabled", "fit"):
        if not isinstance(ood[key], bool):
            raise _invalid(f"ood.{key}", f"must be true or false, got {ood[key]!r}", f"ood.{key}=true")
    if ood.fit and ood.file is not None:
        raise _invalid("ood", f"ood.fit=true fits a detector now, ood.file={ood.file} loads a saved one: give one "
                       f"of them", "ood.file=null ood.fit=true")  # fmt: skip
    if ood.fit_images is not None and not is_int(ood.fit_images, 1):
        raise _invalid("ood.fit_images", f"must be a positive integer or null (all), got {ood.fit_images!r}",
                       "ood.fit_images=5000")  # fmt: skip
    if ood.detector is not None and ood.detector not in DETECTOR_NAMES:
        raise _invalid("ood.detector", f"must be one of {', '.join(DETECTOR_NAMES)} or null (knn), got "
                       f"{ood.detector!r}", "ood.detector=knn")  # fmt: skip
    return OODChoice(enabled=ood.enabled, file=None if ood.file is None else Path(str(ood.file)).expanduser(),
                     detector=ood.detector, fit=ood.fit, fit_images=ood.fit_images)  # fmt: skip


def choose_detector(choice: OODChoice, classifier: Classifier, log_dir: str | Path, data: DictConfig,
                    seed: int) -> OODDetector | None:  # fmt: skip
    """The OOD detector to serve: fitted now (ood.fit), loaded from ood.file, or the newest one evaluate.py saved
    for this very checkpoint under log_dir; None with ood.enabled=false or when there is none."""
    if not choice.enabled:
        return None
    if choice.fit:
        log.info("fitting an OOD detector on the run's training split (ood.fit=true)...")
        return fit_detector(classifier, data.data_dir, choice.detector, download=data.download,
                            fit_images=choice.fit_images, seed=seed)  # fmt: skip
    path = choice.file or find_detectors(classifier, log_dir)
    if path is None:
        log.warning(
            f"no saved OOD detector for {classifier.checkpoint_path} under {Path(log_dir) / 'evaluate' / 'runs'}: "
            f"serving without OOD verdicts. Fix: run python evaluate.py ckpt={classifier.checkpoint_path} first "
            f"(it saves them), or pass ood.file=<ood_detectors.pt> or ood.fit=true."
        )
        return None
    return load_detector(path, classifier, choice.detector)


def gradcam_layer(model: nn.Module, name: str | None) -> str:
    """The layer Grad-CAM explains: the one named, or the model's last Conv2d."""
    if name is None:
        return last_conv_layer(model)
    if name not in layer_names(model):
        layers = ", ".join(layer_names(model))
        raise _invalid("gradcam.layer", f"the model has no layer {name!r} (its layers: {layers})",
                       "gradcam.layer=conv3, or gradcam.layer=null for the last conv layer")  # fmt: skip
    return name


def check_port_free(host: str, port: int) -> None:
    """Refuse a port another program holds now, with a fix, rather than let uvicorn exit on it later."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror}). Fix: stop the program using that "
                              f"port, or pass another one, e.g. python serve.py port={port + 1}.") from exc  # fmt: skip


@dataclass(frozen=True)
class ImageRequest:
    """One checked upload as a worker gets it."""

    pixels: Tensor  # uint8 (3, 32, 32), the model's input
    gradcam: bool  # whether the Grad-CAM overlay of the top class was asked for


def encode_payload(pixels: Tensor, gradcam: bool) -> bytes:
    """The JSON body UploadGuard hands on to LitServe for a checked upload (3 KB, whatever the upload's size)."""
    return json.dumps({"pixels": base64.b64encode(pixels.numpy().tobytes()).decode("ascii"),
                       "gradcam": gradcam}).encode()  # fmt: skip


def decode_payload(payload: dict[str, Any]) -> ImageRequest:
    """encode_payload's inverse, in the worker."""
    pixels = np.frombuffer(base64.b64decode(payload["pixels"]), dtype=np.uint8)
    return ImageRequest(torch.from_numpy(pixels.copy()).view(3, INPUT_SIZE, INPUT_SIZE), bool(payload["gradcam"]))


class UploadRefused(Exception):
    """An upload answered with a 4xx before it reaches the model."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class UploadGuard:
    """ASGI middleware in front of POST /predict: size limit, form or raw body, image decoding; 4xx JSON for a
    bad upload, a checked 32 x 32 image (encode_payload) handed on to LitServe for a good one."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_pixels: int, path: str = PREDICT_PATH) -> None:
        self.app, self.max_bytes, self.max_pixels, self.path = app, max_bytes, max_pixels, path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        try:
            gradcam = self._gradcam_flag(scope)
            body = await self._read_body(scope, receive)
            upload = await self._image_bytes(scope, body)
            pixels = await run_in_threadpool(load_image, upload, self.max_pixels)
        except UploadRefused as exc:
            await JSONResponse({"error": str(exc)}, status_code=exc.status)(scope, receive, send)
            return
        except ImageError as exc:
            message = (f"the upload is not a usable image: {exc}. Send one image file (PNG, JPEG, WebP, BMP, GIF, "
                       f"TIFF, ...) of at most {self.max_pixels:,} pixels.")  # fmt: skip
            await JSONResponse({"error": message}, status_code=400)(scope, receive, send)
            return
        payload = encode_payload(pixels, gradcam)
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:  # the body was handed on: what is left is the client's disconnect
                return await receive()
            sent = True
            return {"type": "http.request", "body": payload, "more_body": False}

        await self.app({**scope, "headers": headers}, replay, send)

    @staticmethod
    def _gradcam_flag(scope: Scope) -> bool:
        value = QueryParams(scope.get("query_string", b"")).get("gradcam", "0").lower()
        if value not in YES + NO:
            raise UploadRefused(400, f"gradcam={value!r} is neither yes nor no. Pass ?gradcam=1 for the Grad-CAM "
                                     f"overlay of the top class, or leave it out.")  # fmt: skip
        return value in YES

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        """The whole body, refused with 413 once it is over max_bytes (declared or actual)."""
        limit = f"{self.max_bytes / MEGABYTE:g} MB (max_upload_mb)"
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise UploadRefused(400, f"the Content-Length header {declared!r} is not a number of bytes")
            if int(declared) > self.max_bytes:
                await self._drain(receive, 0)
                raise UploadRefused(413, f"the upload is {int(declared):,} bytes, over the server's limit of "
                                         f"{limit}. Send a smaller image file.")  # fmt: skip
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise UploadRefused(400, "the client disconnected before the whole upload arrived")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                if message.get("more_body", False):
                    await self._drain(receive, size)
                raise UploadRefused(413, f"the upload is over the server's limit of {limit}. Send a smaller image "
                                         f"file.")  # fmt: skip
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    @staticmethod
    async def _drain(receive: Receive, size: int) -> None:
        """Read and drop the rest of a refused body (up to DRAIN_LIMIT bytes in all)."""
        while size <= DRAIN_LIMIT:
            message = await receive()
            size += len(message.get("body", b""))
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                return

    @staticmethod
    async def _image_bytes(scope: Scope, body: bytes) -> bytes:
        """The image file: the form's `file` field for multipart/form-data, else the body itself."""
        if not Headers(scope=scope).get("content-type", "").lower().startswith("multipart/form-data"):
            return body

        async def whole_body() -> Message:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            async with Request(scope, whole_body).form(max_files=1, max_fields=16) as form:
                upload = form.get("file")
                if not isinstance(upload, UploadFile):
                    fields = ", ".join(form.keys()) or "none"
                    raise UploadRefused(400, f"the form has no file field named `file` (its fields: {fields}). Send "
                                             f"the image as the form field `file`, or as the raw body.")  # fmt: skip
                return await upload.read()
        except (MultiPartException, StarletteHTTPException) as exc:
            detail = exc.message if isinstance(exc, MultiPartException) else exc.detail
            raise UploadRefused(400, f"the multipart form cannot be read ({detail}). Send the image as the form "
                                     f"field `file`, or as the raw body.") from exc  # fmt: skip


class ClassifierAPI(ls.LitAPI):
    """The model in a LitServe worker: checked images in, top-k classes, OOD verdict and Grad-CAM overlay out.

    Everything here is pickled into each worker process (LitServe spawns them); setup() loads the checkpoint there.
    """

    def __init__(self, checkpoint: Path, tta: int, top_k: int, layer: str, detector: OODDetector | None,
                 max_batch_size: int, batch_timeout: float, cpu_threads: int | None = None) -> None:  # fmt: skip
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=PREDICT_PATH)
        self.checkpoint, self.tta, self.top_k, self.layer, self.detector = checkpoint, tta, top_k, layer, detector
        self.cpu_threads = cpu_threads

    def setup(self, device: str) -> None:
        if self.cpu_threads is not None and torch.device(device).type == "cpu":
            torch.set_num_threads(self.cpu_threads)
        self.classifier = Classifier.load(self.checkpoint, device=torch.device(device), tta=self.tta)

    def decode_request(self, request):
        return decode_payload(request)

    def predict(self, x):
        """One ImageRequest (max_batch_size=1) or a list of them (dynamic batching): one answer each, which
        records the size of the batch it was computed in (`batch_size`)."""
        return self.answer(x) if isinstance(x, list) else self.answer([x])[0]

    def answer(self, requests: list[ImageRequest]) -> list[dict[str, Any]]:
        images = torch.stack([request.pixels for request in requests])
        ood: list[dict[str, Any] | None] = [None] * len(requests)
        if self.detector is None:
            predictions = self.classifier.predict(images)
        else:
            features = self.classifier.features(images, layers=list(self.detector.layers))
            predictions = (Predictions(features.logits, features.logits.softmax(dim=1)) if self.tta == 0
                           else self.classifier.predict(images))  # one forward pass without TTA  # fmt: skip
            scores = self.detector.score(features)
            flags = self.detector.is_ood(scores)
            ood = [{"detector": self.detector.name, "score": float(score), "threshold": float(self.detector.threshold),
                    "is_ood": bool(flag), "verdict": "out-of-distribution" if flag else "in-distribution"}
                   for score, flag in zip(scores, flags)]  # fmt: skip
        probabilities, indices = predictions.top_k(self.top_k)
        answers = [{"class": self.classifier.classes[int(top[0])], "probability": float(probs[0]),
                    "top_k": [{"class": self.classifier.classes[int(i)], "index": int(i), "probability": float(p)}
                              for p, i in zip(probs, top)],
                    "ood": verdict, "batch_size": len(requests)}
                   for probs, top, verdict in zip(probabilities, indices, ood)]  # fmt: skip
        wanted = [i for i, request in enumerate(requests) if request.gradcam]
        if wanted:
            targets = [int(indices[i, 0]) for i in wanted]
            pngs = gradcam_pngs(self.classifier.model, self.layer, images[wanted], self.classifier.normalize, targets)
            for i, png in zip(wanted, pngs):
                answers[i]["gradcam"] = {"class": answers[i]["class"], "layer": self.layer,
                                         "png_base64": base64.b64encode(png).decode("ascii")}  # fmt: skip
        return answers

    def encode_response(self, output):
        return output


class _Stopping:
    """Ctrl+C and SIGTERM (kill, docker stop, systemd) both stop the server the way LitServe handles Ctrl+C: a
    KeyboardInterrupt in the main process, after which LitServe stops its workers.

    The HTTP server processes LitServe forks inherit these handlers; there they end the process by the signal's
    default action. And LitServe 0.2.19's worker monitor thread polls the manager process that LitServe's own
    shutdown closes, logging the resulting connection error as "Monitoring worker crashed" with a traceback; once
    a stop has begun, that one record is dropped."""

    def __init__(self) -> None:
        self.main_pid, self.begun = os.getpid(), threading.Event()

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self.handle)
        logging.getLogger("litserve.server").addFilter(self.keep)

    def handle(self, signum: int, frame: object) -> None:
        if os.getpid() != self.main_pid:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        self.begun.set()
        raise KeyboardInterrupt

    def keep(self, record: logging.LogRecord) -> bool:
        return not (self.begun.is_set() and record.getMessage() == "Monitoring worker crashed")


async def _json_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Every HTTP error as {"error": ...}, like the uploads UploadGuard refuses."""
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


def web_page() -> str:
    return resources.files("cifar_lightning").joinpath("web", "index.html").read_text(encoding="utf-8")


def build_server(settings: ServeSettings, classifier: Classifier, layer: str,
                 detector: OODDetector | None) -> ls.LitServer:  # fmt: skip
    """The LitServer: ClassifierAPI at POST /predict behind UploadGuard, the web page at GET /, JSON errors."""
    api = ClassifierAPI(settings.checkpoint, settings.tta, settings.top_k, layer, detector, settings.max_batch_size,
                        settings.batch_timeout, settings.cpu_threads)  # fmt: skip
    accelerator = "cuda" if pick_device(settings.device).type == "cuda" else "cpu"
    metadata = {
        "checkpoint": str(settings.checkpoint), "epoch": classifier.checkpoint_epoch,
        "classes": list(classifier.classes), "top_k": settings.top_k, "tta": settings.tta, "gradcam_layer": layer,
        "max_upload_bytes": settings.max_upload_bytes, "max_pixels": settings.max_pixels,
        "max_batch_size": settings.max_batch_size, "batch_timeout": settings.batch_timeout,
        "cpu_threads": settings.cpu_threads,
        "ood": None if detector is None else {"detector": detector.name, "threshold": float(detector.threshold),
                                              "source": str(detector.source)},
    }  # fmt: skip
    server = ls.LitServer(
        api, accelerator=accelerator, devices="auto", workers_per_device=settings.workers_per_device,
        timeout=REQUEST_TIMEOUT, model_metadata=metadata,
        middlewares=[(UploadGuard, {"max_bytes": settings.max_upload_bytes, "max_pixels": settings.max_pixels})],
    )  # fmt: skip
    page = web_page()
    # LitServe answers GET / with "litserve running"; the web page takes its place.
    server.app.router.routes = [route for route in server.app.router.routes if getattr(route, "path", None) != "/"]
    server.app.add_api_route("/", lambda: HTMLResponse(page), methods=["GET"], include_in_schema=False)
    server.app.add_exception_handler(StarletteHTTPException, _json_error)
    return server


def serve(cfg: DictConfig) -> None:
    """Check the settings, load the checkpoint and the OOD detector, then serve until interrupted."""
    settings = check_settings(cfg)
    choice = check_ood_settings(cfg.ood)
    check_port_free(settings.host, settings.port)
    # The checkpoint is loaded here once to refuse a bad one before any worker starts, and to fit or check the
    # detector; the workers load their own copy. Only fitting needs the configured device.
    device = settings.device if choice.enabled and choice.fit else "cpu"
    classifier = Classifier.load(settings.checkpoint, device=device, tta=settings.tta)
    layer = gradcam_layer(classifier.model, settings.gradcam_layer)
    detector = choose_detector(choice, classifier, cfg.paths.log_dir, cfg.data, cfg.seed)
    server = build_server(settings, classifier, layer, detector)
    del classifier
    ood = "no OOD detector" if detector is None else f"OOD detector {detector.name} from {detector.source}"
    log.info(f"serving {settings.checkpoint} at http://{settings.host}:{settings.port}/ ({ood}; "
             f"max_batch_size={settings.max_batch_size}, batch_timeout={settings.batch_timeout:g} s)")  # fmt: skip
    _Stopping().install()
    server.run(host=settings.host, port=settings.port, log_level=settings.log_level, generate_client_file=False)


def wait_until_serving(process: subprocess.Popen, url: str, timeout: float) -> str:
    """Poll `url`/health until a serve.py started as `process` answers 200: '' then, or why it never did (it
    exited, or `timeout` seconds passed: then it is killed). For scripts and tests that start a server."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"serve.py exited with status {process.returncode}"
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return ""
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    process.kill()
    return f"serve.py was not ready after {timeout:.0f} s"
