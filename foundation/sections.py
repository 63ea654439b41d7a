"""Manifest keys owned by plug-ins: a stage registers the top-level section it reads (``gate``,
``latency``), a back-end the keys it reads under ``export:`` (``int8``, ``trt``). Each key comes
with its own pydantic type, default and description, and optionally a check of the whole manifest
(a rule that reads another section). The manifest validates these keys through the registry, as
``student.loss`` dispatches to the registered loss, and ``cskd-pipeline schema`` assembles its
JSON schema from it, so a plug-in adds its settings without editing the core schema."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError
    from pydantic.fields import FieldInfo


class SettingsRegistry:
    """Keys -> (type, ``pydantic.Field``), and the model that validates them all."""

    def __init__(self, where: str, reserved: tuple[str, ...] = ()):
        # where: the keys' place, for messages ("export")
        self.where, self.reserved = where, reserved
        self._keys: dict[str, tuple[Any, FieldInfo]] = {}
        self._checks: dict[str, Callable[[Any], str | None]] = {}
        self._model: type[BaseModel] | None = None

    def register(self, key: str, annotation: Any, setting: FieldInfo, *,
                 check: Callable[[Any], str | None] | None = None) -> None:
        """Own ``key``: ``annotation`` validates it (a section class or a constrained scalar),
        ``setting`` gives its default and description; ``check(manifest)``, when given, says in one
        line why this key's value does not fit the rest of the manifest, or returns None."""
        if key in self.reserved or (key in self._keys and self._keys[key][0] is not annotation):
            raise TypeError(f"{self.where} key {key!r} is registered twice")
        self._keys[key] = (annotation, setting)
        if check is not None:
            self._checks[key] = check
        self._model = None

    def unregister(self, key: str) -> None:
        """Remove a key (a test's own plug-in, when the test ends)."""
        self._keys.pop(key, None)
        self._checks.pop(key, None)
        self._model = None

    def checks(self) -> list[Callable[[Any], str | None]]:
        return list(self._checks.values())

    def model(self) -> type[BaseModel]:
        """The pydantic model of every registered key (unknown keys forbidden)."""
        if not self._keys:
            raise RuntimeError(
                f"no {self.where} settings are registered; import the 'stages' package first"
            )
        if self._model is None:
            from pydantic import create_model

            from foundation.fields import Strict

            self._model = create_model(
                f"{self.where.title()}Settings", __base__=Strict, **dict(self._keys)
            )
        return self._model

    def split(self, data: dict, own: set[str]) -> dict:
        """``data`` with every key not in ``own`` validated by its owner's type, defaults filled
        in."""
        mine = {k: v for k, v in data.items() if k in own}
        return {
            **mine,
            **dict(self.model().model_validate({k: v for k, v in data.items() if k not in own})),
        }

    @staticmethod
    def with_errors_of(exc: ValidationError, model: type[BaseModel], data: dict) -> ValidationError:
        """``exc`` (the registered keys' problems) joined by the field problems of ``data`` under
        ``model``'s own fields, so that one validation lists every problem, as pydantic does."""
        from pydantic import ValidationError, create_model

        from foundation.fields import Strict

        fields = create_model(
            f"{model.__name__}Fields",
            __base__=Strict,
            **{name: (f.annotation, f) for name, f in model.model_fields.items()},
        )
        try:
            fields.model_validate(data)
            more = []
        except ValidationError as fixed:
            more = fixed.errors()
        details = [
            {k: e[k] for k in ("type", "loc", "input", "ctx") if k in e}
            for e in [*exc.errors(), *more]
        ]
        return ValidationError.from_exception_data(model.__name__, details)


def all_fields(model: type[BaseModel]) -> dict:
    """``model``'s fields with the keys plug-ins registered on it (``plugin_keys``): what a message
    lists as allowed, and where a location inside the manifest leads."""
    registry = getattr(model, "plugin_keys", None)
    extra = registry.model().model_fields if isinstance(registry, SettingsRegistry) else {}
    return {**model.model_fields, **extra}


EXPORT_SETTINGS = SettingsRegistry("export", reserved=("targets",))
SECTIONS = SettingsRegistry("manifest")
