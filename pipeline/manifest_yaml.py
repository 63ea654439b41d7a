"""A manifest file as plain data: bounded, UTF-8, YAML without tags, anchors or duplicate keys,
with the ``-o key=value`` overrides applied. No schema here (``manifest_io`` validates), so a
command that needs one field of a manifest (``gc``: its store) reads it without the stages'
registries, and without torch.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import yaml

from foundation.errors import ManifestError

MAX_MANIFEST_BYTES = 1 << 20
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


def read_manifest_text(path: str | Path) -> str:
    """The file's text, refused when missing, over ``MAX_MANIFEST_BYTES``, not UTF-8 or with NUL bytes."""
    path = Path(path)
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
    return text


def manifest_data(text: str, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """The document as a mapping of sections, overrides applied."""
    data = parse_yaml(text)
    if data is None:
        raise ManifestError("the manifest is empty; see `cskd-pipeline schema` or manifests/quickstart.yaml")
    if not isinstance(data, dict):
        raise ManifestError(f"the manifest must be a mapping of sections, found a {type(data).__name__}")
    return apply_overrides(data, overrides)


@contextlib.contextmanager
def naming(path: str | Path) -> Iterator[None]:
    """Every ``ManifestError`` raised inside names the file (``path:line:column:`` where a line
    is known) or the override it is about; an unreadable file is one too."""
    try:
        yield
    except ManifestError as exc:
        lines = str(exc).splitlines()
        raise ManifestError("\n".join(line if line.startswith((OVERRIDE_PREFIX, "--set ")) else
                                      f"{path}:{line}" if _POSITIONED.match(line) else f"{path}: {line}"
                                      for line in lines)) from None
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read ({exc.strerror})") from None


def store_of(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> str:
    """The manifest's ``store`` (default ``.cskd``), validated as the schema validates it, and nothing
    else read: a manifest broken elsewhere, or written for another version, still names its store."""
    from pydantic import BaseModel, ConfigDict, ValidationError

    from foundation.fields import RelativePath

    class _Store(BaseModel):
        model_config = ConfigDict(extra="ignore")
        store: RelativePath = ".cskd"

    with naming(path):
        try:
            return _Store.model_validate(manifest_data(read_manifest_text(path), overrides)).store
        except ValidationError as exc:  # the message the schema gives: what is wrong, and the fix
            raise ManifestError(f"store: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
