"""The ASGI middleware in front of POST /predict, in the HTTP server process: it enforces max_upload_mb (on
Content-Length and while reading), takes the image from the multipart form or the raw body, decodes it with
images.load_image (max_pixels, decompression bombs) and answers a bad upload itself with 4xx JSON
`{"error": ...}`. A good one goes on to LitServe as a small JSON payload of its 32 x 32 pixels (LitServe parses
any body that is not a form as JSON), so that a worker's batch never holds a bad request."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, QueryParams, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from torch import Tensor

from cifar_lightning.images import INPUT_SIZE, ImageError, load_image

PREDICT_PATH = "/predict"
MEGABYTE = 1_000_000
#: Query values of ?gradcam= read as yes and as no.
YES, NO = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")
#: Past max_upload_mb the rest of a body is still read (and dropped), so that clients that send the whole body
#: before reading the answer (browsers, httpx, requests) get the 413 instead of a reset connection; past this
#: many bytes in all the server stops reading and the connection is closed after the 413.
DRAIN_LIMIT = 1 << 30


@dataclass(frozen=True)
class ImageRequest:
    """One checked upload as a worker gets it."""

    pixels: Tensor  # uint8 (3, 32, 32), the model's input
    gradcam: bool  # whether the Grad-CAM overlay of the top class was asked for


def encode_payload(pixels: Tensor, gradcam: bool) -> bytes:
    """The JSON body handed on to LitServe for a checked upload (3 KB, whatever the upload's size)."""
    return json.dumps(
        {"pixels": base64.b64encode(pixels.numpy().tobytes()).decode("ascii"), "gradcam": gradcam}
    ).encode()


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
    """Size limit, form or raw body, image decoding: 4xx JSON for a bad upload, the checked 32 x 32 image
    (encode_payload) handed on for a good one."""

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
        except (UploadRefused, ImageError) as exc:
            message = str(exc)
            if isinstance(exc, ImageError):
                message = (
                    f"the upload is not a usable image: {exc}. Send one image file (PNG, JPEG, WebP, BMP, GIF, "
                    f"TIFF, ...) of at most {self.max_pixels:,} pixels."
                )
            await JSONResponse({"error": message}, status_code=getattr(exc, "status", 400))(scope, receive, send)
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
            raise UploadRefused(
                400,
                f"gradcam={value!r} is neither yes nor no. Pass ?gradcam=1 for the Grad-CAM overlay of the top class, "
                f"or leave it out.",
            )
        return value in YES

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        """The whole body, refused with 413 once it is over max_bytes (declared or actual)."""
        too_large = (
            f"over the server's limit of {self.max_bytes / MEGABYTE:g} MB (max_upload_mb). Send a smaller image file."
        )
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and not declared.isdigit():
            raise UploadRefused(400, f"the Content-Length header {declared!r} is not a number of bytes")
        if declared is not None and int(declared) > self.max_bytes:
            await self._drain(receive, 0)
            raise UploadRefused(413, f"the upload is {int(declared):,} bytes, {too_large}")
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
                raise UploadRefused(413, f"the upload is {too_large}")
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

        fix = "Send the image as the form field `file`, or as the raw body."
        try:
            async with Request(scope, whole_body).form(max_files=1, max_fields=16) as form:
                upload = form.get("file")
                if not isinstance(upload, UploadFile):
                    fields = ", ".join(form.keys()) or "none"
                    raise UploadRefused(400, f"the form has no file field named `file` (its fields: {fields}). {fix}")
                return await upload.read()
        except (MultiPartException, HTTPException) as exc:
            detail = exc.message if isinstance(exc, MultiPartException) else exc.detail
            raise UploadRefused(400, f"the multipart form cannot be read ({detail}). {fix}") from exc
