"""The settings reference, derived from the schemas: python -m cifar_lightning.config [--out settings.md].

One Markdown table per config node (group option or entry point): key, default, allowed values, doc.
"""

import argparse
from pathlib import Path

import cifar_lightning.config  # noqa: F401  (registers the schemas)
from cifar_lightning.config.schema import LOCATIONS, Settings, must_be


def table(schema: type[Settings], prefix: str = "") -> list[str]:
    """The rows of one schema (nested schemas flattened into dotted keys)."""
    rows = []
    for name, field in schema.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, Settings):
            rows += table(type(default), f"{prefix}{name}.")
            continue
        shown = "null" if default is None else str(default).lower() if isinstance(default, bool) else default
        doc = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{prefix}{name}` | `{shown}` | {must_be(schema, name)} | {doc} |")
    return rows


def reference() -> str:
    """Every registered schema, by its place in conf/ (the group and the base its presets extend)."""
    parts = ["# Settings", "", "Generated from cifar_lightning/config/ by `python -m cifar_lightning.config`.", ""]
    for schema, where in sorted(LOCATIONS.items(), key=lambda item: item[1]):
        built = f" (builds `{schema.target}`)" if schema.target else ""
        parts += [f"## {where}{built}", "", "| key | default | allowed | doc |", "|---|---|---|---|"]
        parts += [*table(schema), ""]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write the Markdown here instead of printing it")
    args = parser.parse_args()
    text = reference()
    if args.out:
        args.out.write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
