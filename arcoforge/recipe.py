"""Recipes: a file pattern piped through an opener, optional preprocessing and a writer.

>>> recipe = pattern | OpenURLWithFSSpec() | OpenWithXarray() | StoreToZarr("out.zarr")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import xarray as xr

from .errors import RecipeError
from .patterns import FilePattern


class Step:
    """A step of a recipe."""


@dataclass(frozen=True)
class OpenURLWithFSSpec(Step):
    """Fetch each input with fsspec, through a cache when the input is remote.

    ``cache`` is a local folder or fsspec URL; without one, remote inputs go through a
    temporary cache that lives as long as the bake. ``open_kwargs`` are added to the
    pattern's ``fsspec_open_kwargs``; ``secrets`` to its query-string secrets. Failed
    downloads are retried ``retries`` times, waiting ``retry_delay`` seconds, doubling.
    """

    cache: str | None = None
    secrets: dict | None = None
    open_kwargs: dict | None = None
    retries: int = 5
    retry_delay: float = 0.5
    max_connections_per_host: int = 4
    timeout: float = 60.0


@dataclass(frozen=True)
class OpenWithXarray(Step):
    """Open each input with xarray; ``file_type`` defaults to the pattern's."""

    xarray_open_kwargs: dict = field(default_factory=dict)
    file_type: str | None = None


@dataclass(frozen=True)
class Preprocess(Step):
    """Apply a function ``Dataset -> Dataset`` to each input after opening it."""

    func: Callable[[xr.Dataset], xr.Dataset]

    @property
    def name(self) -> str:
        return getattr(self.func, "__name__", type(self.func).__name__)


@dataclass(frozen=True)
class StoreToZarr(Step):
    """Write the combined dataset to ``TARGET_ROOT/store_name`` as Zarr.

    ``target_chunks`` maps dims to chunk lengths, or is a size such as ``"100MB"``
    from which the chunk length along the concat dims is chosen. ``encoding`` sets
    per-variable ``dtype``, ``compressors``, ``_FillValue``, ``scale_factor``...
    """

    store_name: str
    target_chunks: dict[str, int] | str | None = None
    encoding: dict[str, dict[str, Any]] = field(default_factory=dict)
    zarr_format: int = 3
    consolidated: bool = True
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.zarr_format not in (2, 3):
            raise RecipeError(f"StoreToZarr: zarr_format must be 2 or 3, not {self.zarr_format}")
        if not self.store_name or "/" in self.store_name.strip("/"):
            raise RecipeError(f"StoreToZarr: store_name {self.store_name!r} must be one name")


@dataclass(frozen=True)
class Recipe:
    """A pattern and the steps applied to it, in order."""

    pattern: FilePattern
    steps: tuple[Step, ...] = ()

    def __or__(self, step: Step | Callable) -> Recipe:
        if not isinstance(step, Step):
            if not callable(step):
                raise RecipeError(f"cannot add {step!r} to a recipe: not a step or a function")
            step = Preprocess(step)
        if self.steps and isinstance(self.steps[-1], StoreToZarr):
            raise RecipeError("StoreToZarr must be the last step of a recipe")
        return replace(self, steps=(*self.steps, step))

    def _one(self, kind: type[Step]) -> Step | None:
        found = [s for s in self.steps if isinstance(s, kind)]
        if len(found) > 1:
            raise RecipeError(f"a recipe takes one {kind.__name__}, this one has {len(found)}")
        return found[0] if found else None

    @property
    def fetch(self) -> OpenURLWithFSSpec:
        """The fetch step (defaults apply when the recipe has none)."""
        return self._one(OpenURLWithFSSpec) or OpenURLWithFSSpec()

    @property
    def opener(self) -> OpenWithXarray:
        """The opener step."""
        opener = self._one(OpenWithXarray)
        if opener is None:
            raise RecipeError("the recipe has no OpenWithXarray step")
        return opener

    @property
    def preprocessors(self) -> tuple[Preprocess, ...]:
        """Preprocessing functions, in order."""
        return tuple(s for s in self.steps if isinstance(s, Preprocess))

    @property
    def writer(self) -> StoreToZarr:
        """The writer step."""
        writer = self._one(StoreToZarr)
        if writer is None:
            raise RecipeError("the recipe has no StoreToZarr step; end it with | StoreToZarr(...)")
        return writer

    @property
    def file_type(self) -> str:
        """The file type inputs are opened as."""
        return self.opener.file_type or self.pattern.file_type

    def check(self) -> Recipe:
        """Raise :class:`RecipeError` unless the recipe has its opener and writer in order."""
        kinds = [type(s) for s in self.steps]
        writer, opener = self.writer, self.opener
        if kinds.index(type(opener)) > kinds.index(type(writer)):
            raise RecipeError("OpenWithXarray must come before StoreToZarr")
        for p in self.preprocessors:
            if self.steps.index(p) < self.steps.index(opener):
                raise RecipeError(f"preprocessing function {p.name} must come after OpenWithXarray")
        return self

    def prune(self, nkeep: int = 2) -> Recipe:
        """The same recipe on the first ``nkeep`` keys of every concat dim."""
        return replace(self, pattern=self.pattern.prune(nkeep))
