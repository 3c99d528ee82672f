"""Bake settings from a config file (YAML or JSON), overridden by command-line flags."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ArcoforgeError, first_field_error

M = TypeVar("M", bound=BaseModel)


class BakeConfig(BaseModel):
    """Settings of ``arcoforge bake``; each field is also a flag of the same name."""

    model_config = ConfigDict(extra="forbid")

    target_root: str | None = None
    cache: str | None = None
    recipe: str | None = None
    workers: int | None = Field(default=None, ge=1)
    prune: int | None = Field(default=None, ge=1)
    engine: str = "local"
    skip_failed: bool = False


def read_config(path: str | Path | None) -> BakeConfig:
    """Parse a config file; errors name the file and the field."""
    return BakeConfig() if path is None else read_model(Path(path), BakeConfig, ArcoforgeError)


def read_model(path: Path, model: type[M], error: type[ArcoforgeError]) -> M:
    """Read a YAML (or JSON) mapping into ``model``; errors name the file and the line or
    field, as one line of ``error``."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise error(f"{path}{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: must be a mapping of fields")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(f"{path}: {first_field_error(exc)}") from None
