"""Read a manifest file: bounded, UTF-8, plain YAML data, then the pydantic schema.

Every failure is a ``ManifestError``: one line per problem (up to
``MAX_PROBLEMS``), each naming the file, the field path, what was found and what
is allowed; an unknown key gets the nearest allowed key as "did you mean".
"""

from __future__ import annotations

import difflib
import re
import typing
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

import stages  # noqa: F401 - registers the stages, export back-ends and losses a manifest may name
from cskd.loss_base import LossConfig, registered_losses
from foundation.errors import ManifestError
from foundation.manifest import Manifest
from foundation.sections import all_fields

MAX_MANIFEST_BYTES = 1 << 20
MAX_PROBLEMS = 10
_POSITIONED = re.compile(r"^\d+:\d+: ")  # a schema error's line:column, as compilers print file:line:column


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that also refuses duplicate keys and anchors/aliases.

    Aliases are refused outright: a manifest never needs them, and they are how
    'billion laughs' files blow up in memory once expanded.
    """

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ManifestError(f"line {event.start_mark.line + 1}: YAML aliases ('*{event.anchor}') are not "
                                f"allowed in a manifest; write the value out")
        event = self.peek_event()
        if getattr(event, "anchor", None):
            raise ManifestError(f"line {event.start_mark.line + 1}: YAML anchors ('&{event.anchor}') are not "
                                f"allowed in a manifest; write the value out")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise ManifestError(f"line {key_node.start_mark.line + 1}: key {key!r} is not a plain string; "
                                    f"manifest keys are field names")
            if key in seen:
                raise ManifestError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r}; keep one")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def yaml_positions(text: str) -> dict[tuple, tuple[int, int]]:
    """(line, column), 1-based, of every key in the document by its path (``("teacher", "train",
    "epochs")``), and of every value under the path with ``"="`` appended: where a schema error
    points. Empty for a document that does not parse (``parse_yaml`` says why)."""
    try:
        root = yaml.compose(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except (yaml.YAMLError, ManifestError, RecursionError):
        return {}
    positions: dict[tuple, tuple[int, int]] = {}

    def walk(node, path: tuple) -> None:
        positions[(*path, "=")] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                positions[(*path, key.value)] = (key.start_mark.line + 1, key.start_mark.column + 1)
                walk(value, (*path, key.value))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, (*path, index))

    if root is not None:
        walk(root, ())
    return positions


def _position(error: dict, positions: dict[tuple, tuple[int, int]]) -> str:
    """``"L:C: "`` of the node an error is about: an unknown key's own position, a bad value's,
    or for a missing key the mapping that should hold it; "" where nothing matches."""
    loc = tuple(str(p) if not isinstance(p, int) else p for p in error["loc"])
    candidates = [loc] if error["type"] == "extra_forbidden" else []
    candidates += [(*loc[:n], "=") for n in range(len(loc), -1, -1)]
    found = next((positions[c] for c in candidates if c in positions), None)
    return f"{found[0]}:{found[1]}: " if found else ""


def parse_yaml(text: str) -> object:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = (exc.problem or str(exc)).strip()
        if "could not determine a constructor" in str(exc):
            problem = "tags such as '!!python/object' are not allowed; a manifest holds plain data only"
        raise ManifestError(f"{where}invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"invalid YAML: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise ManifestError("YAML nested too deeply") from None


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


OVERRIDE_PREFIX = "-o "


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """``key.path=value`` edits (Hydra/OmegaConf dotlists); values are YAML (``3``, ``true``,
    ``[1, 64]``). The result is validated like the file, so overrides are part of the ids.
    ``section.kind=other`` replaces the section with ``other``'s defaults; later overrides of that
    section's keys apply on top (``-o student.loss.kind=kd -o student.loss.temperature=2``)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ManifestError(f"--set {item!r}: write key.path=value, e.g. student.train.epochs=3")
        node = data
        for part in parts[:-1]:
            if not isinstance(node.get(part, {}), dict):
                raise ManifestError(f"--set {item!r}: {part!r} is not a section")
            node = node.setdefault(part, {})
        value = parse_yaml(text) if text.strip() else None
        if parts[-1] == "kind" and node.get("kind") not in (None, value):
            # A section's kind picks its settings (a loss, a source): the old kind's settings mean
            # nothing to the new one, so the section starts again from the new kind's defaults.
            node.clear()
        node[parts[-1]] = value
    return data


def manifest_from_text(text: str, overrides: list[str] | tuple[str, ...] = ()) -> Manifest:
    data = parse_yaml(text)
    if data is None:
        raise ManifestError("the manifest is empty; see `cskd-pipeline schema` or manifests/quickstart.yaml")
    if not isinstance(data, dict):
        raise ManifestError(f"the manifest must be a mapping of sections, found a {type(data).__name__}")
    data = apply_overrides(data, overrides)
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(format_validation_error(exc, overrides, yaml_positions(text), data)) from None
    manifest._overrides = tuple(overrides)
    return manifest


def load_manifest(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Manifest:
    """Read and validate ``path``; raises ``ManifestError`` whose message starts with the path."""
    path = Path(path)
    try:
        if not path.is_file():
            raise ManifestError("file not found; give an existing manifest, or the name of an example installed "
                                "with the package (e.g. -m quickstart)")
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise ManifestError(f"file is {size} bytes; a manifest is at most {MAX_MANIFEST_BYTES} bytes")
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ManifestError(f"not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None
        if "\x00" in text:
            raise ManifestError("contains NUL bytes; a manifest is plain text")
        return manifest_from_text(text, overrides)
    except ManifestError as exc:  # each line names the file, or the override it is about
        lines = str(exc).splitlines()
        raise ManifestError("\n".join(line if line.startswith((OVERRIDE_PREFIX, "--set ")) else
                                      f"{path}:{line}" if _POSITIONED.match(line) else f"{path}: {line}"
                                      for line in lines)) from None
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read ({exc.strerror})") from None
