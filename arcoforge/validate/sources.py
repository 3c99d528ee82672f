"""A store compared with its sources: a sample of a recipe's inputs, opened as the bake
opens them, against the store at their positions."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr
import zarr

from arcoforge.core.compare import compare
from arcoforge.core.open import cache_for, open_config, open_input
from arcoforge.core.report import StoreReport, chunk_grid, pick
from arcoforge.errors import ArcoforgeError, ValidationError, one_line
from arcoforge.recipe.steps import Recipe
from arcoforge.zarr.check import decode_problem


def check_sources(
    report: StoreReport,
    ds: xr.Dataset,
    group: zarr.Group,
    *,
    recipe: Recipe,
    sample: int | None,
    cache: str | None,
) -> None:
    """Compare a sample of the recipe's inputs, opened as the bake opens them, with the
    store at their positions, one store chunk along the concat dim at a time: each chunk
    is read once for all the inputs in it. A store chunk that does not decode, an input
    that does not open or lacks a variable of the store, is a problem found, not a crash."""
    inputs = list(recipe.pattern.inputs())
    chosen = pick(inputs, sample, seed="inputs")
    dims = [d.name for d in recipe.pattern.concat_dims]
    if not dims or dims[0] not in ds.coords:
        missing = f"no concat coordinate {dims[0]!r}" if dims else "no concat dim in the recipe"
        report.add("sources", [f"{report.url}: {missing} to find the inputs by"], "")
        return
    problems: list[str] = []
    with cache_for(recipe, cache) as cache_dir:
        config = open_config(recipe, cache_dir)
        dim = dims[0]
        index, step = pd.Index(ds[dim].values), _chunk_length(ds, dim)
        by_chunk: dict[int, list[Span]] = {}
        merged = recipe.pattern.merge_dim is not None  # each input holds some variables
        for item in chosen:
            try:
                for span in _spans(item, ds, index, config, dim, step, merged, problems):
                    by_chunk.setdefault(span.store.start // step, []).append(span)
            except Exception as exc:
                problems.append(_naming(config.redact(item.url), exc))
        static_done: set[tuple[str, str]] = set()
        reader = ChunkReader(ds, group, dim, step)
        for index in sorted(by_chunk):
            chunk = slice(index * step, min((index + 1) * step, ds.sizes[dim]))
            problems += _compare_chunk(reader, chunk, by_chunk[index], config, static_done)
    report.add("sources", problems, f"{len(chosen)} of {len(inputs)} inputs equal the store")


@dataclass(frozen=True)
class Span:
    """The steps of one input that lie in one store chunk along the concat dim."""

    url: str
    source: np.ndarray  # indices along the dim in the input
    store: slice  # where they are in the store (contiguous)


def _spans(
    item,
    store: xr.Dataset,
    index: pd.Index,
    config,
    dim: str,
    step: int,
    merged: bool,
    problems: list[str],
) -> list[Span]:
    """Where the input's concat coordinate values are in the store, split by store chunk;
    the store's data variables the input lacks (unless inputs are merged) go to
    ``problems``."""

    where = config.redact(item.url)
    with open_input(item.url, config) as src:
        if dim not in src.dims:
            raise ValidationError(f"{where}: no dimension {dim!r} in the input")
        values = src[dim].values
        if not merged:
            problems += [
                f"{where}: lacks variable {name!r} that the store has"
                for name in store.data_vars
                if name not in src.variables
            ]
    found = index.get_indexer(values)
    if (found < 0).any():
        value = values[np.flatnonzero(found < 0)[0]]
        raise ValidationError(f"{where}: {dim} value {value} is not in the store")
    if (np.diff(found) != 1).any():
        raise ValidationError(f"{where}: its {dim} values are not consecutive in the store")
    spans = []
    for k in np.unique(found // step):
        at = np.flatnonzero(found // step == k)
        spans.append(Span(item.url, at, slice(int(found[at[0]]), int(found[at[-1]]) + 1)))
    return spans


def _naming(where: str, exc: Exception) -> str:
    """``exc`` in one line that names ``where`` (an input) first."""
    text = one_line(exc)
    return text if text.startswith(where) else f"{where}: {text}"


@dataclass
class ChunkReader:
    """Reads a variable of the store, all of it or one chunk along ``dim``; a read that
    fails names the stored chunk that does not decode, as the chunks check would."""

    store: xr.Dataset
    group: zarr.Group
    dim: str
    step: int

    def read(self, name: str, chunk: slice | None) -> xr.Variable | str:
        """The values of ``name`` (in ``chunk`` along the dim), or a problem line."""
        var = self.store.variables[name]
        if chunk is not None:
            var = var.isel({self.dim: chunk})
        try:
            return var.load()
        except Exception as exc:
            return self._undecodable(name, chunk, exc)

    def _undecodable(self, name: str, chunk: slice | None, exc: Exception) -> str:
        array = self.group[name]
        axis = list(self.store.variables[name].dims).index(self.dim) if chunk else None
        for coords in chunk_grid(array):
            if axis is not None and coords[axis] != chunk.start // self.step:
                continue
            problem = decode_problem(array, coords)
            if problem:
                key = array.metadata.encode_chunk_key(coords)
                return f"{name}: chunk {key} does not decode: {problem}"
        return f"{name}: does not read: {one_line(exc)}"


def _compare_chunk(
    reader: ChunkReader,
    chunk: slice,
    spans: list[Span],
    config,
    static_done: set[tuple[str, str]],
) -> list[str]:
    """Compare the spans of one store chunk, reading each variable's chunk once."""

    store, dim = reader.store, reader.dim
    problems, opened = [], []
    with ExitStack() as stack:
        for span in spans:
            try:
                src = stack.enter_context(open_input(span.url, config))
            except ArcoforgeError as exc:
                problems.append(one_line(exc))
                continue
            opened.append((span, _promote(src, store, dim), config.redact(span.url)))
        failed: set[str] = set()
        names = dict.fromkeys(n for _, src, _ in opened for n in src.variables if n != dim)
        for name in names:
            if name not in store.variables:
                problems += [
                    f"{w}: variable {name!r} is missing from the store" for *_, w in opened
                ]
                break
            along = dim in store.variables[name].dims
            todo = [
                (span, src, where)
                for span, src, where in opened
                if name in src.variables
                and span.url not in failed
                and (along or (span.url, name) not in static_done)
            ]
            if not todo:
                continue
            block = reader.read(name, chunk if along else None)
            if isinstance(block, str):
                problems.append(block)
                continue
            for span, src, where in todo:
                static_done.add((span.url, name))
                want, got = src.variables[name], block
                if along:
                    want = want.isel({dim: span.source})
                    at = slice(span.store.start - chunk.start, span.store.stop - chunk.start)
                    got = block.isel({dim: at})
                try:
                    compare(xr.Dataset({name: want}), xr.Dataset({name: got}), where)
                except ValidationError as exc:
                    problems.append(one_line(exc))
                    failed.add(span.url)
    return problems


def _promote(src: xr.Dataset, store: xr.Dataset, dim: str) -> xr.Dataset:
    """Scalar coordinates that the store holds along ``dim`` (they differed between inputs)."""
    scalars = {
        n: src[n].expand_dims(dim)
        for n in src.coords
        if src[n].ndim == 0 and n in store.variables and dim in store.variables[n].dims
    }
    return src.assign_coords(scalars) if scalars else src


def _chunk_length(store: xr.Dataset, dim: str) -> int:
    """The chunk length along ``dim`` of the store's first data variable that has it."""
    for var in store.data_vars.values():
        chunks = var.encoding.get("chunks")
        if dim in var.dims and chunks:
            return int(chunks[var.dims.index(dim)])
    return max(store.sizes[dim], 1)
