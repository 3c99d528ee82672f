"""Bake settings from a config file (YAML or JSON), overridden by command-line flags."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ArcoforgeError, first_field_error


class BakeConfig(BaseModel):
    """Settings of ``arcoforge bake``; each field is also a flag of the same name."""

    model_config = ConfigDict(extra="forbid")

    target_root: str | None = None
    cache: str | None = None
    recipe: str | None = None
    workers: int | None = Field(default=None, ge=1)
    prune: int | None = Field(default=None, ge=1)
    engine: str = "local"


def read_config(path: str | Path | None) -> BakeConfig:
    """Parse a config file; errors name the file and the field."""
    if path is None:
        return BakeConfig()
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ArcoforgeError(f"{path}: cannot read config: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ArcoforgeError(f"{path}: not valid YAML or JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ArcoforgeError(f"{path}: a config file is a mapping of settings")
    try:
        return BakeConfig.model_validate(data)
    except ValidationError as exc:
        raise ArcoforgeError(f"{path}: {first_field_error(exc)}") from None
