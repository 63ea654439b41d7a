"""What the manifest's sections share: their base (``Strict``: unknown keys refused, values
frozen), output paths that stay inside the working directory, top-1 points, export target names."""

from __future__ import annotations

from pathlib import PurePosixPath, PureWindowsPath
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from foundation.backends import backends


class Strict(BaseModel):
    """A manifest section: an unknown key is an error (a typo never passes silently), and a
    validated manifest cannot change under the stages that read it."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _relative_inside(value: str) -> str:
    """Output paths stay inside the working directory: relative, no '..', no drive."""
    if not value or "\x00" in value:
        raise ValueError("must be a non-empty path")
    if (
        PurePosixPath(value).is_absolute()
        or PureWindowsPath(value).is_absolute()
        or PureWindowsPath(value).drive
    ):
        raise ValueError(f"{value!r} is absolute; use a path relative to the working directory")
    if ".." in PurePosixPath(value.replace("\\", "/")).parts:
        raise ValueError(f"{value!r} escapes the working directory; remove the '..'")
    return value


def known_target(name: str) -> str:
    if name not in backends():
        raise ValueError(f"unknown export target {name!r}; known: {', '.join(backends())}")
    return name


RelativePath = Annotated[str, Field(max_length=4096), AfterValidator(_relative_inside)]
Points = Annotated[float, Field(ge=0, le=100)]
Target = Annotated[str, AfterValidator(known_target)]
