"""Patches of a published Zarr store: grow it along one dim without readers noticing.

A patch is a staging store holding a copy of the store's metadata and of the few chunks
the patch rewrites (the last, partial chunk along the dim, the chunks whose steps some
inputs are written over, and the concat coordinates), and of the arrays that do not grow
(grids, masks), against which its tasks check. Tasks write into it like into any store.
Applying the patch moves its files into the store: new chunks first (invisible to readers
until the metadata grows), then the array metadata, the root metadata last. Each file is
replaced whole, so a reader sees the old store or the new one; an interrupted apply is
finished by applying again.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import fsspec
import zarr

from arcoforge.core.ledger import is_local
from arcoforge.core.targets import METADATA_FILES, Target, publish_order


def stage(
    store: str,
    patch: Target,
    dim: str,
    new_length: int,
    copied: Mapping[str, Sequence[tuple[int, int]]] | None = None,
) -> None:
    """Make ``patch`` a copy of ``store``'s metadata and of the chunks a growth of ``dim``
    to ``new_length`` rewrites, with every array along ``dim`` resized. If ``dim`` keeps its
    length (a patch that rewrites chunks in place), the chunks copied are the coordinates'
    and, for each array named in ``copied``, those that meet its spans of steps along
    ``dim``: the patch's tasks write over them in part, the steps they do not write keep
    the store's bytes."""
    fs, src = fsspec.core.url_to_fs(store, **(patch.storage_options or {}))
    _, dst = fsspec.core.url_to_fs(patch.url, **(patch.storage_options or {}))
    for path in fs.find(src):
        if path.rsplit("/", 1)[-1] in METADATA_FILES:
            _copy(fs, path, dst + path.removeprefix(src))
    group = zarr.open_group(patch.zarr_store(), mode="r+", use_consolidated=False)
    for name, array in group.arrays():
        if dim not in _dims(array):
            for path in fs.find(f"{src}/{name}"):
                _copy(fs, path, dst + path.removeprefix(src))
            continue
        axis = _dims(array).index(dim)
        if array.shape[axis] == new_length and array.ndim > 1:
            for key in _chunks_overlapping(array, axis, (copied or {}).get(name, ())):
                if fs.exists(f"{src}/{name}/{key}"):
                    _copy(fs, f"{src}/{name}/{key}", f"{dst}/{name}/{key}")
            continue
        for key in _rewritten_chunks(array, axis):
            if fs.exists(f"{src}/{name}/{key}"):
                _copy(fs, f"{src}/{name}/{key}", f"{dst}/{name}/{key}")
        shape = list(array.shape)
        shape[axis] = new_length
        array.resize(tuple(shape))


def _dims(array) -> tuple[str, ...]:
    names = array.metadata.dimension_names if array.metadata.zarr_format == 3 else None
    return tuple(names or array.attrs.get("_ARRAY_DIMENSIONS", ()))


def _rewritten_chunks(array, axis: int) -> list[str]:
    """Keys of the chunks along ``axis`` that a growth rewrites: all of them for 1-D arrays
    (coordinates), else the last one if it is partial."""
    chunks = array.shards or array.chunks
    grid = [math.ceil(n / c) for n, c in zip(array.shape, chunks, strict=True)]
    length, step = array.shape[axis], chunks[axis]
    if array.ndim == 1:
        along = range(grid[0])
    elif length % step:
        along = [length // step]
    else:
        return []
    ranges = [along if i == axis else range(n) for i, n in enumerate(grid)]
    return [array.metadata.encode_chunk_key(c) for c in itertools.product(*ranges)]


def _chunks_overlapping(array, axis: int, spans: Sequence[tuple[int, int]]) -> list[str]:
    """Keys of the chunks (shards, if sharded) that hold steps of ``spans`` along ``axis``."""
    chunks = array.shards or array.chunks
    grid = [math.ceil(n / c) for n, c in zip(array.shape, chunks, strict=True)]
    step = chunks[axis]
    along = sorted({k for a, b in spans for k in range(a // step, math.ceil(b / step))})
    ranges = [along if i == axis else range(n) for i, n in enumerate(grid)]
    return [array.metadata.encode_chunk_key(c) for c in itertools.product(*ranges)]


def _copy(fs, src: str, dst: str) -> None:
    if is_local(fs):
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
    fs.copy(src, dst)


def apply(patch: Target, store: str) -> None:
    """Move every file of ``patch`` into ``store``, metadata last; repeatable."""
    fs, src = fsspec.core.url_to_fs(patch.url, **(patch.storage_options or {}))
    _, dst = fsspec.core.url_to_fs(store, **(patch.storage_options or {}))
    if not fs.exists(src):
        return
    for path in sorted(fs.find(src), key=lambda p: publish_order(p.removeprefix(src))):
        move(fs, path, dst + path.removeprefix(src))
    fs.rm(src, recursive=True)


def move(fs, src: str, dst: str) -> None:
    """Replace ``dst`` by ``src`` whole: a rename on local disks, a copy on object stores
    (where ``src`` stays until the patch is removed). :func:`apply` moves each file of a
    patch through this one function, where tests stop an append half-way."""
    if is_local(fs):
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
    else:
        fs.copy(src, dst)
