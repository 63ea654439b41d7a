"""The generated pages of the documentation site: the manifest reference (from the pydantic
schema and the loss registry) and the CLI reference (from click). mkdocs calls them through
``tools/mkdocs_hooks.py`` at every build, so the pages cannot drift from the code;
``python tools/docs_ref.py manifest|cli`` prints one.
"""

from __future__ import annotations

import json
import sys


def _type(prop: dict, defs: dict) -> str:
    """A short, readable type for one JSON-schema property."""
    if "$ref" in prop:
        return "section (below)"
    if "const" in prop:
        return f"`{json.dumps(prop['const'])}`"
    if "enum" in prop:
        return " | ".join(f"`{json.dumps(v)}`" for v in prop["enum"])
    if "anyOf" in prop:
        return " or ".join(_type(p, defs) for p in prop["anyOf"])
    if "oneOf" in prop:  # student.loss: one of the registered losses, each described below
        return "one of " + ", ".join(_ref_name(p["$ref"]) for p in prop["oneOf"])
    kind = prop.get("type", "any")
    if kind == "array":
        return f"list of {_type(prop.get('items', {}), defs)}"
    if kind == "object" and "additionalProperties" in prop and isinstance(prop["additionalProperties"], dict):
        return f"mapping to {_type(prop['additionalProperties'], defs)}"
    bounds = [f"{sym} {prop[key]}" for key, sym in (("minimum", ">="), ("exclusiveMinimum", ">"),
                                                     ("maximum", "<="), ("exclusiveMaximum", "<"))
              if key in prop]
    return kind + (f" ({', '.join(bounds)})" if bounds else "")


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _default(prop: dict) -> str:
    if "default" not in prop:
        return "required"
    value = prop["default"]
    if isinstance(value, dict):
        return "(section defaults)"
    return f"`{json.dumps(value)}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _section(title: str, schema: dict, defs: dict, out: list[str]) -> None:
    """One table for one model, then a table for every section it holds (depth first)."""
    props = schema.get("properties", {})
    required = set(schema.get("required", []))
    out += [f"### `{title}`", ""]
    if schema.get("description"):
        out += [_cell(schema["description"]), ""]
    out += ["| key | type | default | what |", "|---|---|---|---|"]
    nested: list[tuple[str, dict]] = []
    for key, prop in props.items():
        default = "required" if key in required else _default(prop)
        out.append(f"| `{key}` | {_cell(_type(prop, defs))} | {default} | {_cell(prop.get('description', ''))} |")
        for ref in [prop] + prop.get("anyOf", []):
            if "$ref" in ref and _ref_name(ref["$ref"]) != "LossConfig":
                nested.append((f"{title}.{key}", defs[_ref_name(ref["$ref"])]))
    out.append("")
    for path, sub in nested:
        _section(path, sub, defs, out)


def manifest_reference() -> str:
    import stages  # noqa: F401 - registers the sections and export keys the stages own
    from cskd.loss_registry import registered_losses
    from pipeline.schema import manifest_schema

    schema = manifest_schema()
    defs = schema.get("$defs", {})
    out = ["# Manifest reference", "",
           "Generated from the manifest's pydantic schema and the loss registry at every build of this site "
           "(`tools/docs_ref.py`), so it always matches the code; `cskd-pipeline schema` prints the same schema "
           "as JSON. Unknown keys are errors everywhere. The guide to what the settings mean is "
           "[The manifest](../manifest.md).", ""]
    top = {k: v for k, v in schema.items() if k != "$defs"}
    _section("manifest", top, defs, out)
    out += ["## `student.loss`", "",
            "One mapping with `kind` and that loss's own settings, validated by the loss's registered "
            "config class ([Losses](../losses.md)).", ""]
    for kind, entry in sorted(registered_losses().items()):
        loss_schema = entry.config.model_json_schema()
        _section(f"student.loss (kind: {kind})", loss_schema, loss_schema.get("$defs", {}), out)
    return "\n".join(out) + "\n"


def cli_reference() -> str:
    """Every command's options as a table (type, default, help), by mkdocs-click from the click
    commands themselves at every build: the reference cannot drift from the code."""
    return "\n".join([
        "# CLI reference", "",
        "Generated from the click commands at every build of this site (mkdocs-click): each command's "
        "usage, description and options. [Commands](../commands.md) describes them with exit codes.", "",
        "::: mkdocs-click",
        "    :module: pipeline.cli",
        "    :command: main",
        "    :prog_name: cskd-pipeline",
        "    :style: table",
        "    :list_subcommands: true",
        "    :depth: 1", ""])


if __name__ == "__main__":
    print({"manifest": manifest_reference, "cli": cli_reference}[sys.argv[1]]())
