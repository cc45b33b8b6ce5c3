"""serve.py as a user runs it: a real server in a subprocess on a free port, with dynamic batching and an OOD
detector fitted at startup (ood.fit=true on a small fit set). A valid image gets the model's own top-k answer,
its OOD verdict and Grad-CAM overlay, and says whether its probabilities are calibrated (the temperature
evaluate.py saved for the checkpoint, found at startup, is applied in the workers); requests sent at once are run
in batches (as the answers' batch_size shows) with the answers they get alone; each class of bad upload gets a
4xx JSON error and the server keeps serving, even when bad uploads arrive with good ones; SIGTERM stops every
process it started. Bad settings stop serve.py before anything is served, with one `error:` line and exit
status 2."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import pickle
import socket
import struct
import subprocess
import sys
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace

import httpx
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from PIL import Image

from cifar_lightning.calibration import CALIBRATION_FILE, Calibration, CalibrationFileError, save_calibration
from cifar_lightning.checkpoints import CheckpointError
from cifar_lightning.config.inference import ServeSettings
from cifar_lightning.errors import CifarLightningError, ConfigError
from cifar_lightning.gradcam import OVERLAY_SIZE, gradcam_pngs
from cifar_lightning.images import load_image
from cifar_lightning.ood.saved import OODDetector
from cifar_lightning.serving.app import ClassifierAPI, serve
from cifar_lightning.serving.upload_guard import decode_payload, encode_payload
from tests.conftest import CONF_DIR
from tests.helpers import ROOT, assert_refused, png_chunk
from tests.serving_fixtures import MAX_BATCH_SIZE, PNG, Server, cifar_test_pngs, free_port

pytest_plugins = ("tests.serving_fixtures",)  # the shared `server` fixture


def blank_png(width: int, height: int) -> bytes:
    """A valid black 1-bit PNG of any size, written row by row: a file of kilobytes whose pixels take gigabytes
    (the shape of a decompression bomb), made without ever holding those pixels."""
    compressor, row = zlib.compressobj(9), b"\0" * (1 + (width + 7) // 8)  # filter byte 0, then the bits
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, grayscale
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


def predict(server: Server, body: bytes, gradcam: bool = False, as_form: bool = True) -> dict:
    params = {"gradcam": "1"} if gradcam else {}
    kwargs = {"files": {"file": ("image.png", body, "image/png")}} if as_form else {"content": body}
    response = httpx.post(f"{server.url}/predict", params=params, timeout=60, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_web_page_is_self_contained(server):
    response = httpx.get(f"{server.url}/", timeout=30)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    for element in ('id="drop-zone"', 'id="file-input"', 'id="bars"', 'id="gradcam"', 'id="verdict"'):
        assert element in page
    assert "http://" not in page and "https://" not in page and "//cdn" not in page  # nothing from the internet


def test_a_valid_image_gets_the_models_answer(server, classifier):
    info = httpx.get(f"{server.url}/info", timeout=30).json()["model"]
    for body, _ in cifar_test_pngs(3):
        answer = predict(server, body)
        assert predict(server, body, as_form=False) == answer  # the raw body is read like the form field
        expected = classifier.predict(load_image(body)[None])
        probabilities, indices = expected.top_k(3)
        assert [entry["class"] for entry in answer["top_k"]] == [classifier.classes[i] for i in indices[0]]
        assert [entry["index"] for entry in answer["top_k"]] == indices[0].tolist()
        np.testing.assert_allclose([entry["probability"] for entry in answer["top_k"]], probabilities[0], rtol=1e-4)
        assert (answer["class"], answer["probability"]) == (
            answer["top_k"][0]["class"],
            answer["top_k"][0]["probability"],
        )
        ood = answer["ood"]
        assert ood["detector"] == info["ood"]["detector"] == "knn" and ood["threshold"] == info["ood"]["threshold"]
        assert ood["is_ood"] == (ood["score"] > ood["threshold"])
        assert ood["verdict"] == ("out-of-distribution" if ood["is_ood"] else "in-distribution")
        assert "gradcam" not in answer
        assert answer["batch_size"] == 1  # alone on the server: a batch of one
        assert answer["calibrated"] is False and answer["temperature"] is None  # none saved: the raw softmax
    assert info["calibrated"] is False and info["calibration"] is None


def test_gradcam_overlay_of_the_top_class(server, classifier):
    body, _ = cifar_test_pngs(1)[0]
    answer = predict(server, body, gradcam=True)
    cam = answer["gradcam"]
    assert (cam["class"], cam["layer"]) == (answer["class"], "conv3")  # the last Conv2d of the report CNN
    with Image.open(io.BytesIO(base64.b64decode(cam["png_base64"]))) as image:
        served = np.asarray(image.convert("RGB"))
    assert served.shape == (OVERLAY_SIZE, OVERLAY_SIZE, 3)
    (expected,) = gradcam_pngs(
        classifier.model, "conv3", load_image(body)[None], classifier.normalize, [answer["top_k"][0]["index"]]
    )
    with Image.open(io.BytesIO(expected)) as image:
        here = np.asarray(image.convert("RGB"))
    assert np.abs(served.astype(int) - here.astype(int)).mean() < 2  # the same map (float noise aside)


def over_the_limit_in_chunks() -> Iterator[bytes]:
    """25 MB sent without a Content-Length (chunked): only counting while reading can refuse it."""
    for _ in range(25):
        yield b"\0" * 1_000_000


BAD_UPLOADS = {
    "empty body": (dict(content=b""), 400, "empty"),
    "not an image": (dict(content=b"hello, this is text"), 400, "not an image"),
    "truncated PNG": (dict(content=PNG[: len(PNG) // 2]), 400, "damaged or truncated"),
    "50 MB body": (dict(content=b"\0" * 50_000_000), 413, "over the server's limit of 20 MB"),
    "over the limit, chunked": (dict(content=over_the_limit_in_chunks), 413, "over the server's limit of 20 MB"),
    "20000 x 20000 image": (dict(content=blank_png(20_000, 20_000)), 400, "decompression bomb"),
    "decompression bomb": (dict(content=blank_png(7_000, 7_000)), 400, "over the limit of 40,000,000 (max_pixels)"),
    "form without a file field": (dict(files={"image": ("a.png", PNG, "image/png")}), 400, "no file field named"),
    "text form field": (dict(data={"file": "not a file"}, files={"other": ("a", b"x")}), 400, "no file field named"),
    "broken multipart": (
        dict(content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data"}),
        400,
        "multipart form cannot be read",
    ),
    "bad gradcam flag": (dict(content=PNG, params={"gradcam": "perhaps"}), 400, "gradcam='perhaps'"),
}


@pytest.mark.parametrize("case", BAD_UPLOADS)
def test_a_bad_upload_gets_a_json_error_and_the_server_keeps_serving(server, case):
    kwargs, status, text = BAD_UPLOADS[case]
    if callable(kwargs.get("content")):
        kwargs = {**kwargs, "content": kwargs["content"]()}
    response = httpx.post(f"{server.url}/predict", timeout=60, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert isinstance(error, str) and text in error, error
    assert server.alive()


def send_at_once(server: Server, bodies: list[bytes]) -> list[httpx.Response]:
    """POST every body to /predict concurrently (one connection each), in order."""

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/predict", content=body) for body in bodies))

    return asyncio.run(send_all())


def assert_same_answer(answer: dict, alone: dict) -> None:
    """The answer a request got in a batch is the one it gets alone."""
    assert [e["class"] for e in answer["top_k"]] == [e["class"] for e in alone["top_k"]]
    np.testing.assert_allclose(
        [e["probability"] for e in answer["top_k"]], [e["probability"] for e in alone["top_k"]], rtol=1e-4
    )
    assert answer["ood"]["is_ood"] == alone["ood"]["is_ood"]
    assert answer["ood"]["score"] == pytest.approx(alone["ood"]["score"], rel=1e-4, abs=1e-6)


def test_concurrent_requests_are_batched(server):
    """Dynamic batching, seen from the server: 16 images sent at once are run in batches of more than one and at
    most max_batch_size requests (each answer's batch_size), and each gets the answer it gets alone. A round that
    a loaded machine delivers too slowly to batch (batch_timeout is 50 ms) is sent again, twice at most."""
    assert httpx.get(f"{server.url}/info", timeout=30).json()["model"]["max_batch_size"] == MAX_BATCH_SIZE
    bodies = [body for body, _ in cifar_test_pngs(16)]
    for _ in range(3):
        responses = send_at_once(server, bodies)
        assert all(response.status_code == 200 for response in responses), [r.text for r in responses]
        answers = [response.json() for response in responses]
        sizes = Counter(answer["batch_size"] for answer in answers)
        if max(sizes) > 1:
            break
    assert 1 < max(sizes) <= MAX_BATCH_SIZE, sizes
    # A batch of k requests gives k answers that each say k (only this test's requests are in flight).
    assert all(count % size == 0 for size, count in sizes.items()), sizes
    for body, answer in zip(bodies[:4], answers):
        alone = predict(server, body)
        assert alone["batch_size"] == 1
        assert_same_answer(answer, alone)


def test_bad_uploads_in_a_batch_fail_alone(server):
    """Good and bad uploads sent at once (so that the server batches them): each good one gets the answer it gets
    alone, each bad one its own 4xx."""
    goods = cifar_test_pngs(6)
    alone = [predict(server, body) for body, _ in goods]
    bads = [b"", b"not an image", PNG[:100], blank_png(7_000, 7_000)]
    responses = send_at_once(server, [body for pair in zip([b for b, _ in goods], bads + bads) for body in pair])
    for good, response in zip(alone, responses[0::2]):
        assert response.status_code == 200, response.text
        assert_same_answer(response.json(), good)
    assert all(response.status_code == 400 and response.json()["error"] for response in responses[1::2])
    assert server.alive()


def test_errors_are_json_everywhere(server):
    missing = httpx.get(f"{server.url}/no/such/page", timeout=30)
    assert missing.status_code == 404 and missing.json() == {"error": "Not Found"}
    wrong_method = httpx.get(f"{server.url}/predict", timeout=30)
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()


def compose_serve(*overrides: str) -> DictConfig:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose(config_name="serve", overrides=list(overrides))


BAD_SETTINGS = {
    "host=example.org": "127.0.0.1, 0.0.0.0, ::",
    "port=80": r"in \[1024, 65535\]",
    "device=tpu": "auto, cpu, gpu",
    "tta=3": "one of 0, 1, 2",
    "top_k=11": r"in \[1, 10\]",
    "max_batch_size=0": "positive integer",
    "batch_timeout=-1": r"in \[0, 30\)",
    "batch_timeout=30": r"in \[0, 30\)",
    "workers_per_device=0": "positive integer",
    "cpu_threads=0": r"positive integer \(or null\)",
    "max_upload_mb=0": "positive number",
    "max_pixels=0": "positive integer",
    "log_level=loud": "critical, error, warning, info",
    "ood.fit=yes": "true or false",
    "calibration=yes": "true or false",
    "ood.fit_images=0": r"positive integer \(or null\)",
    "ood.detector=mystery": "msp, energy, max_logit, entropy, .*, odin, rotpred, mean_activation",
}


@pytest.mark.parametrize("override", BAD_SETTINGS)
def test_a_bad_setting_is_refused_before_anything_loads(override, tmp_path):
    key = override.split("=")[0]
    group = key.split(".")[0]
    with pytest.raises(
        ConfigError, match=f"invalid `{group}` config: {key} must be .*{BAD_SETTINGS[override]}.*python serve.py"
    ):
        serve(compose_serve(f"ckpt={tmp_path / 'never_read.ckpt'}", override))


def test_checkpoint_choice_is_refused_with_the_fix(tmp_path, tiny_run):
    with pytest.raises(ConfigError, match="neither ckpt nor run_dir.*ckpt=.*run_dir="):
        serve(compose_serve())
    with pytest.raises(ConfigError, match="both ckpt and run_dir"):
        serve(compose_serve("ckpt=a.ckpt", f"run_dir={tmp_path}"))
    with pytest.raises(CheckpointError, match="holds no checkpoints/best.ckpt"):
        serve(compose_serve(f"run_dir={tmp_path}"))
    with pytest.raises(CheckpointError, match="does not exist"):
        serve(compose_serve(f"ckpt={tmp_path / 'missing.ckpt'}"))
    run = tiny_run[0]
    with pytest.raises(ConfigError, match="no layer 'conv9'.*conv3"):
        serve(compose_serve(f"run_dir={run}", "gradcam.layer=conv9", "ood.enabled=false", f"port={free_port()}"))


def test_ood_choices_are_refused_with_the_fix(tmp_path, tiny_run):
    run = tiny_run[0]
    with pytest.raises(ConfigError, match="give one of them"):
        serve(compose_serve(f"run_dir={run}", "ood.fit=true", f"ood.file={tmp_path / 'ood_detectors.pt'}"))
    with pytest.raises(CifarLightningError, match="does not exist.*ood.fit=true"):
        serve(compose_serve(f"run_dir={run}", f"ood.file={tmp_path / 'ood_detectors.pt'}", f"port={free_port()}"))
    # A detector asked for by name and never saved stops serve.py as it stops predict.py (one OOD runtime).
    named = ["ood.detector=msp", f"paths.log_dir={tmp_path / 'logs'}", f"port={free_port()}"]
    with pytest.raises(ConfigError, match="ood.detector=msp was asked for.*python evaluate.py.*nothing was served"):
        serve(compose_serve(f"run_dir={run}", *named))


def test_a_busy_port_is_refused(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}.*port={port + 1}"):
            serve(compose_serve(f"ckpt={tmp_path / 'never_read.ckpt'}", f"port={port}"))


@pytest.mark.slow  # a CLI process start (10-20 s here); the same check runs in-process in the default suite
def test_cli_bad_checkpoint_is_one_error_line(tmp_path):
    short = tmp_path / "short.ckpt"
    short.write_bytes(b"PK\x03\x04 not a whole checkpoint")
    result = subprocess.run(
        [sys.executable, "serve.py", f"ckpt={short}", f"port={free_port()}", f"paths.log_dir={tmp_path / 'logs'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_refused(result, str(short))


def test_payload_keeps_the_pixels():
    pixels = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    request = decode_payload(json.loads(encode_payload(pixels, True)))
    assert torch.equal(request.pixels, pixels) and request.gradcam is True


def test_the_api_with_its_detector_survives_the_pickle_of_spawned_workers(classifier):
    """LitServe spawns its workers and pickles the ClassifierAPI into them (standard pickle); the detector's scorer
    is a closure (here the mean-activation one, a lambda, already built by a first score() as fitting builds it),
    which must arrive and score as it did."""
    images = torch.stack([load_image(body) for body, _ in cifar_test_pngs(4)])
    detector = OODDetector("mean_activation", 0.0, ("relu4",), "fitted now", {"layer": "relu4", "direction": "below"})
    features = classifier.features(images, layers=list(detector.layers))
    scores = detector.score(features)  # the lambda is built and cached now, before the pickle
    detector = replace(detector, threshold=float(scores.median()))  # some images on each side
    detector.score(features)
    settings = ServeSettings(max_batch_size=4, batch_timeout=0.01)
    api = ClassifierAPI(settings, classifier.checkpoint_path, "conv3", detector)
    copy = pickle.loads(pickle.dumps(api))
    assert torch.equal(copy.detector.score(features), scores)
    assert (copy.detector.name, copy.detector.threshold, copy.max_batch_size) == (
        "mean_activation",
        detector.threshold,
        4,
    )
    copy.setup("cpu")
    answers = copy.predict([decode_payload(json.loads(encode_payload(image, False))) for image in images])
    assert [answer["ood"]["score"] for answer in answers] == pytest.approx(scores.tolist())
    assert [answer["ood"]["is_ood"] for answer in answers] == (scores > detector.threshold).tolist()
    assert [answer["batch_size"] for answer in answers] == [4] * 4


def test_the_api_answers_with_calibrated_probabilities(classifier):
    """A worker given a calibration (T = 2) answers softmax(logits / 2), says so, and keeps the raw classes and
    the OOD scores (MSP of the raw logits); after the pickle of spawned workers too."""
    images = torch.stack([load_image(body) for body, _ in cifar_test_pngs(3)])
    requests = [decode_payload(json.loads(encode_payload(image, False))) for image in images]
    detector = OODDetector("msp", -0.5, (), "test", {})
    settings = ServeSettings(max_batch_size=4, top_k=10)
    api = pickle.loads(
        pickle.dumps(ClassifierAPI(settings, classifier.checkpoint_path, "conv3", detector, Calibration(2.0, "c.json")))
    )
    raw_api = ClassifierAPI(settings, classifier.checkpoint_path, "conv3", detector)
    api.setup("cpu")
    raw_api.setup("cpu")
    answers, raw = api.predict(requests), raw_api.predict(requests)
    logits = classifier.predict(images).logits
    for answer, plain, row in zip(answers, raw, logits):
        assert (answer["calibrated"], answer["temperature"], plain["calibrated"]) == (True, 2.0, False)
        expected = (row / 2).softmax(dim=0).sort(descending=True)
        assert [top["index"] for top in answer["top_k"]] == expected.indices.tolist()
        assert [top["probability"] for top in answer["top_k"]] == pytest.approx(expected.values.tolist(), abs=1e-6)
        assert answer["class"] == plain["class"] and answer["probability"] < plain["probability"]
        assert answer["ood"] == plain["ood"]


def test_serve_finds_the_saved_calibration_or_refuses_a_bad_file(tmp_path, tiny_run, monkeypatch):
    """serve() hands the newest calibration.json of its checkpoint under paths.log_dir to the server (caught here
    before it runs); a named file of another checkpoint stops it first."""
    checkpoint = tiny_run[0] / "checkpoints" / "best.ckpt"
    metrics = {"ece": 0.2, "mce": 0.4, "nll": 2.0, "brier": 0.8}
    saved = tmp_path / "logs" / "evaluate" / "runs" / "earlier" / CALIBRATION_FILE
    save_calibration(saved, 1.5, checkpoint, "validation split", metrics, metrics)
    built = []

    def caught(settings, classifier, layer, detector, calibration):
        built.append(calibration)
        raise KeyboardInterrupt  # stop before anything is served

    monkeypatch.setattr("cifar_lightning.serving.app.build_server", caught)
    common = [f"run_dir={tiny_run[0]}", "ood=none", f"paths.log_dir={tmp_path / 'logs'}", f"port={free_port()}"]
    with pytest.raises(KeyboardInterrupt):
        serve(compose_serve(*common))
    with pytest.raises(KeyboardInterrupt):
        serve(compose_serve(*common, "calibration=false"))
    assert built == [Calibration(1.5, str(saved)), None]
    other = tmp_path / "other.ckpt"
    other.write_bytes(b"another model")
    theirs = save_calibration(tmp_path / "theirs.json", 1.5, other, "validation split", metrics, metrics)
    with pytest.raises(CalibrationFileError, match="fitted for another checkpoint"):
        serve(compose_serve(*common, f"calibration_file={theirs}"))
    assert len(built) == 2
