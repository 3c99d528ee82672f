"""Bake settings from a config file (YAML or JSON), overridden by command-line flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from arcoforge.errors import ArcoforgeError, first_field_error

M = TypeVar("M", bound=BaseModel)


class DaskSettings(BaseModel):
    """The dask engine: a scheduler's address, or the LocalCluster it starts."""

    model_config = ConfigDict(extra="forbid")

    scheduler: str | None = None
    threads_per_worker: int = Field(default=1, ge=1)
    memory_limit: str | int | None = "auto"
    allowed_failures: int = Field(default=3, ge=0)


class SparkSettings(BaseModel):
    """The spark engine: a master URL (default ``local[workers]``) and Spark settings."""

    model_config = ConfigDict(extra="forbid")

    master: str | None = None
    conf: dict[str, str | int | float | bool] = Field(default_factory=dict)
    max_failures: int = Field(default=4, ge=1)


class BeamSettings(BaseModel):
    """The beam engine: a runner and its pipeline options."""

    model_config = ConfigDict(extra="forbid")

    runner: str = "DirectRunner"
    options: dict[str, Any] = Field(default_factory=dict)
    attempts: int = Field(default=3, ge=1)


class BakeConfig(BaseModel):
    """Settings of ``arcoforge bake``; top-level fields are also flags of the same name,
    the sections ``dask``, ``spark`` and ``beam`` configure those engines."""

    model_config = ConfigDict(extra="forbid")

    target_root: str | None = None
    cache: str | None = None
    recipe: str | None = None
    workers: int | None = Field(default=None, ge=1)
    prune: int | None = Field(default=None, ge=1)
    engine: Literal["local", "dask", "spark", "beam"] = "local"
    skip_failed: bool = False
    assume_unchanged: bool = False  # do not check inputs for changes since the last bake
    storage_options: dict[str, Any] = Field(default_factory=dict)  # fsspec's, for the target
    dask: DaskSettings = Field(default_factory=DaskSettings)
    spark: SparkSettings = Field(default_factory=SparkSettings)
    beam: BeamSettings = Field(default_factory=BeamSettings)

    def engine_options(self, name: str) -> dict[str, Any]:
        """The settings of engine ``name``, as keyword arguments of the engine."""
        section = getattr(self, name, None) if name != "local" else None
        return section.model_dump(exclude_none=True) if section is not None else {}


def read_config(path: str | Path | None) -> BakeConfig:
    """Parse a config file; errors name the file and the field."""
    return BakeConfig() if path is None else read_model(Path(path), BakeConfig, ArcoforgeError)


def read_model(path: Path, model: type[M], error: type[ArcoforgeError]) -> M:
    """Read a YAML (or JSON) mapping into ``model``; errors name the file and the line or
    field, as one line of ``error``."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise error(f"{path}{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(data, dict):
        raise error(f"{path}: must be a mapping of fields")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(f"{path}: {first_field_error(exc)}") from exc
