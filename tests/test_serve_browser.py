"""serve.py's web page in a real headless Chromium (Playwright): pick a CIFAR-10 test image, drop an MNIST digit,
and the page shows what POST /predict answers for the same file (top class, class bars, OOD verdict) with its
Grad-CAM overlay, without a console error. Screenshots land in the test's tmp dir.

The tiny model behind the shared `server` fixture is barely trained, so the test does not assert that MNIST is
out-of-distribution; it asserts that the verdict shown is the one the server's fitted detector gave."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import httpx
import numpy as np
import pytest

from cifar_lightning.ood.sets import to_rgb32
from tests.conftest import DATA_DIR
from tests.serving_fixtures import PNG, png_bytes

pytest_plugins = ("tests.serving_fixtures",)  # the shared `server` fixture

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
CHROMIUM = Path("/usr/bin/chromium")
MNIST = DATA_DIR / "ood" / "mnist_test.npz"

pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.is_file(), reason=f"no system Chromium at {CHROMIUM} (browsers are never downloaded for the tests)"
    ),  # fmt: skip
    pytest.mark.skipif(not MNIST.is_file(), reason=f"no MNIST test set at {MNIST}"),
]


def mnist_digit_png() -> bytes:
    """The first MNIST test digit, made 32 x 32 RGB as the OOD loader makes it (ood.sets.to_rgb32)."""
    digit = np.load(MNIST)["images"][:1]
    return png_bytes(to_rgb32(digit)[0].permute(1, 2, 0).numpy())


def served_answer(url: str, body: bytes) -> dict:
    response = httpx.post(f"{url}/predict", params={"gradcam": "1"}, files={"file": ("x.png", body)}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def drop_file(page, selector: str, body: bytes, name: str) -> None:
    """Drag and drop a file onto the element, as a user does from a file manager."""
    transfer = page.evaluate_handle(
        """([data, name]) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: "image/png" }));
            return transfer;
        }""",
        [base64.b64encode(body).decode("ascii"), name],
    )
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


def test_pick_and_drop_images_in_chromium(server, tmp_path):
    cifar = tmp_path / "cifar_test_0.png"
    cifar.write_bytes(PNG)
    digit = mnist_digit_png()
    expected = {"cifar_test_0.png": served_answer(server.url, cifar.read_bytes()),
                "mnist_digit.png": served_answer(server.url, digit)}  # fmt: skip
    problems: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 900})
            page.on("console", lambda message: message.type == "error" and problems.append(message.text))
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.goto(f"{server.url}/")
            sync_api.expect(page.locator("#model-info")).to_contain_text("knn OOD detector")

            page.set_input_files("#file-input", str(cifar))
            check_result(page, "cifar_test_0.png", expected["cifar_test_0.png"])
            page.screenshot(path=str(tmp_path / "page_cifar.png"), full_page=True)

            drop_file(page, "#drop-zone", digit, "mnist_digit.png")
            check_result(page, "mnist_digit.png", expected["mnist_digit.png"])
            page.screenshot(path=str(tmp_path / "page_mnist.png"), full_page=True)
        finally:
            browser.close()
    assert problems == []
    assert (tmp_path / "page_cifar.png").stat().st_size > 10_000 and (tmp_path / "page_mnist.png").is_file()


def check_result(page, name: str, answer: dict) -> None:
    """The page shows `answer` (what POST /predict gave for the same file) for the file called `name`."""
    expect = sync_api.expect
    expect(page.locator(f'#result[data-file="{name}"]')).to_be_visible()
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#top-class")).to_have_text(re.compile(rf"^{re.escape(answer['class'])} \(\d+\.\d%\)$"))
    bars = page.locator("#bars li")
    expect(bars).to_have_count(len(answer["top_k"]))
    assert [bars.nth(i).get_attribute("data-class") for i in range(bars.count())] == [
        entry["class"] for entry in answer["top_k"]
    ]
    verdict = answer["ood"]["verdict"]
    expect(page.locator("#verdict")).to_have_attribute("data-verdict", verdict)
    expect(page.locator("#verdict")).to_contain_text("Out-of-distribution" if answer["ood"]["is_ood"]
                                                     else "In-distribution")  # fmt: skip
    expect(page.locator("#gradcam-caption")).to_have_text(f"Grad-CAM of {answer['class']} (conv3)")
    page.wait_for_function("() => document.getElementById('gradcam').naturalWidth === 128")
