"""Prove that an evaluation report.html renders: open it in headless Chromium, check that every
image decodes and that the console stays quiet, and save a screenshot of the whole page.

    python benchmarks/report_screenshot.py logs/evaluate/runs/<date>_<time>/report.html [--out screenshot.png]

Checks, each printed with its result:
- the page's own HTML: every <img> has a data: URI, no <script>, no external (http/https) URL;
- in Chromium: every image decoded (naturalWidth > 0), no console message, and no raw data
  block: no <pre> element and no JSON-looking text ({", ": or [0.49, ...) in what the page
  shows (the report's settings are labelled tables). The report has no scripts by design, so
  these checks run on a temporary copy with a small script appended; the report itself is
  only read;
- the screenshot: a PNG of the page's full height, not blank.

Exits 0 when all pass, 1 when one fails, 2 when Chromium is missing (it prints how to install it).
Needs only Chromium (`apt-get install -y chromium`) and this project's own dependencies.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

from matplotlib.image import imread

CHROMIUM_NAMES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
    "--virtual-time-budget=10000",  # let the page load and images decode before dumping or shooting
)
TIMEOUT_S = 120
MAX_HEIGHT = 16384  # Chromium's largest screenshot side
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Appended to a temporary copy only: reports, once the page has loaded, how many images decoded, how many
# <pre> elements the page has and the JSON-looking bits of its visible text (an object's opening brace and
# key, a key's closing quote and colon, a list of numbers in brackets), before adding its own verdict.
CHECK_SCRIPT = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const broken = images.filter((img) => !(img.complete && img.naturalWidth > 0))
    .map((img) => img.alt || img.src.slice(0, 40));
  const json = document.body.innerText.match(/\\{\\s*"|"\\s*:\\s|\\[\\s*-?[\\d.]+\\s*,/g) || [];
  const result = {images: images.length, broken: broken, height: document.documentElement.scrollHeight,
                  pre: document.querySelectorAll("pre").length, json: json.slice(0, 5)};
  const out = document.createElement("div");
  out.id = "render-check";
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
});
</script>"""


class PageParser(HTMLParser):
    """The page's <img> sources, scripts and external URLs, as written in the file."""

    def __init__(self) -> None:
        super().__init__()
        self.image_sources: list[str] = []
        self.scripts = 0
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self.scripts += 1
        for name, value in attrs:
            if tag == "img" and name == "src":
                self.image_sources.append(value or "")
            if name in ("src", "href") and value and re.match(r"\s*(https?:)?//", value):
                self.external.append(value)


def find_chromium(name: str | None) -> str | None:
    for candidate in (name,) if name else CHROMIUM_NAMES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def run_chromium(chromium: str, url: str, *flags: str) -> subprocess.CompletedProcess:
    """One headless Chromium run with a throwaway profile; stdout is the output of --dump-dom, if asked."""
    with tempfile.TemporaryDirectory(prefix="report-chromium-") as profile:
        command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *flags, url]
        return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)


def console_messages(stderr: str) -> list[str]:
    """Page console output in Chromium's log (its own D-Bus/GPU noise is left out)."""
    return [line.strip() for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def check_source(html: str) -> tuple[list[str], int]:
    """Problems in the file as written, and its number of images."""
    page = PageParser()
    page.feed(html)
    problems = []
    not_embedded = [src[:60] for src in page.image_sources if not src.startswith("data:image/")]
    if not_embedded:
        problems.append(f"{len(not_embedded)} image(s) not embedded as data: URIs: {not_embedded}")
    if page.scripts:
        problems.append(f"{page.scripts} <script> element(s)")
    if page.external or re.search(r"url\(\s*['\"]?(https?:)?//", html):
        problems.append(f"external URLs: {page.external or 'in CSS url()'}")
    return problems, len(page.image_sources)


def check_rendering(chromium: str, html: str, width: int) -> tuple[list[str], dict]:
    """Render a copy with CHECK_SCRIPT appended and read its verdict out of the dumped DOM.

    The window has the screenshot's width, so the page height it measures is the screenshot's.
    """
    with tempfile.TemporaryDirectory(prefix="report-check-") as folder:
        copy = Path(folder) / "report.html"
        copy.write_text(html.replace("</body>", CHECK_SCRIPT + "</body>") if "</body>" in html else html + CHECK_SCRIPT)
        result = run_chromium(chromium, copy.as_uri(), "--dump-dom", f"--window-size={width},1000")
    match = re.search(r'<div id="render-check">(.*?)</div>', result.stdout, re.S)
    if result.returncode != 0 or not match:
        return [f"Chromium did not render the page (exit {result.returncode}): {result.stderr[-500:]}"], {}
    verdict = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    problems = [f"{len(verdict['broken'])} image(s) did not decode: {verdict['broken']}"] if verdict["broken"] else []
    problems += raw_data_problems(verdict)
    problems += [f"console: {message}" for message in console_messages(result.stderr)]
    return problems, verdict


def raw_data_problems(verdict: dict) -> list[str]:
    """A <pre> block or JSON-looking text on the page: the report shows its data as labelled tables, never raw."""
    problems = [f"{verdict['pre']} <pre> element(s): a raw block, not a labelled table"] if verdict["pre"] else []
    return problems + ([f"JSON-looking text on the page: {verdict['json']}"] if verdict["json"] else [])


def png_size(path: Path) -> tuple[int, int] | None:
    data = path.read_bytes()[:24] if path.is_file() else b""
    return (int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")) if data[:8] == PNG_MAGIC else None


def take_screenshot(chromium: str, report: Path, out: Path, width: int, height: int) -> list[str]:
    """Screenshot the report itself (not the checked copy); a blank or missing PNG is a problem."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    result = run_chromium(
        chromium, report.resolve().as_uri(), f"--screenshot={out.resolve()}", f"--window-size={width},{height}"
    )
    problems = [f"console: {message}" for message in console_messages(result.stderr)]
    if png_size(out) is None:
        return [*problems, f"no screenshot written (exit {result.returncode}): {result.stderr[-500:]}"]
    pixels = imread(out)[..., :3]
    if pixels.min() == pixels.max():
        problems.append("the screenshot is blank (one flat colour)")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="the report.html to check")
    parser.add_argument("--out", type=Path, help="screenshot PNG (default: <report>_screenshot.png beside it)")
    parser.add_argument("--width", type=int, default=1280, help="window width in pixels (default 1280)")
    parser.add_argument("--height", type=int, help="window height (default: the page's full height)")
    parser.add_argument("--chromium", help=f"the browser binary (default: the first of {', '.join(CHROMIUM_NAMES)})")
    args = parser.parse_args(argv)
    out = args.out or args.report.with_name(f"{args.report.stem}_screenshot.png")

    chromium = find_chromium(args.chromium)
    if chromium is None:
        print(
            "error: Chromium not found. Install it with: apt-get update && apt-get install -y chromium "
            "(or pass --chromium /path/to/chrome)",
            file=sys.stderr,
        )
        return 2
    if not args.report.is_file():
        print(f"error: {args.report} is not a file; pass the report.html that evaluate.py wrote", file=sys.stderr)
        return 2

    html = args.report.read_text(encoding="utf-8")
    source_problems, image_count = check_source(html)
    render_problems, verdict = check_rendering(chromium, html, args.width)
    height = args.height or min(max(int(verdict.get("height") or 4000), 600), MAX_HEIGHT)
    shot_problems = take_screenshot(chromium, args.report, out, args.width, height)

    size = png_size(out)
    console = [p for p in render_problems + shot_problems if p.startswith("console: ")]
    decoded = image_count - len(verdict.get("broken", [])) if verdict else 0
    print(f"report:          {args.report} ({args.report.stat().st_size / 1024:,.0f} KiB)")
    print(f"page source:     {image_count} <img>, {'ok' if not source_problems else '; '.join(source_problems)}")
    print(f"decoded:         {decoded}/{image_count} images in {chromium}" if verdict else "decoded:         n/a")
    print(f"console errors:  {len(console)}")
    if verdict:
        print(f"raw data blocks: {verdict['pre']} <pre>, {len(verdict['json'])} JSON-looking text(s)")
    if size:
        print(f"screenshot:      {out} ({size[0]}x{size[1]} px, {out.stat().st_size / 1024:,.0f} KiB)")
    problems = source_problems + render_problems + shot_problems
    for problem in problems:
        print(f"  problem: {problem}")
    print("PASS" if not problems else f"FAIL ({len(problems)} problem(s))")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
