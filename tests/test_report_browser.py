"""benchmarks/report_screenshot.py on a real evaluate.py report.html (the tiny trained run's checkpoint on the 10,000
test images): in headless Chromium every image decodes, the console stays quiet, and the page shows no raw data block
(no <pre>, no JSON-looking text); and the same script fails on a page that has one, so its check can fail.

The browser is the system's Chromium: $CIFAR_LIGHTNING_CHROMIUM, else /usr/bin/chromium (never downloaded for the
tests). Without it the tests are skipped, saying why; under CI (CI=true) they fail instead, since CI must run them.
The screenshot is left in the test's tmp dir (report_screenshot.png beside report.html) for a person to look at."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cifar_lightning.evaluation import run_evaluation, write_outputs
from tests.conftest import compose_evaluate
from tests.services import require

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHROMIUM = "/usr/bin/chromium"


def chromium() -> Path:
    return Path(os.environ.get("CIFAR_LIGHTNING_CHROMIUM", DEFAULT_CHROMIUM))


def require_chromium() -> None:
    """Skip without Chromium, except under CI (CI=true), where the check must run: fail there."""
    if chromium().is_file() and os.access(chromium(), os.X_OK):
        return
    require(f"no Chromium at {chromium()}", "set CIFAR_LIGHTNING_CHROMIUM, or install it: apt-get install chromium")


@pytest.fixture(autouse=True, scope="session")
def browser() -> None:
    """Checked first, before the tiny run is trained for the report."""
    require_chromium()


def screenshot(report: Path) -> subprocess.CompletedProcess:
    """benchmarks/report_screenshot.py as a person runs it, on `report`, with this machine's Chromium."""
    command = [sys.executable, "benchmarks/report_screenshot.py", str(report), "--chromium", str(chromium())]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def report(tiny_run, data_dir, tmp_path_factory) -> Path:
    """evaluate.py's report.html for the tiny run: small galleries and 2 Grad-CAM overlays keep it quick."""
    out = tmp_path_factory.mktemp("report_browser") / "out"
    overrides = [f"run_dir={tiny_run[0]}", f"data.data_dir={data_dir}", "gallery.size=8", "gradcam.count=2"]
    cfg = compose_evaluate(overrides, out)
    return write_outputs(run_evaluation(cfg), cfg)


def test_real_report_renders_without_raw_data(report):
    result = screenshot(report)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "raw data blocks: 0 <pre>, 0 JSON-looking text(s)" in result.stdout
    assert "console errors:  0" in result.stdout and result.stdout.rstrip().endswith("PASS")
    assert (report.parent / "report_screenshot.png").stat().st_size > 10_000


def test_a_json_block_fails_the_check(report, tmp_path):
    """The same page with the old-style <pre> JSON dump of a field: the script says so and exits 1."""
    html = report.read_text(encoding="utf-8")
    bad = tmp_path / "report.html"
    bad.write_text(html.replace("</body>", '<pre>{"normalization": {"mean": [0.4914, 0.4822]}}</pre></body>'))
    result = screenshot(bad)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "problem: 1 <pre> element(s)" in result.stdout and "problem: JSON-looking text on the page" in result.stdout
