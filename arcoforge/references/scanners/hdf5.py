"""Scan a netCDF4/HDF5 file into a manifest, reading only its metadata.

Chunk locations come from HDF5's chunk index (``H5Dchunk_iter``), one call per array;
no chunk is read except those smaller than the inline threshold and the concat
coordinates.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import h5py
import numpy as np

from arcoforge.errors import SourceError
from arcoforge.references.coords import check_coordinate
from arcoforge.references.manifest import (
    COORD_INLINE,
    NO_FILE,
    ArrayRefs,
    Manifest,
    fill_json,
    inline_array,
    json_value,
    zarray,
)
from arcoforge.references.read import HIDDEN, PURE_DIMENSION

NETCDF_ATTRS = HIDDEN | {"_FillValue"}  # the fill value goes to the array's metadata
DEFLATE, SHUFFLE, FLETCHER32, ZSTD = 1, 2, 3, 32015


def scan_hdf5(
    fileobj, url: str, concat_dims: tuple[str, ...] = (), inline_threshold: int = 0
) -> Manifest:
    """The manifest of the HDF5 file ``fileobj`` (a path or an open binary file) at ``url``."""
    with h5py.File(fileobj, "r") as h5:
        datasets = {n: d for n, d in h5.items() if isinstance(d, h5py.Dataset)}
        all_attrs = {n: _read_attrs(d) for n, d in datasets.items()}
        dimids = _dimension_ids(all_attrs)
        arrays, coords = {}, {}
        for name, ds in datasets.items():
            attrs = all_attrs[name]
            if attrs.get("CLASS") == b"DIMENSION_SCALE" and PURE_DIMENSION in attrs.get(
                "NAME", b""
            ):
                continue
            dims = _dims(name, ds, attrs, dimids, h5)
            where = f"{url}: variable {name!r}"
            if name in concat_dims and dims == [name]:
                coords[name] = ds[()]
                arrays[name] = inline_array(coords[name], _attrs(attrs, dims))
            else:
                arrays[name] = _array(ds, attrs, dims, where, inline_threshold, dims == [name])
            if dims == [name]:
                check_coordinate(name, arrays[name], attrs, partial(np.asarray, ds))
        return Manifest([url], arrays, _attrs(_read_attrs(h5), None), coords)


def _read_attrs(obj) -> dict:
    """An object's attributes, without the dimension scale references (slow to read, and
    read only when netCDF4's dimension ids are missing)."""
    attrs = obj.attrs
    return {k: attrs[k] for k in attrs if k not in ("DIMENSION_LIST", "REFERENCE_LIST")}


def _dimension_ids(all_attrs: dict[str, dict]) -> dict[int, str]:
    """netCDF4 dimension ids, by the dimension scales that carry them."""
    found = {}
    for name, attrs in all_attrs.items():
        dimid = attrs.get("_Netcdf4Dimid")
        if dimid is not None and attrs.get("CLASS") == b"DIMENSION_SCALE":
            found[int(dimid)] = name
    return found


def _dims(name: str, ds: h5py.Dataset, attrs: dict, dimids: dict[int, str], h5) -> list[str]:
    """Dimension names: netCDF4's, else HDF5 dimension scales', else phony ones."""
    if attrs.get("CLASS") == b"DIMENSION_SCALE" and ds.ndim == 1:
        return [name]
    ids = attrs.get("_Netcdf4Coordinates")
    if ids is not None and len(ids) == ds.ndim and all(int(i) in dimids for i in ids):
        return [dimids[int(i)] for i in ids]
    refs = ds.attrs.get("DIMENSION_LIST")
    if refs is not None and len(refs) == ds.ndim:
        return [
            h5[r[0]].name.lstrip("/") if len(r) else f"phony_dim_{k}" for k, r in enumerate(refs)
        ]
    return [f"phony_dim_{n}" for n in ds.shape]


def _attrs(attrs: dict, dims: list[str] | None) -> dict:
    out = {k: json_value(v) for k, v in attrs.items() if k not in NETCDF_ATTRS}
    if dims is not None:
        out["_ARRAY_DIMENSIONS"] = dims
    return out


def _array(
    ds: h5py.Dataset, attrs: dict, dims: list[str], where: str, inline: int, coord: bool
) -> ArrayRefs:
    """The references of one variable; a dimension coordinate (``coord``) up to
    ``COORD_INLINE`` bytes is inline whole, so that combining compares its values."""
    dtype = ds.dtype
    strings = h5py.check_string_dtype(dtype)
    if strings is not None and strings.length is None:  # variable-length: inline, decoded
        return inline_array(_strings(ds, strings.encoding), _attrs(attrs, dims))
    if dtype.kind not in "biufcMS" or dtype.fields is not None:
        raise SourceError(f"{where}: HDF5 type {dtype} cannot be referenced")
    fill = fill_json(attrs["_FillValue"], dtype) if "_FillValue" in attrs else None
    nbytes = ds.size * dtype.itemsize
    whole = (nbytes <= inline and ds.chunks is None) or (coord and nbytes <= COORD_INLINE)
    if whole or ds.shape == () or 0 in ds.shape:
        return inline_array(ds[()], _attrs(attrs, dims), fill_value=fill)
    filters = _filters(ds, where)
    chunks = ds.chunks or ds.shape
    compressor = filters.pop() if filters and filters[-1]["id"] in ("zlib", "zstd") else None
    meta = zarray(ds.shape, chunks, dtype, compressor, filters, fill)
    refs = ArrayRefs(meta, _attrs(attrs, dims), *_locations(ds, chunks, where))
    return _inlined_as_stored(ds, refs) if nbytes <= inline else refs


def _inlined_as_stored(ds: h5py.Dataset, refs: ArrayRefs) -> ArrayRefs:
    """``refs`` with each chunk's stored bytes (compressed as in the file) inline: the same
    metadata and chunk grid as where the variable is referenced, so that a short last
    input, whose variable is small, combines with the others."""
    raw = np.empty(refs.files.shape, dtype=object)
    raw[...] = None
    for index in np.argwhere(refs.files != NO_FILE):
        start = tuple(int(i) * c for i, c in zip(index, refs.chunks, strict=True))
        raw[tuple(index)] = ds.id.read_direct_chunk(start)[1]
    files = np.full(refs.files.shape, NO_FILE, dtype=np.int32)
    return replace(refs, files=files, raw=raw)


def _strings(ds: h5py.Dataset, encoding: str) -> np.ndarray:
    """A variable-length string variable's values as Python strings."""
    values = ds.asstr(encoding, "surrogateescape")[()]
    return np.array(values, dtype=object).reshape(ds.shape)


def _filters(ds: h5py.Dataset, where: str) -> list[dict]:
    """The HDF5 filter pipeline as numcodecs configurations, in encoding order."""
    plist = ds.id.get_create_plist()
    out = []
    for i in range(plist.get_nfilters()):
        code, _flags, values, name = plist.get_filter(i)
        if code == DEFLATE:
            out.append({"id": "zlib", "level": int(values[0]) if values else 4})
        elif code == SHUFFLE:
            out.append({"id": "shuffle", "elementsize": int(ds.dtype.itemsize)})
        elif code == FLETCHER32:
            out.append({"id": "fletcher32"})
        elif code == ZSTD:
            out.append({"id": "zstd", "level": int(values[0]) if values else 3})
        else:
            raise SourceError(f"{where}: HDF5 filter {name.decode()} ({code}) is not supported")
    return out


def _locations(ds: h5py.Dataset, chunks: tuple[int, ...], where: str):
    """File index, offset and length of every chunk, over the chunk grid."""
    grid = tuple(-(-n // c) for n, c in zip(ds.shape, chunks, strict=True))
    files = np.full(grid, NO_FILE, dtype=np.int32)
    offsets = np.zeros(grid, dtype=np.uint64)
    lengths = np.zeros(grid, dtype=np.uint64)
    if ds.chunks is None:
        offset = ds.id.get_offset()
        if offset is not None:
            files[...], offsets[...], lengths[...] = 0, offset, ds.id.get_storage_size()
        return files, offsets, lengths
    starts, found = [], []

    def visit(info) -> None:
        if info.filter_mask:
            raise SourceError(f"{where}: a chunk skips some of its filters; not supported")
        starts.append(info.chunk_offset)
        found.append((info.byte_offset, info.size))

    ds.id.chunk_iter(visit)
    if found:
        index = tuple((np.asarray(starts, dtype=np.int64) // np.asarray(chunks)).T)
        located = np.asarray(found, dtype=np.uint64)
        files[index], offsets[index], lengths[index] = 0, located[:, 0], located[:, 1]
    return files, offsets, lengths
