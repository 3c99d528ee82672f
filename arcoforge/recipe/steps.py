"""Recipes: a file pattern piped through an opener, optional preprocessing and a writer.

>>> recipe = pattern | OpenURLWithFSSpec() | OpenWithXarray() | StoreToZarr("out.zarr")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import xarray as xr

from arcoforge.errors import RecipeError

if TYPE_CHECKING:  # a recipe holds a pattern, which starts recipes: see FilePattern.__or__
    from arcoforge.recipe.patterns import FilePattern


class Step:
    """A step of a recipe."""


@dataclass(frozen=True)
class OpenURLWithFSSpec(Step):
    """Fetch each input with fsspec, through a cache when the input is remote.

    ``cache`` is a local folder or fsspec URL; without one, remote inputs go through a
    temporary cache that lives as long as the bake. ``open_kwargs`` are added to the
    pattern's ``fsspec_open_kwargs``; ``secrets`` to its query-string secrets. Failed
    downloads are retried ``retries`` times, waiting ``retry_delay`` seconds, doubling;
    what a retry cannot fix (401, 403, 404, a host name that does not resolve) is not
    retried, and a refused connection once.
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

    Each data variable keeps its source encoding by default, as ``xarray.Dataset.to_zarr``
    does: its stored dtype and packing (``scale_factor``, ``add_offset``, ``_FillValue``,
    ``missing_value``), and times their units and calendar. ``decode=True`` writes the
    decoded values instead (packed integers become floats with NaN for missing values).
    An ``encoding`` entry naming any of ``dtype``, ``scale_factor``, ``add_offset``,
    ``_FillValue`` or ``missing_value`` replaces the variable's packing with its own.
    """

    store_name: str
    target_chunks: dict[str, int] | str | None = None
    encoding: dict[str, dict[str, Any]] = field(default_factory=dict)
    zarr_format: int = 3
    consolidated: bool = True
    attrs: dict[str, Any] = field(default_factory=dict)
    decode: bool = field(default=False, metadata={"added": True})

    def __post_init__(self):
        if self.zarr_format not in (2, 3):
            raise RecipeError(f"StoreToZarr: zarr_format must be 2 or 3, not {self.zarr_format}")
        if not self.store_name or "/" in self.store_name.strip("/"):
            raise RecipeError(f"StoreToZarr: store_name {self.store_name!r} must be one name")


@dataclass(frozen=True)
class OpenWithKerchunk(Step):
    """Scan each input into a chunk manifest (kerchunk references) instead of reading it.

    ``file_type`` defaults to the pattern's (netcdf4, hdf5, netcdf3, grib or zarr).
    Chunks smaller than ``inline_threshold`` bytes are copied into the references.
    ``storage_options`` open the inputs with fsspec; ``remote_protocol`` is written into
    the references for readers (by default, the inputs' own protocol).
    ``kerchunk_open_kwargs={"filter": {"typeOfLevel": "isobaricInhPa"}}`` keeps only the
    GRIB messages with those keys (cfgrib's ``filter_by_keys``), for files that mix levels.
    """

    file_type: str | None = None
    inline_threshold: int = 300
    storage_options: dict | None = None
    remote_protocol: str | None = None
    kerchunk_open_kwargs: dict | None = None

    def __post_init__(self):
        unknown = sorted(set(self.kerchunk_open_kwargs or {}) - {"filter"})
        if unknown:
            raise RecipeError(
                f"OpenWithKerchunk: kerchunk_open_kwargs {unknown} not understood "
                "(known: 'filter', for GRIB)"
            )

    @property
    def grib_filter(self) -> dict:
        """The keys a GRIB message must have to be kept."""
        return dict((self.kerchunk_open_kwargs or {}).get("filter") or {})

    @property
    def xarray_open_kwargs(self) -> dict:
        """How inputs are opened to be compared with their references: with the filter."""
        if not self.grib_filter:
            return {}
        return {"backend_kwargs": {"indexpath": "", "filter_by_keys": self.grib_filter}}


@dataclass(frozen=True)
class WriteCombinedReference(Step):
    """Combine the inputs' manifests and write them to ``TARGET_ROOT/store_name``.

    ``output_file_name`` ending in ``.json`` gives kerchunk JSON, ``.parquet`` a folder of
    Parquet references that fsspec reads lazily, ``record_size`` references per file; the
    target root is a local folder or an object store (``s3://bucket/prefix``). A target
    root ``icechunk://PATH`` commits the references to an Icechunk repository at
    ``PATH/store_name`` instead. ``concat_dims`` default to the pattern's; variables
    without them (and ``identical_dims``) are taken from the first input. A concat dim
    the inputs lack, or hold as a scalar coordinate, leads every variable but coordinates
    and ``identical_dims``; its coordinate is the scalar, else the pattern's keys. A concat
    dim that is neither a ConcatDim of the pattern nor a dim of the inputs is refused.
    """

    store_name: str
    concat_dims: tuple[str, ...] = ()
    identical_dims: tuple[str, ...] = ()
    output_file_name: str = "reference.json"
    record_size: int = 100_000
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "concat_dims", tuple(self.concat_dims))
        object.__setattr__(self, "identical_dims", tuple(self.identical_dims))
        if not self.store_name or "/" in self.store_name.strip("/"):
            raise RecipeError(
                f"WriteCombinedReference: store_name {self.store_name!r} must be one name"
            )
        if not self.output_file_name.endswith((".json", ".parquet")):
            raise RecipeError(
                f"WriteCombinedReference: output_file_name {self.output_file_name!r} must end "
                "in .json or .parquet"
            )
        if self.record_size < 1:
            raise RecipeError("WriteCombinedReference: record_size must be >= 1")

    @property
    def format(self) -> str:
        """``json`` or ``parquet``."""
        return self.output_file_name.rsplit(".", 1)[1]


OPENERS = (OpenWithXarray, OpenWithKerchunk)
WRITERS = (StoreToZarr, WriteCombinedReference)


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
        if self.steps and isinstance(self.steps[-1], WRITERS):
            raise RecipeError(f"{type(self.steps[-1]).__name__} must be the last step of a recipe")
        return replace(self, steps=(*self.steps, step))

    def _one(self, kind: type[Step] | tuple[type[Step], ...]) -> Step | None:
        found = [s for s in self.steps if isinstance(s, kind)]
        if len(found) > 1:
            names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise RecipeError(f"a recipe takes one {names}, this one has {len(found)}")
        return found[0] if found else None

    @property
    def fetch(self) -> OpenURLWithFSSpec:
        """The fetch step (defaults apply when the recipe has none)."""
        return self._one(OpenURLWithFSSpec) or OpenURLWithFSSpec()

    @property
    def opener(self) -> OpenWithXarray | OpenWithKerchunk:
        """The opener step."""
        opener = self._one(OPENERS)
        if opener is None:
            raise RecipeError("the recipe has no OpenWithXarray (or OpenWithKerchunk) step")
        return opener

    @property
    def preprocessors(self) -> tuple[Preprocess, ...]:
        """Preprocessing functions, in order."""
        return tuple(s for s in self.steps if isinstance(s, Preprocess))

    @property
    def writer(self) -> StoreToZarr | WriteCombinedReference:
        """The writer step."""
        writer = self._one(WRITERS)
        if writer is None:
            raise RecipeError("the recipe has no StoreToZarr step; end it with | StoreToZarr(...)")
        return writer

    @property
    def virtual(self) -> bool:
        """Whether the recipe writes references to its inputs rather than their data."""
        return isinstance(self.writer, WriteCombinedReference)

    @property
    def file_type(self) -> str:
        """The file type inputs are opened as."""
        return self.opener.file_type or self.pattern.file_type

    def check(self) -> Recipe:
        """Raise :class:`RecipeError` unless the recipe has its opener and writer in order."""
        kinds = [type(s) for s in self.steps]
        writer, opener = self.writer, self.opener
        if kinds.index(type(opener)) > kinds.index(type(writer)):
            raise RecipeError(f"{type(opener).__name__} must come before {type(writer).__name__}")
        if isinstance(opener, OpenWithKerchunk) != self.virtual:
            raise RecipeError(
                f"{type(opener).__name__} does not go with {type(writer).__name__}: "
                "OpenWithKerchunk pairs with WriteCombinedReference, OpenWithXarray with StoreToZarr"
            )
        if self.virtual and self.preprocessors:
            raise RecipeError("preprocessing functions do not apply to references")
        for p in self.preprocessors:
            if self.steps.index(p) < self.steps.index(opener):
                raise RecipeError(f"preprocessing function {p.name} must come after OpenWithXarray")
        return self

    def prune(self, nkeep: int = 2) -> Recipe:
        """The same recipe on the first ``nkeep`` keys of every concat dim."""
        return replace(self, pattern=self.pattern.prune(nkeep))
