"""Read a manifest file: bounded, UTF-8, plain YAML data, then the pydantic schema.

Every failure is a ``ManifestError``: one line per problem (up to
``MAX_PROBLEMS``), each naming the file, the field path, what was found and what
is allowed; an unknown key gets the nearest allowed key as "did you mean".
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path

from pydantic import BaseModel, ValidationError

import stages  # noqa: F401 - registers the stages, export back-ends and losses a manifest may name
from cskd.loss_base import LossConfig, registered_losses
from foundation.errors import ManifestError
from foundation.manifest import Manifest
from foundation.sections import all_fields
from pipeline.manifest_yaml import (
    OVERRIDE_PREFIX,
    manifest_data,
    naming,
    read_manifest_text,
    yaml_positions,
)

MAX_PROBLEMS = 10


def _position(error: dict, positions: dict[tuple, tuple[int, int]]) -> str:
    """``"L:C: "`` of the node an error is about: an unknown key's own position, a bad value's,
    or for a missing key the mapping that should hold it; "" where nothing matches."""
    loc = tuple(str(p) if not isinstance(p, int) else p for p in error["loc"])
    candidates = [loc] if error["type"] == "extra_forbidden" else []
    candidates += [(*loc[:n], "=") for n in range(len(loc), -1, -1)]
    found = next((positions[c] for c in candidates if c in positions), None)
    return f"{found[0]}:{found[1]}: " if found else ""


def _models_in(tp: object) -> list[type[BaseModel]]:
    """The pydantic models inside a type annotation (unions, Optional, Annotated, list)."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    return [m for arg in typing.get_args(tp) for m in _models_in(arg)]


def _field_model(model: type[BaseModel], loc: tuple, data: object = None) -> type[BaseModel] | None:
    """The pydantic model at ``loc`` inside ``model`` (to list the keys it allows). A loss section is
    typed as the registry's base class: its keys are those of the registered loss its ``kind`` names
    in ``data`` (the manifest as read)."""
    found = _declared_model(model, loc)
    if found is LossConfig:
        kind = _value_at(data, loc).get("kind") if isinstance(_value_at(data, loc), dict) else None
        registered = registered_losses().get(kind) if isinstance(kind, str) else None
        return registered.config if registered is not None else found
    return found


def _value_at(data: object, loc: tuple) -> object:
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            return None
    return data


def _declared_model(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    current: object = model
    for part in loc:
        if isinstance(part, int):  # a list index: stay on the element type
            continue
        models = _models_in(current)
        tagged = [m for m in models
                  if "kind" in m.model_fields and part in typing.get_args(m.model_fields["kind"].annotation)]
        if tagged:  # a discriminated union puts the tag in the location
            current = tagged[0]
            continue
        fields = {(f.alias or n): f for m in models for n, f in all_fields(m).items()}
        if part not in fields:
            return None
        current = fields[part].annotation
    models = _models_in(current)
    return models[0] if len(models) == 1 else None


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(error: dict, data: object = None) -> str:
    loc = tuple(error["loc"])
    # A key is user text: a control character in it must not break the one-line-per-problem form.
    path = ".".join(str(p) if str(p).isprintable() and str(p) else repr(p) for p in loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        parent = _field_model(Manifest, loc[:-1], data)
        allowed = sorted((f.alias or n) for n, f in all_fields(parent).items()) if parent else []
        near = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        return f"{path}: unknown key {loc[-1]!r}{hint}" + (f" (allowed keys: {', '.join(allowed)})" if allowed else "")
    if error["type"] == "missing":
        return f"{path}: required field is missing; add it"
    msg = error["msg"].removeprefix("Value error, ")
    return f"{path}: found {_short(error.get('input'))}; {msg}"


def _misspelt(errors: list[dict], data: object = None) -> set[tuple]:
    """Where a required key is missing because it was misspelt: the did-you-mean of an unknown key."""
    found = set()
    for error in errors:
        if error["type"] == "extra_forbidden":
            loc = tuple(error["loc"])
            parent = _field_model(Manifest, loc[:-1], data)
            allowed = [(f.alias or n) for n, f in all_fields(parent).items()] if parent else []
            found.update((*loc[:-1], near) for near in difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6))
    return found


def format_validation_error(exc: ValidationError, overrides: list[str] | tuple[str, ...] = (),
                            positions: dict[tuple, tuple[int, int]] | None = None, data: object = None) -> str:
    """One line per problem, unknown keys first. A misspelt key is one line (its did-you-mean), not
    also a missing one. A problem in a ``-o key=value`` override names the override."""
    errors = exc.errors()
    misspelt = _misspelt(errors, data)
    errors = sorted((e for e in errors if not (e["type"] == "missing" and tuple(e["loc"]) in misspelt)),
                    key=lambda e: e["type"] != "extra_forbidden")

    def blamed(error: dict) -> str:
        line = _describe(error, data)
        dotted = ".".join(map(str, error["loc"]))
        culprit = next((o for o in reversed(overrides) if dotted == o.partition("=")[0].strip()
                        or dotted.startswith(o.partition("=")[0].strip() + ".")), None)
        return f"{OVERRIDE_PREFIX}{culprit}: {line}" if culprit else _position(error, positions or {}) + line

    lines = list(dict.fromkeys(blamed(e) for e in errors))
    if len(lines) > MAX_PROBLEMS:
        lines = [*lines[:MAX_PROBLEMS], f"... and {len(lines) - MAX_PROBLEMS} more problems"]
    return "\n".join(lines)


def manifest_from_text(text: str, overrides: list[str] | tuple[str, ...] = ()) -> Manifest:
    data = manifest_data(text, overrides)
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(format_validation_error(exc, overrides, yaml_positions(text), data)) from None
    manifest._overrides = tuple(overrides)
    return manifest


def load_manifest(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Manifest:
    """Read and validate ``path``; raises ``ManifestError`` whose message starts with the path."""
    with naming(path):
        return manifest_from_text(read_manifest_text(path), overrides)
