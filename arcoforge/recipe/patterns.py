"""File patterns: which inputs exist and where each sits in the combined dataset.

The names follow pangeo-forge-recipes 0.10, so recipes move over unchanged.
"""

from __future__ import annotations

import itertools
import os
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from arcoforge.errors import RecipeError, one_line
from arcoforge.recipe.steps import Recipe
from arcoforge.sources.secrets import hide_userinfo

FILE_TYPES = ("netcdf3", "netcdf4", "hdf5", "zarr", "grib", "unknown")


@dataclass(frozen=True)
class ConcatDim:
    """Inputs are concatenated along ``name``, one key per input (or group of inputs).

    ``nitems_per_file`` is the number of steps each input holds along ``name``; when
    given, the plan knows the output size without opening every input.
    """

    name: str
    keys: Sequence[Any]
    nitems_per_file: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "keys", tuple(self.keys))
        if not self.keys:
            raise ValueError(f"ConcatDim {self.name!r} has no keys")
        if self.nitems_per_file is not None and self.nitems_per_file < 1:
            raise ValueError(f"ConcatDim {self.name!r}: nitems_per_file must be >= 1")


@dataclass(frozen=True)
class MergeDim:
    """Inputs for different keys of ``name`` (often variables) are merged into one dataset."""

    name: str
    keys: Sequence[Any]

    def __post_init__(self):
        object.__setattr__(self, "keys", tuple(self.keys))
        if not self.keys:
            raise ValueError(f"MergeDim {self.name!r} has no keys")


CombineDim = ConcatDim | MergeDim


@dataclass(frozen=True)
class Input:
    """One input file: its URL (without secrets: a ``user:password@`` in it reads
    ``user:***@``) and its position in every combine dim."""

    url: str
    position: tuple[tuple[str, int], ...]
    keys: tuple[tuple[str, Any], ...] = ()

    def pos(self, dim: str) -> int:
        """Position of this input's key along ``dim``."""
        return dict(self.position)[dim]


@dataclass(frozen=True)
class FilePattern:
    """Every input of a recipe, as a function of the keys of its combine dims.

    >>> p = FilePattern(lambda time: f"data/{time}.nc", ConcatDim("time", [1, 2]))
    >>> [i.url for i in p.inputs()]
    ['data/1.nc', 'data/2.nc']
    """

    format_function: Callable[..., str]
    combine_dims: tuple[CombineDim, ...] = ()
    fsspec_open_kwargs: dict = field(default_factory=dict)
    query_string_secrets: dict = field(default_factory=dict)
    file_type: str = "netcdf4"

    def __init__(
        self,
        format_function: Callable[..., str],
        *combine_dims: CombineDim,
        fsspec_open_kwargs: dict | None = None,
        query_string_secrets: dict | None = None,
        file_type: str = "netcdf4",
    ):
        if file_type not in FILE_TYPES:
            raise ValueError(f"file_type {file_type!r} is not one of {', '.join(FILE_TYPES)}")
        names = [d.name for d in combine_dims]
        if len(set(names)) != len(names):
            raise ValueError(f"combine dims repeat a name: {names}")
        if sum(isinstance(d, MergeDim) for d in combine_dims) > 1:
            raise ValueError("a FilePattern takes at most one MergeDim")
        set_ = object.__setattr__
        set_(self, "format_function", format_function)
        set_(self, "combine_dims", tuple(combine_dims))
        set_(self, "fsspec_open_kwargs", dict(fsspec_open_kwargs or {}))
        set_(self, "query_string_secrets", dict(query_string_secrets or {}))
        set_(self, "file_type", file_type)

    @property
    def concat_dims(self) -> tuple[ConcatDim, ...]:
        """The concat dims, in the order given."""
        return tuple(d for d in self.combine_dims if isinstance(d, ConcatDim))

    @property
    def merge_dim(self) -> MergeDim | None:
        """The merge dim, if any."""
        return next((d for d in self.combine_dims if isinstance(d, MergeDim)), None)

    @property
    def dims(self) -> dict[str, int]:
        """Number of keys of each combine dim."""
        return {d.name: len(d.keys) for d in self.combine_dims}

    def __len__(self) -> int:
        n = 1
        for d in self.combine_dims:
            n *= len(d.keys)
        return n

    def inputs(self) -> Iterator[Input]:
        """Yield every input in key order."""
        yield from self._inputs

    @property
    def userinfo(self) -> dict[str, str]:
        """The ``user:password@`` of inputs' URLs, by their masked form (for the fetch)."""
        return self._made[1]

    @property
    def _inputs(self) -> tuple[Input, ...]:
        return self._made[0]

    @cached_property
    def _made(self) -> tuple[tuple[Input, ...], dict[str, str]]:
        """Every input, made once (a bake goes through them several times), its URL's
        password masked; and what was masked."""
        format_function, found, userinfo = self.format_function, [], {}
        axes = [
            [((d.name, i), (d.name, k)) for i, k in enumerate(d.keys)] for d in self.combine_dims
        ]
        for pairs in itertools.product(*axes):
            position, keys = tuple([p for p, _ in pairs]), tuple([k for _, k in pairs])
            url, hidden = hide_userinfo(url_of(format_function, keys))
            userinfo.update(hidden)
            found.append(Input(url, position, keys))
        return tuple(found), userinfo

    def items(self) -> Iterator[tuple[tuple[tuple[str, int], ...], str]]:
        """Yield ``(position, url)`` pairs, as pangeo-forge's ``FilePattern.items`` does."""
        for item in self.inputs():
            yield item.position, item.url

    def __or__(self, step) -> Recipe:
        """``pattern | step``: a recipe of this pattern and ``step``."""
        return Recipe(self) | step

    def prune(self, nkeep: int = 2) -> FilePattern:
        """Keep the first ``nkeep`` keys of every concat dim (for quick test bakes)."""
        if nkeep < 1:
            raise ValueError("prune needs nkeep >= 1")
        dims = [
            replace(d, keys=d.keys[:nkeep]) if isinstance(d, ConcatDim) else d
            for d in self.combine_dims
        ]
        return FilePattern(
            self.format_function,
            *dims,
            fsspec_open_kwargs=self.fsspec_open_kwargs,
            query_string_secrets=self.query_string_secrets,
            file_type=self.file_type,
        )


def url_of(format_function: Callable[..., str], keys: tuple[tuple[str, Any], ...]) -> str:
    """What ``format_function`` gives for ``keys``; a :class:`RecipeError` naming the file
    and line of the function, the call and the cause when it raises or gives no URL."""
    try:
        url = format_function(**dict(keys))
    except Exception as exc:
        where = _raised_at(format_function, exc)
        raise RecipeError(f"{where}{_call(format_function, keys)} raised {one_line(exc)}") from exc
    if isinstance(url, str):
        return url
    if not isinstance(url, os.PathLike):
        code = getattr(format_function, "__code__", None)
        where = f"{code.co_filename} line {code.co_firstlineno}: " if code else ""
        raise RecipeError(f"{where}{_call(format_function, keys)} returned {url!r}, not a URL")
    return os.fspath(url)


def _call(func: Callable, keys: tuple[tuple[str, Any], ...]) -> str:
    """``func(key=value, ...)`` as it was called, for an error."""
    name = getattr(func, "__name__", type(func).__name__)
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in keys)})"


def _raised_at(func: Callable, exc: BaseException) -> str:
    """``FILE line N: `` of the line of ``func``'s file where ``exc`` was raised, or of the
    deepest line of the traceback when ``func`` has no code of its own."""
    frames = traceback.extract_tb(exc.__traceback__)[1:]
    code = getattr(func, "__code__", None)
    own = [f for f in frames if code is not None and f.filename == code.co_filename]
    frame = (own or frames or [None])[-1]
    return f"{frame.filename} line {frame.lineno}: " if frame else ""


def pattern_from_file_sequence(
    file_list: Sequence[str], concat_dim: str, nitems_per_file: int | None = None, **kwargs
) -> FilePattern:
    """A pattern over an explicit list of files concatenated along ``concat_dim``."""
    files = [str(f) for f in file_list]
    return FilePattern(
        _ListLookup(files, concat_dim),
        ConcatDim(concat_dim, list(range(len(files))), nitems_per_file),
        **kwargs,
    )


@dataclass(frozen=True)
class _ListLookup:
    files: list[str]
    dim: str

    def __call__(self, **keys) -> str:
        return self.files[keys[self.dim]]
