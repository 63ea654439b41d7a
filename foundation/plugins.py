"""Plug-ins: installed distributions that add models, losses, export back-ends, stages or
serving engines through entry points (pytest's and MLflow's way), so a user extends the pipeline
without forking it. A distribution declares them in its ``pyproject.toml``::

    [project.entry-points."cskd_pipeline.models"]
    acme_net = "acme_nets.models:acme_net"   # a factory (num_classes=, in_channels=) -> nn.Module
    [project.entry-points."cskd_pipeline.losses"]
    acme_kd = "acme_nets.losses"                # registers kind "acme_kd" with @register_loss

The entry point's name is the name a manifest uses. Loading it imports its module; the module
registers what it adds with the registry that owns it (``register_loss``, a ``Stage`` subclass,
``register_backend``); a model entry point may name the factory itself, registered under the entry
point's name. This module is the one place that reads entry points, and it loads each only when it
is needed (Olive's rule: a pass is imported when a table names it): a model or a loss when a
manifest names one that is not built in; stages and back-ends with the stages package (planning
asks every stage); a serving engine when ``serve`` names it. A manifest never names an import path:
it is data, and may come from someone else; only installed distributions add names.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from importlib import metadata

from foundation.errors import MissingBackend

GROUPS = {
    "models": "cskd_pipeline.models",
    "losses": "cskd_pipeline.losses",
    "backends": "cskd_pipeline.backends",
    "stages": "cskd_pipeline.stages",
    "engines": "cskd_pipeline.serving_engines",
}


class PluginError(MissingBackend):
    """A plug-in that is installed and cannot be used: exit 3, one line naming its distribution."""


@dataclass(frozen=True)
class Plugin:
    group: str  # a key of GROUPS
    name: str  # the entry point's name: what a manifest (or `serve --engine`) names
    value: str  # module:attribute
    distribution: str  # "name version"
    location: str  # where the distribution is installed

    def describe(self) -> str:
        return f"{self.group} entry point {self.name!r} ({self.value})"


_LOADED: dict[tuple[str, str], object] = {}
# a study's or search's threads may validate manifests at once; reentrant, as a plug-in's module may
# import the stages package, which loads the stage and back-end plug-ins
_LOCK = threading.RLock()


def installed(group: str | None = None) -> list[Plugin]:
    """The plug-ins installed here (of one group, or of every group), none of them loaded."""
    found = []
    for key, name in GROUPS.items():
        if group is None or key == group:
            found += [_plugin(key, point) for point in metadata.entry_points(group=name)]
    return sorted(found, key=lambda p: (p.group, p.name))


def _plugin(group: str, point: metadata.EntryPoint) -> Plugin:
    dist = point.dist
    if dist is None:
        return Plugin(group, point.name, point.value, "an unknown distribution", "?")
    return Plugin(group, point.name, point.value, f"{dist.metadata['Name']} {dist.version}",
                  str(dist.locate_file("")))


def load(group: str, name: str) -> object | None:
    """The object of ``group``'s entry point ``name`` (its module imported), or None if no
    installed distribution has one. ``PluginError`` (one line) when the plug-in fails to load."""
    key = (group, name)
    with _LOCK:
        if key in _LOADED:
            return _LOADED[key]
        points = [p for p in metadata.entry_points(group=GROUPS[group]) if p.name == name]
        if not points:
            return None
        _LOADED[key] = _load_one(_plugin(group, points[0]), points[0])
        return _LOADED[key]


def loaded(group: str) -> set[str]:
    """The names of ``group`` that installed plug-ins added in this process so far."""
    return {name for g, name in _LOADED if g == group}


def load_all(group: str) -> dict[str, object]:
    """Every installed plug-in of ``group``, loaded (stages, back-ends: planning asks them all)."""
    return {p.name: load(group, p.name) for p in installed(group)}


def _load_one(plugin: Plugin, point: metadata.EntryPoint) -> object:
    try:
        return point.load()
    except Exception as exc:  # noqa: BLE001 - what someone else's code raises: one line naming it
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise PluginError(f"plug-in {plugin.distribution}: the {plugin.describe()} failed to load "
                          f"({type(exc).__name__}: {first}); fix or uninstall that distribution"
                          ) from None


def failed(group: str, name: str, why: str) -> PluginError:
    """The one-line error for a plug-in that loaded and does not do what its group promises."""
    point = next((p for p in installed(group) if p.name == name), None)
    if point is None:  # uninstalled since it loaded
        return PluginError(f"plug-in: the {group} entry point {name!r} {why}")
    return PluginError(f"plug-in {point.distribution}: the {point.describe()} {why}")
