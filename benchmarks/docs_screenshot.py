"""Prove that the documentation site renders: build it (`mkdocs build --strict`), serve it on 127.0.0.1, open the
home page and the configuration reference in headless Chromium (Playwright), and save a screenshot of each.

    python benchmarks/docs_screenshot.py [--out logs/docs_screenshots] [--site <built site>]

Checks, each printed with its result, per page:
- it loads with HTTP 200 and no console error, page error or failed request (the site must work offline: no
  font, script or image from another host);
- what a reader should see is there: the home page's title and its picture, decoded; the configuration
  reference's tables (one row per setting, so many rows) and a known key;
- the screenshot is a PNG of the full page.

Exits 0 when all pass, 1 when one fails, 2 when Chromium or Playwright is missing (it prints how to install it).
The browser is the system's Chromium ($CIFAR_LIGHTNING_CHROMIUM, else /usr/bin/chromium); none is downloaded.
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHROMIUM = "/usr/bin/chromium"
TIMEOUT_MS = 60_000


@dataclass(frozen=True)
class PageCheck:
    """A page of the site and what it must show."""

    path: str
    name: str
    title: str  # text of the page's first heading
    selector_counts: dict[str, int] = field(default_factory=dict)  # CSS selector -> at least this many elements
    texts: tuple[str, ...] = ()  # strings the page's visible text holds


PAGES = (
    PageCheck("", "home", "cifar-lightning", {"article img": 1}, ("Two commands", "pip install -e")),
    PageCheck(
        "reference/configuration/",
        "configuration",
        "Configuration reference",
        {"article table": 20, "article table tr": 200},
        ("model.dropout", "data.val_fraction", "experiment=fast94_cpu"),
    ),
)


def chromium() -> Path:
    return Path(os.environ.get("CIFAR_LIGHTNING_CHROMIUM", DEFAULT_CHROMIUM))


def why_not() -> str:
    """Why this machine cannot run the check ('' when it can)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing: pip install -e '.[dev]'"
    if not (chromium().is_file() and os.access(chromium(), os.X_OK)):
        return f"no Chromium at {chromium()}: apt-get install -y chromium, or set CIFAR_LIGHTNING_CHROMIUM"
    return ""


def build_site(out: Path) -> str:
    """mkdocs build --strict into `out` (a warning, e.g. a broken link or a page outside the nav, fails it): the
    build's output when it failed, '' when it passed."""
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)]
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    return "" if result.returncode == 0 else f"{result.stdout}{result.stderr}"


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # the check prints its own lines
        pass


def serve(site: Path) -> ThreadingHTTPServer:
    """The built site on a free port of 127.0.0.1, in a daemon thread."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def check_page(browser, base: str, page_check: PageCheck, out: Path) -> list[str]:
    """Open one page; return its problems (empty: it passed) and leave its screenshot in `out`."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("requestfailed", lambda request: problems.append(f"request failed: {request.url}"))
    response = page.goto(base + page_check.path, wait_until="networkidle", timeout=TIMEOUT_MS)
    if response is None or response.status != 200:
        problems.append(f"HTTP {response.status if response else 'no response'}")
    heading = page.locator("article h1").first.inner_text().strip()
    if heading.rstrip("¶").strip() != page_check.title:
        problems.append(f"first heading is {heading!r}, not {page_check.title!r}")
    for selector, least in page_check.selector_counts.items():
        if (count := page.locator(selector).count()) < least:
            problems.append(f"{count} elements match {selector!r}, expected at least {least}")
    broken = page.evaluate("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length")
    if broken:
        problems.append(f"{broken} image(s) did not decode")
    text = page.locator("article").inner_text()
    problems += [f"the page does not show {needle!r}" for needle in page_check.texts if needle not in text]
    shot = out / f"docs_{page_check.name}.png"
    page.screenshot(path=str(shot), full_page=True)
    if not shot.read_bytes().startswith(b"\x89PNG"):
        problems.append(f"{shot} is not a PNG")
    page.close()
    return problems


def check_site(site: Path, out: Path) -> dict[str, list[str]]:
    """Every page of PAGES: name -> problems."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    server = serve(site)
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(chromium()), args=["--no-sandbox"])
            try:
                return {check.name: check_page(browser, base, check, out) for check in PAGES}
            finally:
                browser.close()
    finally:
        server.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("logs/docs_screenshots"), help="where the PNGs go")
    parser.add_argument("--site", type=Path, help="an already built site (default: build one now)")
    args = parser.parse_args()
    if problem := why_not():
        print(f"error: cannot open the site in a browser: {problem}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as scratch:
        site = args.site or Path(scratch) / "site"
        if args.site is None and (failure := build_site(site)):
            print(f"error: mkdocs build --strict failed:\n{failure}", file=sys.stderr)
            return 1
        results = check_site(site, args.out)
    for name, problems in results.items():
        status = "ok" if not problems else "FAILED: " + "; ".join(problems)
        print(f"{name}: {status} (screenshot {args.out / f'docs_{name}.png'})")
    return 0 if not any(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
