"""The configuration reference page (docs/reference/configuration.md), derived from the declarations alone:
the pydantic schemas give every key's type, default, range and doc; conf/'s presets give the options of each
group and, from their header comments, what each is for. docs/ holds the generated page, and a test fails
when it and the schemas disagree, so the page cannot drift."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml

import cifar_lightning.config  # noqa: F401  (registers the schemas)
from cifar_lightning.config.schema import CONF_DIR, LOCATIONS, NODE_SCHEMAS, SCHEMAS, Settings, must_be
from cifar_lightning.config.train import TrainSettings

PAGE = Path("docs/reference/configuration.md")
COMMAND = "python -m cifar_lightning.config --out docs/reference/configuration.md"
ENTRIES = ("train", "evaluate", "predict", "export", "serve")
#: Groups whose keys are another library's arguments (no schema here) and where those are documented.
FOREIGN = {
    "trainer": "any argument of `lightning.Trainer` (Lightning's documentation), e.g. `trainer.max_epochs=5`",
    "callbacks": "Lightning callbacks by name; set one to null to drop it, e.g. `callbacks.early_stopping=null`",
    "logger": "Lightning loggers by name: TensorBoard's and MLflow's arguments",
    "paths": "where runs are written: `root_dir`, `log_dir` (logs/), `output_dir` (the run's, set by Hydra)",
    "hydra": "Hydra's own settings: run and sweep directories",
    "hydra/launcher": "hydra-submitit-launcher's settings (`hydra.launcher.<key>`)",
}
#: Groups whose presets are whole recipes or studies (`# @package _global_`): listed with their docs only.
RECIPES = ("experiment", "ablation", "debug", "hparams_search")
#: Groups train.yaml has no default for, added with `+group=option`.
ADDED = ("ablation",)


class MissingDoc(ValueError):
    """A declared setting without a description: the reference would show an empty cell."""


def declared_schemas() -> list[type[Settings]]:
    """Every schema a setting is declared in: the registered ones and every schema nested in them."""
    found: list[type[Settings]] = []
    pending = [*LOCATIONS, *SCHEMAS.values(), *NODE_SCHEMAS.values(), TrainSettings]
    while pending:
        schema = pending.pop()
        if schema in found:
            continue
        found.append(schema)
        for field in schema.model_fields.values():
            for inner in (field.annotation, *get_args(field.annotation), mapped_schema(field.annotation)):
                if isinstance(inner, type) and issubclass(inner, Settings):
                    pending.append(inner)
    return sorted(found, key=lambda schema: (schema.__module__, schema.__name__))


def undocumented() -> list[str]:
    """`module.Class.field` of every declared setting without a description."""
    return [
        f"{schema.__module__}.{schema.__name__}.{name}"
        for schema in declared_schemas()
        for name, field in schema.model_fields.items()
        if not (field.description or "").strip()
        and not isinstance(field.get_default(call_default_factory=True), Settings)
    ]


def doc_of(schema: type[Settings], name: str, prefix: str) -> str:
    description = (schema.model_fields[name].description or "").strip()
    if not description:
        raise MissingDoc(
            f"{schema.__module__}.{schema.__name__}.{name} (`{prefix}{name}`) has no description: give its Field "
            f'a description="..." (one line: what the setting does), then run {COMMAND}'
        )
    return markdown_text(description)


def markdown_text(text: str) -> str:
    """Plain text as a Markdown table cell shows it: no HTML tag from `<run dir>`, no bold from `__init__`."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;").replace("_", "\\_").replace("*", "\\*")


def shown(value: Any) -> str:
    """A default as a person types it on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(shown(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {shown(v)}" for k, v in value.items()) + "}"
    return str(value)


def mapped_schema(annotation: Any) -> type[Settings] | None:
    """The value schema of a `dict[str, <Settings>]` field (e.g. ood.sets), else None."""
    args = get_args(annotation) if get_origin(annotation) is dict else ()
    return args[1] if len(args) == 2 and isinstance(args[1], type) and issubclass(args[1], Settings) else None


def rows(schema: type[Settings], prefix: str = "") -> list[str]:
    """One table row per setting of `schema`, nested schemas flattened into dotted keys."""
    out = []
    for name, field in schema.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, Settings):
            out += rows(type(default), f"{prefix}{name}.")
            continue
        cell = shown(default).replace("|", "\\|")
        allowed, doc = markdown_text(must_be(schema, name)), doc_of(schema, name, prefix)
        out.append(f"| `{prefix}{name}` | `{cell}` | {allowed} | {doc} |")
        if (inner := mapped_schema(field.annotation)) is not None:
            out += rows(inner, f"{prefix}{name}.<name>.")
    return out


def table(schema: type[Settings], prefix: str = "") -> list[str]:
    return ["| key | default | allowed | what it does |", "|---|---|---|---|", *rows(schema, prefix), ""]


def header_doc(path: Path) -> str:
    """The first sentence of a preset's header comment (its `# @package` line and example commands skipped)."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if line.lstrip("#").startswith("   ") and lines:
            break  # an indented example command ends the description
        if text.startswith("@package") or text.startswith("python ") or not text:
            continue
        lines.append(text)
    sentence = re.split(r"(?<=\.)\s+(?=[A-Z])|,? e\.g\.?(\s|$)", " ".join(lines), maxsplit=1)[0].rstrip(".:;, ")
    return sentence.replace("|", "\\|")


def own_values(path: Path, most: int = 8) -> str:
    """The values a preset sets beside its base (`key=value`, comma-separated; Hydra's own `_..._` keys left out)."""
    node = yaml.safe_load(path.read_text()) or {}

    def leaves(value: Any, key: str) -> list[str]:
        if isinstance(value, dict) and value:
            return [leaf for k, v in value.items() if k != "defaults" for leaf in leaves(v, f"{key}.{k}" if key else k)]
        hidden = key.rsplit(".", 1)[-1].startswith("_")
        return [f"`{key}={shown(value)}`".replace("|", "\\|")] if key and not hidden else []

    values = leaves(node, "")
    more = f" and {len(values) - most} more (conf/{path.parent.name}/{path.name})" if len(values) > most else ""
    return ", ".join(values[:most]) + more


def options(group: str) -> list[Path]:
    folder = CONF_DIR / group
    return sorted(folder.glob("*.yaml")) if folder.is_dir() else []


def options_list(group: str) -> list[str]:
    """The group's presets, one bullet each: its name, what it is for, and what it sets."""
    bullets = []
    for path in options(group):
        doc = header_doc(path)
        sets = own_values(path) if "@package _global_" not in path.read_text() else ""
        parts = [part for part in (doc, f"sets {sets}" if sets else "") if part]
        plus = "+" if group in ADDED else ""
        bullets.append(f"- `{plus}{group}={path.stem}`" + (f": {'; '.join(parts)}" if parts else ""))
    return [*bullets, ""]


def schemas_by_group() -> dict[str, list[type[Settings]]]:
    """conf/'s groups and the schemas their presets extend (a schema registered for a group conf/ lacks, as a
    test's, is no setting of the project)."""
    groups: dict[str, list[type[Settings]]] = {}
    for schema, where in sorted(LOCATIONS.items(), key=lambda item: item[1]):
        group = where.rsplit("/", 1)[0] if "/" in where else None
        if group is not None and (CONF_DIR / group).is_dir():
            groups.setdefault(group, []).append(schema)
    return groups


def entry_section(entry: str) -> list[str]:
    parts = [f"### `{entry}.py`", "", f"Its own keys (conf/{entry}.yaml), as `python {entry}.py <key>=<value>`:", ""]
    if entry == "train":
        parts += (
            table(TrainSettings)[:-1] + rows(NODE_SCHEMAS["hpo"], "hpo.") + rows(NODE_SCHEMAS["ablation"], "ablation.")
        )
        return [*parts, ""]
    (schema,) = [s for s, where in LOCATIONS.items() if where == f"{entry}_schema"]
    return parts + table(schema)


def group_section(group: str, schemas: list[type[Settings]]) -> list[str]:
    parts = [f"### `{group}`", "", "Presets:", "", *options_list(group)]
    for schema in schemas:
        name = LOCATIONS[schema].rsplit("/", 1)[1].removesuffix("_schema")
        built = f", builds `{schema.target}`" if schema.target else ""
        # Its place in the composed config: the folder's, but predict.yaml and serve.yaml load ood_runtime@ood.
        key = "ood" if group == "ood_runtime" else group.replace("/", ".")
        parts += [f"Keys of `{name}`{built}:", "", *table(schema, f"{key}.")]
    return parts


def callback_tables() -> list[str]:
    """The project's own callbacks, under the name conf/callbacks/default.yaml gives them (`<name>` if none)."""
    named = {
        node.get("_target_"): name
        for name, node in (yaml.safe_load(options("callbacks")[0].read_text()) or {}).items()
        if isinstance(node, dict)
    }
    parts = []
    for target, schema in sorted(SCHEMAS.items()):
        if schema not in LOCATIONS and target.startswith("cifar_lightning.callbacks"):
            prefix = f"callbacks.{named.get(target, '<name>')}."
            parts += [f"Keys of a `{target}` callback:", "", *table(schema, prefix)]
    return parts


def reference() -> str:
    """The whole page."""
    parts = [
        "# Configuration reference",
        "",
        f"Generated from `cifar_lightning/config/` and `conf/` by `{COMMAND}`; do not edit by hand.",
        "",
        "Pick a preset with `group=option`, change a key with `group.key=value`, drop a node with `group.key=null`.",
        "A value outside its allowed range stops the command before any work, with one `error:` paragraph that",
        "names the key, what it must be and the fix (exit status 2); an unknown key is refused by Hydra (exit 1).",
        "",
        "## Entry points",
        "",
    ]
    for entry in ENTRIES:
        parts += entry_section(entry)
    parts += ["## Config groups", ""]
    groups = schemas_by_group()
    for group in sorted(set(groups) | set(FOREIGN)):
        if group in groups:
            parts += group_section(group, groups[group])
        else:
            parts += [f"### `{group}`", "", FOREIGN[group] + ".", "", "Presets:", "", *options_list(group)]
            parts += callback_tables() if group == "callbacks" else []
    parts += ["## Recipes and studies", "", "Presets that set keys of several groups at once.", ""]
    for group in RECIPES:
        parts += [f"### `{group}`", "", *options_list(group)]
    return "\n".join(parts).rstrip() + "\n"
