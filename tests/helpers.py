"""Helpers the tests share: entry points run as a user runs them, their refusals, run folders, PNG chunks,
and what evaluate.py's report.html must show.

One home for each: a test file imports what it needs from here instead of keeping its own copy.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def run_entry_point(
    script: str, *args: str, env: dict[str, str] | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """`python <script> <args>` from the repository root, as a user types it: output captured, the current
    environment plus `env`, and the project root on PYTHONPATH (so that a DDP child process imports the same code)."""
    environment = {**os.environ, **(env or {})}
    environment["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), environment.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        [sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=environment
    )


def assert_refused(result: subprocess.CompletedProcess, *expected: str, status: int = 2) -> str:
    """Exit status `status` (2: bad input) and exactly one `error:` line holding each expected text, no traceback."""
    assert result.returncode == status, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]


def only_run_dir(log_dir: Path, job: str = "train", kind: str = "runs") -> Path:
    """The one directory a job wrote under `log_dir/<job>/<kind>/` (kind: runs or multiruns); fails if not one."""
    found = sorted((log_dir / job / kind).iterdir())
    assert len(found) == 1, found
    return found[0]


def snapshot(folder: Path) -> dict[str, str]:
    """Each file under `folder` by its md5: equal snapshots mean nothing was written, moved or lost."""
    files = (p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest() for p in files}


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC (for PNG files written by hand)."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


HEADLINE_ACCURACY = re.compile(r'<div class="value">([^<]*)</div><div class="label">test accuracy</div>')


def shown_images(page: str) -> list[bytes]:
    """The bytes of every <img> on the page, each checked to be a base64 PNG data URI that PIL decodes."""
    images = []
    for source in re.findall(r"<img [^>]*src=\"([^\"]*)\"", page):
        mime, _, data = source.partition(";base64,")
        assert mime == "data:image/png", source[:40]
        content = base64.b64decode(data, validate=True)
        with Image.open(io.BytesIO(content)) as image:
            image.load()  # a truncated or corrupt PNG fails here
            assert image.format == "PNG" and min(image.size) > 0
        images.append(content)
    assert len(images) == page.count("<img "), "an <img> without a src"
    return images


def assert_report_shows(page: str, test_acc: float, pngs: list[Path]) -> None:
    """The page's headline accuracy is `test_acc` as report.py formats it (a percentage to 2 decimals), every <img>
    decodes, and each PNG in `pngs` is shown exactly once, with no other image: what report.py promises of
    evaluate.py's report.html."""
    assert HEADLINE_ACCURACY.findall(page) == [f"{100 * test_acc:.2f}%"]
    names = {hashlib.md5(png.read_bytes()).hexdigest(): str(png) for png in pngs}
    assert len(names) == len(pngs), "two of the PNGs are the same image"
    shown = [names.get(hashlib.md5(image).hexdigest(), "<an image no PNG holds>") for image in shown_images(page)]
    assert sorted(shown) == sorted(map(str, pngs))
