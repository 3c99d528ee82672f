"""Commit references to an Icechunk repository: Zarr v3 metadata, virtual chunks pointing
into the inputs, small arrays written as real data.

A bake commits to the branch ``arcoforge-staging``; the check stage reads that commit;
publishing moves ``main`` to it. So ``main`` gains one commit per bake, and only once the
commit is checked.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import xarray as xr
import zarr

from ..errors import require
from ..references.manifest import NO_FILE, ArrayRefs, Manifest

warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr version 3")

STAGING = "arcoforge-staging"
MAIN = "main"


def _icechunk():
    icechunk = require("icechunk", "Icechunk targets")
    icechunk.set_logs_filter("error")
    return icechunk


def _prefixes(paths: list[str]) -> set[str]:
    """The virtual chunk containers the references need: each folder of local inputs, each
    host of remote ones."""
    found = set()
    for path in paths:
        parts = urlsplit(path)
        if parts.scheme == "file":
            found.add(f"file://{parts.path.rpartition('/')[0]}/")
        else:
            found.add(f"{parts.scheme}://{parts.netloc}/")
    return found


def _repository(path: str, prefixes: set[str] = frozenset()):
    """Open (or create) the repository at ``path``, allowed to read chunks under ``prefixes``."""
    ic = _icechunk()
    storage = ic.local_filesystem_storage(path)
    config = ic.RepositoryConfig.default()
    exists = ic.Repository.exists(storage)
    if exists:
        prefixes = set(prefixes) | set(
            ic.Repository.open(storage).config.virtual_chunk_containers or {}
        )
    for prefix in sorted(prefixes):
        local = prefix.startswith("file://")
        store = (
            ic.local_filesystem_store(prefix.removeprefix("file://")) if local else ic.http_store()
        )
        config.set_virtual_chunk_container(ic.VirtualChunkContainer(prefix, store))
    access = ic.containers_credentials({p: None for p in prefixes})
    if exists:
        return ic.Repository.open(storage, config, authorize_virtual_chunk_access=access)
    return ic.Repository.create(storage, config, authorize_virtual_chunk_access=access)


def drop_staging(path: str) -> None:
    """Forget the staging branch an interrupted bake left."""
    if not Path(path).exists():
        return
    repo = _repository(path)
    if STAGING in repo.list_branches():
        repo.delete_branch(STAGING)


def commit_staged(
    path: str, manifest: Manifest, attrs: dict, message: str, shared: dict[str, int] | None = None
) -> str:
    """Write ``manifest`` on the staging branch, from ``main``'s tip, in one commit.

    ``shared`` counts, per array, the leading references (in C order) ``main`` already
    holds: such arrays are resized and given only their new references (an append).
    """
    repo = _repository(path, _prefixes(manifest.paths))
    repo.save_config()
    if STAGING in repo.list_branches():
        repo.delete_branch(STAGING)
    repo.create_branch(STAGING, repo.lookup_branch(MAIN))
    session = repo.writable_session(STAGING)
    store = session.store
    if shared:
        root = zarr.open_group(store, mode="r+")
        root.attrs.put(attrs)
    else:
        root = zarr.open_group(store, mode="w", zarr_format=3, attributes=attrs)
    for name, refs in manifest.arrays.items():
        if shared and name in shared:
            root[name].resize(refs.shape)
            _set_refs(store, name, refs, manifest.paths, shared[name])
        else:
            _write_array(root, store, name, refs, manifest.paths)
    return session.commit(message)


def publish_staged(path: str) -> None:
    """Move ``main`` to the staging commit; repeatable."""
    repo = _repository(path)
    if STAGING in repo.list_branches():
        repo.reset_branch(MAIN, repo.lookup_branch(STAGING))
        repo.delete_branch(STAGING)


def readonly_store(path: str, branch: str = MAIN):
    """A read-only Zarr store of the repository's ``branch``."""
    return _repository(path).readonly_session(branch=branch).store


def virtual_locations(path: str, branch: str = MAIN) -> list[str]:
    """The files the virtual chunks of the repository's ``branch`` point into."""
    session = _repository(path).readonly_session(branch=branch)
    return sorted(set(session.all_virtual_chunk_locations()))


@contextmanager
def open_dataset(path: str, branch: str = MAIN, **kwargs) -> Iterator[xr.Dataset]:
    """The repository's ``branch`` opened by xarray."""
    ds = xr.open_zarr(readonly_store(path, branch), consolidated=False, chunks=None, **kwargs)
    try:
        yield ds
    finally:
        ds.close()


def _write_array(root, store, name: str, refs: ArrayRefs, paths: list[str]) -> None:
    meta = refs.meta
    dtype = np.dtype(meta["dtype"])
    attrs = {k: v for k, v in refs.attrs.items() if k != "_ARRAY_DIMENSIONS"}
    fill = meta["fill_value"]
    if fill is not None:
        attrs["_FillValue"] = xr.backends.zarr.FillValueCoder.encode(_fill(fill, dtype), dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        array = root.create_array(
            name,
            shape=refs.shape,
            chunks=refs.chunks or None,
            dtype=dtype.newbyteorder("="),
            fill_value=_fill(fill, dtype) if fill is not None else None,
            serializer=_serializer(dtype),
            compressors=_codecs(meta),
            filters=None,
            dimension_names=refs.dims,
            attributes=attrs,
            overwrite=True,
        )
    if refs.raw is not None:
        _write_inline(array, refs, dtype)
    _set_refs(store, name, refs, paths)


def _set_refs(store, name: str, refs: ArrayRefs, paths: list[str], skip: int = 0) -> None:
    """Virtual references for the chunks of ``name`` after the first ``skip`` (C order);
    every path lies in a container the repository was configured with."""
    flat = np.flatnonzero(refs.files.ravel() != NO_FILE)
    located = np.argwhere(refs.files != NO_FILE)[flat >= skip]
    if len(located):
        store.set_virtual_refs(name, _specs(refs, located, paths), validate_containers=False)


def _specs(refs: ArrayRefs, located: np.ndarray, paths: list[str]):
    ic = _icechunk()
    index = tuple(located.T)
    files = refs.files[index].tolist()
    offsets = refs.offsets[index].tolist()
    lengths = refs.lengths[index].tolist()
    return [
        ic.VirtualChunkSpec(tuple(i), paths[f], o, n)
        for i, f, o, n in zip(located.tolist(), files, offsets, lengths, strict=True)
    ]


def _write_inline(array: zarr.Array, refs: ArrayRefs, dtype: np.dtype) -> None:
    """Chunks held inline become real chunks (they are uncompressed, like the inputs')."""
    for index in np.argwhere(refs.raw != None):  # noqa: E711 (element-wise)
        region = tuple(
            slice(i * c, min((i + 1) * c, n))
            for i, c, n in zip(index, refs.chunks, refs.shape, strict=True)
        )
        values = np.frombuffer(refs.raw[tuple(index)], dtype=dtype)
        full = refs.chunks if refs.chunks else ()
        block = values.reshape(full) if math.prod(full) == values.size else values
        array[region] = block[tuple(slice(0, r.stop - r.start) for r in region)]
    if not refs.shape:
        array[()] = np.frombuffer(refs.raw[()], dtype=dtype)[0]


def _fill(value, dtype: np.dtype):
    if isinstance(value, str):
        return float(value)
    return dtype.type(value).item()


def _serializer(dtype: np.dtype):
    from zarr.codecs import BytesCodec

    if dtype.itemsize == 1 or dtype.byteorder == "|":
        return BytesCodec(endian=None)
    big = dtype.byteorder == ">" or (dtype.byteorder == "=" and np.little_endian is False)
    return BytesCodec(endian="big" if big else "little")


def _codecs(meta: dict) -> list:
    """Zarr v2 filters and compressor as Zarr v3 bytes-to-bytes codecs (numcodecs')."""
    from numcodecs import zarr3

    kinds = {"zlib": zarr3.Zlib, "shuffle": zarr3.Shuffle, "zstd": zarr3.Zstd}
    kinds["fletcher32"] = zarr3.Fletcher32
    configs = [*(meta["filters"] or []), *([meta["compressor"]] if meta["compressor"] else [])]
    out = []
    for config in configs:
        config = dict(config)
        kind = kinds[config.pop("id")]
        out.append(kind(**config))
    return out
