"""Chunk manifests as arrays: where every chunk of every array of a dataset lies."""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field, replace

import numcodecs
import numpy as np

NO_FILE = -1
VLEN_UTF8 = [{"id": "vlen-utf8"}]  # the filter of Zarr v2 arrays of variable-length strings
COORD_INLINE = 1 << 16  # bytes: dimension coordinates up to this size are always inline,
# so that every input's can be compared with the first's when they are combined


@dataclass
class ArrayRefs:
    """One array: its Zarr v2 metadata and references over its chunk grid.

    ``files[i, j, ...]`` indexes the manifest's ``paths`` (``NO_FILE`` where the chunk is
    not stored, or is inline in ``raw``), ``offsets`` and ``lengths`` are byte ranges in it.
    """

    meta: dict
    attrs: dict
    files: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray
    raw: np.ndarray | None = None

    @property
    def dims(self) -> list[str]:
        return list(self.attrs["_ARRAY_DIMENSIONS"])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.meta["shape"])

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(self.meta["chunks"])

    @property
    def grid(self) -> tuple[int, ...]:
        return grid_of(self.shape, self.chunks)

    @property
    def nrefs(self) -> int:
        return int((self.files != NO_FILE).sum())

    @property
    def inline_values(self) -> np.ndarray | None:
        """The array's values when it is one inline chunk, else None."""
        if self.raw is None or any(n != 1 for n in self.raw.shape) or self.raw.size != 1:
            return None
        if self.raw.ravel()[0] is None:
            return None
        return self.inline_chunk((0,) * len(self.shape)).reshape(self.shape)

    def inline_chunk(self, index: tuple[int, ...]) -> np.ndarray:
        """The values of the inline chunk at ``index``, decoded by the array's codecs (a
        chunk inlined as stored is compressed), flat."""
        data = self.raw[index]
        codecs = [self.meta["compressor"], *reversed(self.meta["filters"] or [])]
        for config in filter(None, codecs):
            data = numcodecs.get_codec(config).decode(data)
        if isinstance(data, np.ndarray) and data.dtype == object:  # vlen-utf8
            return data.reshape(-1)
        return np.frombuffer(data, dtype=np.dtype(self.meta["dtype"]))

    def with_file_offset(self, by: int) -> ArrayRefs:
        """The same references with file indices shifted by ``by``."""
        if by == 0:
            return self
        files = np.where(self.files == NO_FILE, NO_FILE, self.files + by).astype(np.int32)
        return replace(self, files=files)


@dataclass
class Manifest:
    """References of a whole dataset: its arrays, its attributes, the files they point to.

    ``coords`` holds the decoded-as-stored values of concat coordinates, read during the
    scan, so that they can be combined into one inline array and checked on append.
    """

    paths: list[str]
    arrays: dict[str, ArrayRefs]
    attrs: dict = field(default_factory=dict)
    coords: dict[str, np.ndarray] = field(default_factory=dict)
    promoted: tuple[str, ...] = ()

    @property
    def nrefs(self) -> int:
        return sum(a.nrefs for a in self.arrays.values())

    def sizes(self) -> dict[str, int]:
        """Length of every dimension."""
        return {d: n for a in self.arrays.values() for d, n in zip(a.dims, a.shape, strict=True)}


def grid_of(shape: tuple[int, ...], chunks: tuple[int, ...]) -> tuple[int, ...]:
    """Number of chunks along each axis."""
    return tuple(math.ceil(n / c) if c else 0 for n, c in zip(shape, chunks, strict=True))


def zarray(shape, chunks, dtype: np.dtype, compressor=None, filters=None, fill_value=None) -> dict:
    """Zarr v2 array metadata."""
    return {
        "zarr_format": 2,
        "shape": [int(n) for n in shape],
        "chunks": [int(c) for c in chunks],
        "dtype": np.dtype(dtype).str,
        "compressor": compressor,
        "filters": filters or None,
        "fill_value": fill_value,
        "order": "C",
    }


def inline_array(values: np.ndarray, attrs: dict, fill_value=None) -> ArrayRefs:
    """An array whose one chunk is held inline (a concat coordinate, a small variable).
    Variable-length strings are held as kerchunk holds them: ``|O`` with a ``vlen-utf8``
    filter, their chunk encoded by it."""
    values = np.array(values, order="C")
    shape = values.shape
    grid = (1,) * len(shape)
    raw = np.empty(grid, dtype=object)
    raw[...] = None
    strings = values.dtype.kind in "OU"
    if strings:
        values = values.astype(object)
        raw[(0,) * len(shape)] = bytes(numcodecs.VLenUTF8().encode(values))  # not bytearray
    else:
        raw[(0,) * len(shape)] = values.tobytes()
    meta = zarray(shape, shape or (), values.dtype, fill_value=fill_value)
    if strings:
        meta["filters"] = VLEN_UTF8
    return ArrayRefs(
        meta=meta,
        attrs=attrs,
        files=np.full(grid, NO_FILE, dtype=np.int32),
        offsets=np.zeros(grid, dtype=np.uint64),
        lengths=np.zeros(grid, dtype=np.uint64),
        raw=raw,
    )


def fill_json(value, dtype: np.dtype | None = None):
    """A fill value as Zarr v2 metadata holds it (NaN and infinities as strings, the bytes
    of a fixed-width bytes array in base64)."""
    if dtype is not None and np.dtype(dtype).kind == "S":
        return base64.standard_b64encode(np.asarray(value, dtype=dtype).tobytes()).decode()
    value = json_value(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def json_value(value):
    """An attribute value as JSON holds it: strings, numbers and lists of them."""
    if isinstance(value, bytes | np.bytes_):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "SU":
            value = value.astype(str)
        return json_value(value.item()) if value.size == 1 else [json_value(v) for v in value]
    if isinstance(value, np.generic):
        return json_value(value.item())
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    return value
