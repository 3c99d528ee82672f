"""Scan a netCDF3 file (classic, 64-bit offset or CDF5) by parsing its header.

Fixed-size variables are one chunk each; record variables are one chunk per record, at
``begin + record * recsize``. Data in netCDF3 is big-endian and never compressed.
"""

from __future__ import annotations

import struct
from contextlib import ExitStack
from functools import partial
from typing import IO

import numpy as np

from arcoforge.errors import SourceError
from arcoforge.references.coords import check_coordinate
from arcoforge.references.inputs import ScanConfig, opened
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

TYPES = {1: ">i1", 2: "S1", 3: ">i2", 4: ">i4", 5: ">f4", 6: ">f8"}
TYPES.update({7: ">u1", 8: ">u2", 9: ">u4", 10: ">i8", 11: ">u8"})
DIMENSION, VARIABLE, ATTRIBUTE = 10, 11, 12


class _Header:
    """A reader of the header's big-endian fields."""

    def __init__(self, f: IO[bytes], version: int):
        self.f = f
        self.long = version == 5
        self.offsets_64 = version in (2, 5)

    def int(self) -> int:
        return struct.unpack(">i", self.f.read(4))[0]

    def count(self) -> int:
        return struct.unpack(">q", self.f.read(8))[0] if self.long else self.int()

    def offset(self) -> int:
        return struct.unpack(">q", self.f.read(8))[0] if self.offsets_64 else self.int()

    def name(self) -> str:
        """A name, less the trailing NULs some writers count in its length."""
        n = self.count()
        return self.f.read(n + (-n % 4))[:n].rstrip(b"\0").decode("utf-8")

    def values(self) -> np.ndarray:
        dtype = np.dtype(TYPES[self.int()])
        n = self.count()
        size = n * dtype.itemsize
        data = self.f.read(size + (-size % 4))[:size]
        if dtype.kind == "S":
            return np.array(data.decode("utf-8", "replace").rstrip("\0"))
        return np.frombuffer(data, dtype=dtype)

    def listing(self, tag: int, read) -> list:
        found, n = self.int(), self.count()
        if found not in (0, tag):
            raise SourceError(f"not a netCDF3 file: unexpected header tag {found}")
        return [read() for _ in range(n)]


def scan_netcdf3(url: str, config: ScanConfig) -> Manifest:
    """The manifest of the netCDF3 file at ``url``."""
    with ExitStack() as stack:
        source = stack.enter_context(opened(url, config))
        f = stack.enter_context(open(source, "rb")) if isinstance(source, str) else source
        return _scan(f, url, config)


def _scan(f: IO[bytes], url: str, config: ScanConfig) -> Manifest:
    magic = f.read(4)
    if magic[:3] != b"CDF" or magic[3] not in (1, 2, 5):
        raise SourceError(f"{url}: not a netCDF3 file")
    h = _Header(f, magic[3])
    numrecs = h.count()
    dims = h.listing(DIMENSION, lambda: (h.name(), h.count()))
    attrs = dict(h.listing(ATTRIBUTE, lambda: (h.name(), h.values())))
    variables = h.listing(VARIABLE, lambda: _variable(h))
    record = [v for v in variables if v["dimids"] and dims[v["dimids"][0]][1] == 0]
    recsize = sum(v["vsize"] for v in record)
    if len(record) == 1:
        recsize = _item_bytes(record[0], dims)
    arrays, coords = {}, {}
    for var in variables:
        names = [dims[i][0] for i in var["dimids"]]
        shape = [numrecs if dims[i][1] == 0 else dims[i][1] for i in var["dimids"]]
        is_record = var in record
        name = var["name"]
        if name in config.concat_dims and names == [name]:
            coords[name] = _read(f, var, shape, is_record, recsize)
            arrays[name] = inline_array(coords[name], _attrs(var["attrs"], names))
        else:
            inline = config.inline_threshold
            arrays[name] = _array(f, var, names, shape, is_record, recsize, inline)
        if names == [name]:
            read = partial(_read, f, var, shape, is_record, recsize)
            check_coordinate(name, arrays[name], var["attrs"], read)
    return Manifest([url], arrays, _attrs(attrs, None), coords)


def _variable(h: _Header) -> dict:
    name = h.name()
    dimids = [h.count() for _ in range(h.count())]
    attrs = dict(h.listing(ATTRIBUTE, lambda: (h.name(), h.values())))
    dtype = np.dtype(TYPES[h.int()])
    vsize = h.count()
    begin = h.offset()
    return {
        "name": name,
        "dimids": dimids,
        "attrs": attrs,
        "dtype": dtype,
        "vsize": vsize,
        "begin": begin,
    }


def _item_bytes(var: dict, dims) -> int:
    """Bytes of one record of a record variable (unpadded)."""
    n = 1
    for i in var["dimids"][1:]:
        n *= dims[i][1]
    return n * var["dtype"].itemsize


def _attrs(attrs: dict, dims: list[str] | None) -> dict:
    out = {k: json_value(v) for k, v in attrs.items() if k != "_FillValue"}
    if dims is not None:
        out["_ARRAY_DIMENSIONS"] = dims
    return out


def _read(f: IO[bytes], var: dict, shape: list[int], is_record: bool, recsize: int) -> np.ndarray:
    dtype = var["dtype"]
    count = int(np.prod(shape[1:] if is_record else shape, dtype=np.int64))
    if not is_record:
        f.seek(var["begin"])
        return np.frombuffer(f.read(count * dtype.itemsize), dtype).reshape(shape).copy()
    out = np.empty(shape, dtype)  # big-endian, as stored: ``np.concatenate`` would swap
    for i in range(shape[0]):
        f.seek(var["begin"] + i * recsize)
        out[i] = np.frombuffer(f.read(count * dtype.itemsize), dtype).reshape(shape[1:])
    return out


def _array(f, var, names, shape, is_record, recsize, inline: int) -> ArrayRefs:
    dtype = var["dtype"]
    fill = fill_json(var["attrs"]["_FillValue"], dtype) if "_FillValue" in var["attrs"] else None
    attrs = _attrs(var["attrs"], names)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    coord = names == [var["name"]] and nbytes <= COORD_INLINE  # inline whole: compared
    if is_record and shape[0] and nbytes <= inline and not coord:
        return _inline_records(_read(f, var, shape, is_record, recsize), attrs, fill)
    if nbytes <= inline or coord or not shape or 0 in shape:
        return inline_array(_read(f, var, shape, is_record, recsize), attrs, fill_value=fill)
    if not is_record:
        grid = (1,) * len(shape)
        refs = ArrayRefs(
            zarray(shape, shape, dtype, fill_value=fill),
            attrs,
            np.zeros(grid, np.int32),
            np.full(grid, var["begin"], np.uint64),
            np.full(grid, nbytes, np.uint64),
        )
        return refs
    grid = (shape[0],) + (1,) * (len(shape) - 1)
    step = nbytes // shape[0]
    offsets = var["begin"] + np.arange(shape[0], dtype=np.uint64) * np.uint64(recsize)
    return ArrayRefs(
        zarray(shape, [1, *shape[1:]], dtype, fill_value=fill),
        attrs,
        np.zeros(grid, np.int32) if shape[0] else np.full(grid, NO_FILE, np.int32),
        offsets.reshape(grid),
        np.full(grid, step, np.uint64),
    )


def _inline_records(values: np.ndarray, attrs: dict, fill) -> ArrayRefs:
    """A small record variable inline one record a chunk, as its records are referenced in
    larger inputs, so that a short last input combines with the others."""
    shape = values.shape
    grid = (shape[0],) + (1,) * (len(shape) - 1)
    raw = np.empty(grid, dtype=object)
    raw.reshape(-1)[:] = [values[i : i + 1].tobytes() for i in range(shape[0])]
    return ArrayRefs(
        zarray(shape, [1, *shape[1:]], values.dtype, fill_value=fill),
        attrs,
        np.full(grid, NO_FILE, np.int32),
        np.zeros(grid, np.uint64),
        np.zeros(grid, np.uint64),
        raw,
    )
