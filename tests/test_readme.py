"""README.md says what is true and all of it: every config group, option and key, every top-level
setting of train.py and evaluate.py, and every key train.py writes to metrics.json and evaluate.py to
evaluation.json is named in it. New configs or keys fail here until README names them."""

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import CONF_DIR, ROOT

README = (ROOT / "README.md").read_text()
# Hydra's own groups (hydra/, hydra/launcher/...) configure Hydra, not the run: their keys are Hydra's.
GLOBAL_PACKAGE = "# @package _global_"


def config_groups() -> dict[str, list[str]]:
    """Every config group under conf/ (nested ones as a/b) and its options (the YAML files' stems)."""
    groups: dict[str, list[str]] = {}
    for path in sorted(CONF_DIR.rglob("*.yaml")):
        if path.parent == CONF_DIR:
            continue  # train.yaml, evaluate.yaml, ... are entry configs
        groups.setdefault(path.parent.relative_to(CONF_DIR).as_posix(), []).append(path.stem)
    return groups


def table_rows() -> dict[str, str]:
    """README's config table: group name -> the rest of its row."""
    rows = {}
    for line in README.splitlines():
        match = re.match(r"^\| `([a-z_/]+)` \|(.*)$", line)
        if match:
            rows.setdefault(match.group(1), match.group(2))
    return rows


def leaf_keys(node: dict, prefix: str = "") -> list[str]:
    """Dotted paths of the leaves of a YAML mapping (Hydra's _target_/_partial_/defaults left out)."""
    keys = []
    for key, value in (node or {}).items():
        if key in ("_target_", "_partial_", "defaults"):
            continue
        path = f"{prefix}{key}"
        keys += leaf_keys(value, f"{path}.") if isinstance(value, dict) and value else [path]
    return keys


def load_yaml(path: Path) -> dict:
    """The file as written (interpolations left as text)."""
    return yaml.safe_load(path.read_text()) or {}


def own_keys(path: Path) -> list[str]:
    """The keys a group option defines for its own group (global-package recipes set other groups' keys)."""
    text = path.read_text()
    if GLOBAL_PACKAGE in text or path.relative_to(CONF_DIR).parts[0] == "hydra":
        return []
    return leaf_keys(load_yaml(path))


def named(key: str) -> bool:
    """`key` or `<group>.key` (or `key=...`) somewhere in README; a nested key `a.b` may also be named in
    parts, as `a` (`b`, ...)."""
    if re.search(r"[`.]" + re.escape(key) + r"[`=\[]", README):
        return True
    return "." in key and all(named(part) for part in key.split("."))


GROUPS = config_groups()


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_every_config_group_and_option_is_in_the_table(group):
    rows = table_rows()
    assert group in rows, f"README's config table has no row for the group `{group}`"
    missing = [option for option in GROUPS[group] if f"`{option}`" not in rows[group]]
    assert not missing, f"README's row for `{group}` does not name the option(s) {missing}"


@pytest.mark.parametrize(
    "path", sorted(p for p in CONF_DIR.rglob("*.yaml") if p.parent != CONF_DIR), ids=lambda p: p.stem
)
def test_every_key_of_every_option_is_named(path):
    missing = [key for key in own_keys(path) if not named(key)]
    group = path.parent.relative_to(CONF_DIR).as_posix()
    assert not missing, f"README does not name the key(s) {missing} of {group}={path.stem}"


@pytest.mark.parametrize("entry", ["train", "evaluate", "predict", "export", "serve"])
def test_every_top_level_setting_is_named(entry):
    missing = [key for key in leaf_keys(load_yaml(CONF_DIR / f"{entry}.yaml")) if not named(key)]
    assert not missing, f"README does not name {entry}.yaml's setting(s) {missing}"


def table_row(file_name: str) -> str:
    (row,) = [line for line in README.splitlines() if line.startswith(f"| `{file_name}` |")]
    return row


def test_every_metrics_json_key_is_described(tiny_run):
    run, _ = tiny_run
    keys = set(json.loads((run / "metrics.json").read_text()))
    row = table_row("metrics.json")
    missing = sorted(key for key in keys if f"`{key}`" not in row)
    assert not missing, f"README's metrics.json row does not describe {missing}"


def test_every_evaluation_json_key_is_described(tiny_run, data_dir, tmp_path):
    from cifar_lightning.evaluation import run_evaluation
    from tests.conftest import compose_evaluate

    run, _ = tiny_run
    cfg = compose_evaluate([f"run_dir={run}", f"data.data_dir={data_dir}", "gradcam.count=0"], tmp_path / "out")
    keys = set(run_evaluation(cfg).summary)
    row = table_row("evaluation.json")
    missing = sorted(key for key in keys if f"`{key}`" not in row)
    assert not missing, f"README's evaluation.json row does not describe {missing}"


def test_layout_names_every_module():
    modules = sorted(p.name for p in (ROOT / "cifar_lightning").rglob("*.py") if p.name != "__init__.py")
    layout = README[README.index("## Layout") :]
    missing = [name for name in modules if name not in layout]
    assert not missing, f"README's layout block does not name {missing}"


def test_every_predictions_json_key_is_described():
    """The keys test_prediction.py checks predictions.json against (JSON_KEYS, ENTRY_KEYS) are all in README's row."""
    from tests.test_prediction import ENTRY_KEYS, JSON_KEYS

    row = table_row("predictions.json")
    missing = sorted(key for key in JSON_KEYS | ENTRY_KEYS if f"`{key}`" not in row)
    assert not missing, f"README's predictions.json row does not describe {missing}"
