"""Every setting declared once: its type, default, allowed values and one-line doc, as a field of a
pydantic model. Hydra composes against these declarations (each model is stored in its ConfigStore as
the base node that conf/'s YAML presets extend), and `check` validates the composed config against them
before any work, turning the first problem into one paragraph that names the key, what it must be, and
the fix.

Why pydantic and not OmegaConf-typed dataclasses: OmegaConf's types cannot say "in [0, 1)" or "one of
none, after, first", and a type error it raises at composition leaves Hydra with exit status 1 and its
own message; these models say both, and the composed config is checked in one place, with exit 2.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ConfigDict, ValidationError

from cifar_lightning.errors import ConfigError, one_line

__all__ = ["Settings", "preset", "check", "node_problems", "schema_of", "must_be", "SCHEMAS"]

#: conf/: a top-level key with a folder there is a config group.
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
#: Schemas of nodes that build an object, by the object's import path (the node's `_target_`).
SCHEMAS: dict[str, type[Settings]] = {}
#: Where each schema sits in conf/ (group/option, or the entry config's name): the settings reference's headings.
LOCATIONS: dict[type[Settings], str] = {}
#: Schemas of target-less nodes, by their key in the composed config (e.g. "ood").
NODE_SCHEMAS: dict[str, type[Settings]] = {}


class Settings(BaseModel):
    """Base of every config node's schema: strict types (a typo such as compile=ture is no boolean),
    unknown keys refused, each field with a default and a `description`."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=False, protected_namespaces=())

    #: The object the node builds, written as the node's `_target_` (None: the node builds nothing).
    target: ClassVar[str | None] = None


def defaults(schema: type[Settings]) -> dict[str, Any]:
    """The schema's defaults as a plain dict (nested schemas included), `_target_` first: the ConfigStore node."""
    node: dict[str, Any] = {"_target_": schema.target} if schema.target else {}
    for name, field in schema.model_fields.items():
        value = field.get_default(call_default_factory=True)
        node[field.alias or name] = value.model_dump(by_alias=True) if isinstance(value, BaseModel) else value
    return node


def preset(group: str | None, name: str, key: str | None = None):
    """Class decorator: store the schema's defaults in Hydra's ConfigStore as `<group>/<name>`, the base a
    YAML preset extends (`defaults: [<name>, _self_]`), and register it for `check` (by its target, or
    by `key`, the node's place in the composed config, for a node that builds nothing)."""

    def register(schema: type[Settings]) -> type[Settings]:
        ConfigStore.instance().store(group=group, name=name, node=defaults(schema))
        LOCATIONS[schema] = f"{group}/{name}" if group else name
        if schema.target:
            SCHEMAS[schema.target] = schema
        if key:
            NODE_SCHEMAS[key] = schema
        return schema

    return register


def schema_of(node: Any, key: str) -> type[Settings] | None:
    """The schema that governs a node of the composed config: by its `_target_`, else by its key."""
    if isinstance(node, dict) and isinstance(node.get("_target_"), str) and node["_target_"] in SCHEMAS:
        return SCHEMAS[node["_target_"]]
    return NODE_SCHEMAS.get(key)


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def must_be(schema: type[Settings], name: str) -> str:
    """What a field's values must be, in words derived from its declaration (e.g. "in [0, 1)", "one of a,
    b"); a field may say it itself with json_schema_extra={"must": ...}."""
    field = schema.model_fields[name]
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if "must" in extra:
        return str(extra["must"])
    annotation = field.annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    optional = ""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation, optional = args[0], " (or null)"  # Optional[X]: X or null
    if typing.get_origin(annotation) is Literal:
        choices = [str(c).lower() if isinstance(c, bool) else str(c) for c in typing.get_args(annotation)]
        return f"one of {', '.join(choices)}{optional}"
    bounds = {type(m): m for m in field.metadata}
    low = ("[", _number(bounds[Ge].ge)) if Ge in bounds else ("(", _number(bounds[Gt].gt)) if Gt in bounds else None
    high = ("]", _number(bounds[Le].le)) if Le in bounds else (")", _number(bounds[Lt].lt)) if Lt in bounds else None
    kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(annotation, "")
    if annotation is bool:
        return kind
    if low and high:
        return f"in {low[0]}{low[1]}, {high[1]}{high[0]}{optional}"
    if low == ("(", "0"):
        return f"a positive {'integer' if annotation is int else 'number'}{optional}"
    if low:
        return f"{kind or 'a value'} {'>=' if low[0] == '[' else '>'} {low[1]}{optional}"
    if high:
        return f"{kind or 'a value'} {'<=' if high[0] == ']' else '<'} {high[1]}{optional}"
    if MinLen in bounds or MaxLen in bounds:
        sizes = (getattr(bounds.get(MinLen), "min_length", None), getattr(bounds.get(MaxLen), "max_length", None))
        count = str(sizes[0]) if sizes[0] == sizes[1] else "/".join(str(s) for s in sizes if s is not None)
        return f"a list of {count} items{optional}"
    return (kind or one_line(field.annotation).replace("typing.", "")) + optional


def _problem(schema: type[Settings], node: dict[str, Any], error: dict[str, Any], where: str) -> tuple[str, str]:
    """(the key, the problem in words) of one pydantic error."""
    location = [str(part) for part in error["loc"]]
    while len(location) > 1 and isinstance(node.get(location[0]), dict):  # inside a nested schema: name its key
        nested, inner, step = schema.model_fields[location[0]].annotation, node[location[0]], 1
        if typing.get_origin(nested) is dict and isinstance(inner.get(location[1]), dict):  # a mapping of them
            nested, inner, step = typing.get_args(nested)[1], inner[location[1]], 2
        if not (isinstance(nested, type) and issubclass(nested, Settings)):
            break
        schema, node, where = nested, inner, ".".join([*([where] if where else []), *location[:step]])
        location = location[step:]
    if not location:  # a check across fields (a model validator): its own message says it all
        return where, str(error["msg"]).removeprefix("Value error, ")
    name = location[0]
    key = f"{where}.{name}" if where else name
    if error["type"] == "extra_forbidden":
        known = ", ".join(f.alias or n for n, f in schema.model_fields.items())
        return key, f"{where or 'the config'} has no setting `{name}` (its settings: {known})"
    if name in schema.model_fields and error["type"] != "value_error":
        field = schema.model_fields[name]
        doc = f" ({field.description})" if field.description else ""
        return key, f"{key} must be {must_be(schema, name)}, got {node.get(name)!r}{doc}"
    return key, f"{key}: {str(error['msg']).removeprefix('Value error, ')}, got {node.get(name)!r}"


def node_problems(schema: type[Settings], node: dict[str, Any], where: str) -> list[tuple[str, str]]:
    own = {k: v for k, v in node.items() if k != "_target_" and not k.startswith("_")}
    try:
        schema.model_validate(own)
    except ValidationError as exc:
        return [_problem(schema, own, error, where) for error in exc.errors()]
    return []


def problems(node: Any, key: str = "") -> list[tuple[str, str]]:
    """Every (key, problem) in a resolved config node: nodes with a schema are validated against it,
    the others are searched for nodes that have one."""
    schema = schema_of(node, key)
    if schema is not None and isinstance(node, dict):
        found = node_problems(schema, node, key)
        # Fields the schema types loosely (Any, dict) may hold nodes with schemas of their own.
        for name, value in node.items():
            if name not in schema.model_fields or schema.model_fields[name].annotation in (Any, dict):
                found += problems(value, f"{key}.{name}" if key else name) if isinstance(value, dict) else []
        return found
    if isinstance(node, dict):
        return [p for name, value in node.items() for p in problems(value, f"{key}.{name}" if key else name)]
    return []


def check(cfg: DictConfig, entry: str, outcome: str, root: type[Settings] | None = None) -> None:
    """Refuse a composed config that breaks its declarations, with one paragraph naming the first problem
    and its fix (ConfigError, exit status 2). `entry` is the script (train, evaluate, ...), `outcome`
    what did not happen (e.g. "nothing was trained"), `root` the schema of the entry's own top-level keys."""
    container = _resolved({k: v for k, v in cfg.items_ex(resolve=False) if k != "hydra"}, cfg, entry, outcome)
    found: list[tuple[str, str]] = []
    own: dict[str, Any] = {}
    if root is not None:
        own = {k: v for k, v in container.items() if k in root.model_fields or k in root.model_computed_fields}
        found += node_problems(root, own, "")
        container = {k: v for k, v in container.items() if k not in root.model_fields}
    found += problems(container)
    if found:
        key, problem = found[0]
        group = key.split(".")[0] or entry
        where = f"conf/{_folder(group, root, container)}/" if _folder(group, root, container) else f"conf/{entry}.yaml"
        whole_group = key == group and (key not in own or isinstance(own[key], dict))  # not one top-level value
        example = f"{group}.<key>=<value>" if whole_group else f"{key}=<value>"
        raise ConfigError(
            f"invalid `{group}` config: {problem}. Fix the value on the command line (python {entry}.py "
            f"{example}) or in {where}; {outcome}."
        )


def _folder(group: str, root: type[Settings] | None, container: dict[str, Any]) -> str | None:
    """The folder of conf/ whose presets fill the top-level node `group` (predict's `ood` is conf/ood_runtime/'s)."""
    field = root.model_fields.get(group) if root is not None else None
    schema = field.annotation if field is not None else schema_of(container.get(group), group)
    location = LOCATIONS.get(schema, "") if isinstance(schema, type) else ""
    folder = location.rsplit("/", 1)[0] if "/" in location else group
    return folder if (CONF_DIR / folder).is_dir() else None


def _resolved(node: Any, cfg: DictConfig, entry: str, outcome: str, where: str = "") -> Any:
    """The config as plain values, each interpolation resolved; one that needs a running Hydra job
    (${hydra:...}, when composed outside one) is left as written, since no setting is checked against it."""
    if isinstance(node, dict):
        return {k: _resolved(v, cfg, entry, outcome, f"{where}.{k}" if where else str(k)) for k, v in node.items()}
    try:
        value = OmegaConf.select(cfg, where, throw_on_missing=False) if where else node
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    except OmegaConfBaseException as exc:
        if "HydraConfig was not set" in str(exc):
            return None
        raise ConfigError(
            f"invalid config: {one_line(exc)}. Fix the value on the command line (python {entry}.py "
            f"{where}=<value>) or in conf/; {outcome}."
        ) from exc
