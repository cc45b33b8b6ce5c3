"""The README and the documentation site say what is true: README stays short, the site builds with
`mkdocs build --strict` (no broken link or anchor, no page outside the nav) and renders in a browser, the
configuration reference is the one the schemas generate, every setting has a doc, no page names a machine's
absolute path, and the output-files page describes every key the commands write."""

import json
import re
import sys
from pathlib import Path

import pytest

from cifar_lightning.config import reference as config_reference
from cifar_lightning.config.schema import LOCATIONS, Settings
from tests.conftest import ROOT
from tests.services import require

README = ROOT / "README.md"
DOCS = ROOT / "docs"
OUTPUTS = DOCS / "reference" / "outputs.md"
MAX_README_LINES = 200
#: An absolute path: a slash-rooted folder path after a space, quote, `=`, `(` or the line's start (URLs are
#: not matched: their path follows a host), or a Windows drive.
ABSOLUTE_PATH = re.compile(r"(?:^|[\s`'\"=(\[])(/(?:[\w.-]+/)+[\w.-]*|[A-Za-z]:\\\w)")


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def test_readme_is_short():
    lines = README.read_text().count("\n")
    assert lines <= MAX_README_LINES, (
        f"README.md has {lines} lines; the manual belongs in docs/ (at most {MAX_README_LINES})"
    )


def test_configuration_reference_is_generated_from_the_schemas():
    page = ROOT / config_reference.PAGE
    assert page.read_text() == config_reference.reference(), (
        f"{config_reference.PAGE} differs from what the schemas and conf/ declare: run {config_reference.COMMAND}"
    )


def test_every_declared_setting_has_a_doc():
    assert len(config_reference.declared_schemas()) >= 25
    missing = config_reference.undocumented()
    assert not missing, f"settings without a description (give each Field a description=...): {missing}"


def test_a_setting_added_without_a_doc_fails_the_reference(monkeypatch):
    """The reference refuses to render an empty doc cell, naming the field and the fix."""
    from pydantic import Field

    class Undocumented(Settings):
        documented: int = Field(1, description="a doc")
        bare: int = 2

    monkeypatch.setitem(LOCATIONS, Undocumented, "model/undocumented_schema")
    assert any(name.endswith("Undocumented.bare") for name in config_reference.undocumented())
    with pytest.raises(config_reference.MissingDoc, match=r"Undocumented\.bare \(`model\.bare`\) has no description"):
        config_reference.reference()


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_page_names_an_absolute_path(path):
    found = [
        f"line {number}: {match.group(1)}"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        for match in ABSOLUTE_PATH.finditer(line)
    ]
    assert not found, f"{path.relative_to(ROOT)} names absolute paths (give them relative to the project): {found}"


def test_the_absolute_path_check_finds_one():
    assert ABSOLUTE_PATH.search("python train.py data.data_dir=/work/shared/data")
    assert ABSOLUTE_PATH.search("sweeps: /home/me/logs/x, ...")
    assert not ABSOLUTE_PATH.search("open http://127.0.0.1:8000/predict or data.data_dir=../shared/data")


def docs_screenshot():
    """benchmarks/docs_screenshot.py, which builds the site and opens it in Chromium (a script, not a package)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import docs_screenshot
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return docs_screenshot


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built as CI builds it: mkdocs build --strict (a warning fails it)."""
    out = tmp_path_factory.mktemp("site")
    failure = docs_screenshot().build_site(out)
    assert not failure, f"mkdocs build --strict failed:\n{failure}"
    return out


def test_the_site_builds_strict_with_every_page_and_the_api(site):
    pages = {path.relative_to(DOCS).with_suffix("").as_posix() for path in DOCS.rglob("*.md")}
    built = {path.parent.relative_to(site).as_posix() for path in site.rglob("index.html")}
    missing = sorted(page for page in pages if (page.removesuffix("/index").removesuffix("index") or ".") not in built)
    assert not missing, f"pages not in the built site: {missing}"
    api = (site / "reference" / "api" / "index.html").read_text()
    assert "Classifier.load" in api and "RunDir" in api and "choose_detector" in api  # rendered from docstrings


def test_the_site_renders_in_chromium(site, tmp_path):
    """The home page and the configuration reference, opened in headless Chromium: no console error, no failed
    request (the site works offline), the picture decoded, the reference's tables there; screenshots in tmp_path."""
    screenshots = docs_screenshot()
    require(screenshots.why_not())
    results = screenshots.check_site(site, tmp_path)
    assert not any(results.values()), f"pages with problems (screenshots in {tmp_path}): {results}"
    assert sorted(path.name for path in tmp_path.glob("*.png")) == ["docs_configuration.png", "docs_home.png"]


def section(title: str) -> str:
    """The text of OUTPUTS' section `title`, up to the next heading of the same or a higher level."""
    lines = OUTPUTS.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if re.fullmatch(rf"#+ {re.escape(title)}", line)]
    assert starts, f"{OUTPUTS.relative_to(ROOT)} has no section {title!r}"
    level = len(lines[starts[0]].split(" ")[0])
    body = []
    for line in lines[starts[0] + 1 :]:
        if re.match(rf"#{{1,{level}}} ", line):
            break
        body.append(line)
    return "\n".join(body)


def undescribed(keys: set[str], title: str) -> list[str]:
    text = section(title)
    return sorted(key for key in keys if f"`{key}`" not in text)


def test_every_metrics_json_key_is_described(tiny_run):
    run, _ = tiny_run
    keys = set(json.loads((run / "metrics.json").read_text()))
    history = set(json.loads((run / "metrics.json").read_text())["history"][0])
    assert not (missing := undescribed(keys | history, "metrics.json")), f"outputs.md does not describe {missing}"


def test_every_evaluation_json_key_is_described(tiny_run, data_dir, tmp_path):
    from cifar_lightning.evaluation import run_evaluation
    from tests.conftest import compose_evaluate

    run, _ = tiny_run
    cfg = compose_evaluate([f"run_dir={run}", f"data.data_dir={data_dir}", "gradcam.count=0"], tmp_path / "out")
    keys = set(run_evaluation(cfg).summary)
    assert not (missing := undescribed(keys, "evaluation.json")), f"outputs.md does not describe {missing}"


def test_every_predictions_json_key_is_described():
    """The keys test_prediction.py checks predictions.json against (JSON_KEYS, ENTRY_KEYS)."""
    from tests.test_prediction import ENTRY_KEYS, JSON_KEYS

    missing = undescribed(JSON_KEYS | ENTRY_KEYS, "predictions.json")
    assert not missing, f"outputs.md does not describe {missing}"


def test_layout_names_every_module():
    modules = sorted(p.name for p in (ROOT / "cifar_lightning").rglob("*.py") if p.name != "__init__.py")
    layout = (DOCS / "reference" / "layout.md").read_text()
    missing = [name for name in modules if name not in layout]
    assert not missing, f"docs/reference/layout.md does not name {missing}"
