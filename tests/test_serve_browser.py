"""serve.py's web page in a real headless Chromium (Playwright): one page load; pick a CIFAR-10 test image, then
drop a JPEG onto the page, and each time the page shows what POST /predict answers for the same file (top class
and its probability, the class bars, the OOD verdict) with its Grad-CAM overlay, without a console error.

The browser is the system's Chromium: $CIFAR_LIGHTNING_CHROMIUM, else /usr/bin/chromium (browsers are never
downloaded for the tests; .ci/run installs Chromium with apt). Without it, or without the playwright package, the
test is skipped, saying why; under CI (CI=true, as CI services and .ci/run set it) it fails instead, since CI must
run it. On a failure a screenshot of the page is left in the test's tmp dir.

The tiny model behind the shared `server` fixture is barely trained, so the test asserts no particular class or
verdict: it asserts that the page shows the answer the server gives for the same file."""

from __future__ import annotations

import base64
import io
import os
import re
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import httpx
from PIL import Image

from tests.services import require
from tests.serving_fixtures import PNG, cifar_test_pngs

try:
    from playwright import sync_api
except ImportError:  # the [dev] extra is not installed
    sync_api = None

pytest_plugins = ("tests.serving_fixtures",)  # the shared `server` fixture

DEFAULT_CHROMIUM = "/usr/bin/chromium"
SERVER_WAIT_MS = 60_000  # a page waiting on the server: a loaded machine may take seconds


def chromium() -> Path:
    return Path(os.environ.get("CIFAR_LIGHTNING_CHROMIUM", DEFAULT_CHROMIUM))


def why_no_browser() -> str:
    """Why this machine cannot run the test ('' when it can)."""
    if sync_api is None:
        return "the playwright Python package is not installed (pip install -e '.[dev]')"
    if not (chromium().is_file() and os.access(chromium(), os.X_OK)):
        return (
            f"no Chromium at {chromium()} (set CIFAR_LIGHTNING_CHROMIUM, or install it: apt-get install "
            f"chromium; browsers are never downloaded for the tests)"
        )
    return ""


def require_browser() -> None:
    """Skip without a browser, except under CI (CI=true), where the browser test must run: fail there."""
    require(why_no_browser())


def percent(probability: float) -> str:
    """The page's percent(): (100 * p).toFixed(1) + "%" (toFixed rounds a tie up)."""
    return f"{Decimal(100 * probability).quantize(Decimal('0.1'), rounding=ROUND_HALF_UP)}%"


def jpeg_96(png: bytes) -> bytes:
    """A PNG made a 96 x 96 JPEG: another format and size than the CIFAR-10 file picked first."""
    buffer = io.BytesIO()
    with Image.open(io.BytesIO(png)) as image:
        image.convert("RGB").resize((96, 96), Image.Resampling.BICUBIC).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def served_answer(url: str, body: bytes) -> dict:
    response = httpx.post(f"{url}/predict", params={"gradcam": "1"}, files={"file": ("x", body)}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def drop_file(page, selector: str, body: bytes, name: str, mime: str) -> None:
    """Drag and drop a file onto the element, as a user does from a file manager."""
    transfer = page.evaluate_handle(
        """([data, name, mime]) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: mime }));
            return transfer;
        }""",
        [base64.b64encode(body).decode("ascii"), name, mime],
    )
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


def test_pick_and_drop_images_in_chromium(request, tmp_path):
    require_browser()
    server = request.getfixturevalue("server")  # after the check: no server is started for a skipped test
    picked = tmp_path / "cifar_test_0.png"
    picked.write_bytes(PNG)
    dropped = jpeg_96(cifar_test_pngs(2)[1][0])
    expected = {
        "cifar_test_0.png": served_answer(server.url, PNG),
        "cifar_test_1.jpg": served_answer(server.url, dropped),
    }
    problems: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium()), headless=True)
        page = browser.new_page(viewport={"width": 900, "height": 900})
        try:
            page.set_default_timeout(SERVER_WAIT_MS)
            page.on("console", lambda message: message.type == "error" and problems.append(message.text))
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.goto(f"{server.url}/")
            sync_api.expect(page.locator("#model-info")).to_contain_text("knn OOD detector", timeout=SERVER_WAIT_MS)

            page.set_input_files("#file-input", str(picked))
            check_result(page, "cifar_test_0.png", expected["cifar_test_0.png"])
            drop_file(page, "#drop-zone", dropped, "cifar_test_1.jpg", "image/jpeg")
            check_result(page, "cifar_test_1.jpg", expected["cifar_test_1.jpg"])
        except Exception:
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            raise
        finally:
            browser.close()
    assert problems == []


def check_result(page, name: str, answer: dict) -> None:
    """The page shows `answer` (what POST /predict gave for the same file) for the file called `name`."""
    expect = sync_api.expect
    expect(page.locator(f'#result[data-file="{name}"]')).to_be_visible(timeout=SERVER_WAIT_MS)
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#top-class")).to_have_text(f"{answer['class']} ({percent(answer['probability'])})")
    bars = page.locator("#bars li")
    expect(bars).to_have_count(len(answer["top_k"]))
    shown = [
        (bars.nth(i).get_attribute("data-class"), bars.nth(i).locator(".pct").inner_text()) for i in range(bars.count())
    ]
    assert shown == [(entry["class"], percent(entry["probability"])) for entry in answer["top_k"]]
    verdict = answer["ood"]
    expect(page.locator("#verdict")).to_have_attribute("data-verdict", verdict["verdict"])
    expect(page.locator("#verdict")).to_contain_text(
        re.compile(
            ("^Out-of-distribution" if verdict["is_ood"] else "^In-distribution") + rf".*\({verdict['detector']} "
        )
    )
    expect(page.locator("#gradcam-caption")).to_have_text(f"Grad-CAM of {answer['class']} (conv3)")
    page.wait_for_function(
        "(png) => document.getElementById('gradcam').src === 'data:image/png;base64,' + png"
        " && document.getElementById('gradcam').naturalWidth === 128",
        arg=answer["gradcam"]["png_base64"],
    )
