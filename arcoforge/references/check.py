"""The check of a reference bake: sample inputs read through the staged references and
compared with the inputs read directly, before the references are published.

netCDF inputs opened without preprocessing are compared as stored, through kerchunk
JSON or Parquet references: of the references, only the metadata and those of the
samples' chunks are read (see ``ReferenceFormat.overlapping``); chunks are fetched by
fsspec from the file system the references point into, each reference read as kerchunk's
specification defines it, and decoded with the codecs the metadata names, then compared
value for value with the input as stored (read by h5py, or by the netCDF library for
netCDF-3: see :mod:`.stored`), along with the attributes that decide how readers decode
it. Values as stored are compared exactly (a decoded comparison allows half a step
of packed data), and the check costs no more than the chunks it reads, not the per-chunk
overhead of zarr's reader nor xarray's import of dask. The concat coordinate, which
references hold in the units of the first input, is compared decoded when an input's
units differ. Other inputs and Icechunk stores are compared through xarray. In both, the
samples' char and string variables are then read through xarray with its default decoding,
as readers open the store: chars that xarray decodes to strings (``_Encoding``) but hold
other bytes would pass a comparison as stored, and end a reader's load in an error.

For HDF5 inputs, the references of a sample's chunks are first compared with where HDF5
finds the chunk at the same position. When every chunk of a variable is the input's own
byte range, one chunk is decoded and compared, which shows that the metadata decodes them
all; the rest are neither read nor decoded, unless the store's fill values differ from
the input's (then the masks are compared on every value). A variable with any other chunk
is compared whole, as without HDF5.
"""

from __future__ import annotations

import base64
import itertools
import json
from dataclasses import dataclass
from functools import cached_property

import fsspec
import numcodecs
import numpy as np
import xarray as xr
from numcodecs.compat import ensure_ndarray_like

from arcoforge.core.compare import compare, compare_values
from arcoforge.core.open import OpenConfig, open_input
from arcoforge.errors import ValidationError, one_line
from arcoforge.recipe.patterns import Input
from arcoforge.references.formats.base import ReferenceFormat
from arcoforge.references.inputs import ScanConfig, input_options, reference_url
from arcoforge.references.read import Variable, stored_variables
from arcoforge.references.store import open_references
from arcoforge.sources import local_copy

# attributes by which readers scale stored values (units and calendar decode times)
DECODING = ("scale_factor", "add_offset", "_Unsigned")
TIME_ENCODING = ("units", "calendar")
COMPARED = (*DECODING, *TIME_ENCODING, "_FillValue", "missing_value")  # the inputs' read
TEXT = "SUOT"  # kinds of chars and strings, whose decoding by readers can fail


@dataclass(frozen=True)
class CheckTask:
    """Compare sample inputs with the references at their regions (the span of each
    along every concat dim); JSON references are read at the spans along ``dim``. The
    references point into files of ``protocol``, named as ``scan`` names them."""

    store: ReferenceFormat
    open: OpenConfig
    samples: tuple[tuple[Input, dict[str, tuple[int, int]]], ...]
    dim: str | None
    protocol: str | None = None
    scan: ScanConfig | None = None


def check_input(task: CheckTask) -> list[str]:
    """Raise :class:`~arcoforge.errors.ValidationError` unless the references give exactly
    the values of each sample input; return their URLs."""
    if _as_stored(task):
        refs = Staged(task.store.overlapping(task.dim, _spans(task)), task.protocol, _remote(task))
        _check_stored(task, refs)
        _check_readable(task, refs)
    else:
        check_decoded(task)
    return [item.url for item, _ in task.samples]


def _check_readable(task: CheckTask, refs: Staged) -> None:
    """The text variables of each sample's region (``refs``: the references that meet
    them) read through xarray with its default decoding, as readers open the store: chars
    that xarray decodes to strings (``_Encoding``) but that hold bytes not in their
    encoding pass the comparison as stored."""
    kinds = {np.dtype(z["dtype"]).kind for k, z in refs.meta.items() if k.endswith("/.zarray")}
    if not kinds & set(TEXT):
        return  # spare opening the references again
    fo = {"version": 1, "refs": refs.references}
    with open_references(fo, task.store.storage_options, _remote(task)) as out:
        for item, region in task.samples:
            part = out.isel({d: slice(*s) for d, s in region.items()})
            _raise_first(unreadable(part, task.open.redact(item.url)))


def unreadable(ds: xr.Dataset, where: str) -> list[ValidationError]:
    """Why xarray cannot read each text variable of ``ds`` (opened as readers open it), an
    error a variable naming ``where``, its cause chained: loading is what decodes chars to
    strings."""
    errors = []
    for name, var in ds.variables.items():
        stored = np.dtype(var.encoding.get("dtype", var.dtype))
        if stored.kind not in TEXT and var.dtype.kind not in TEXT:
            continue
        try:
            var.values  # noqa: B018 - decoded on access
        except ValueError as exc:  # UnicodeDecodeError among them
            error = ValidationError(
                f"{where}: variable {name!r}: xarray cannot read it: {one_line(exc)}"
            )
            error.__cause__ = exc
            errors.append(error)
    return errors


def _raise_first(errors: list[ValidationError]) -> None:
    if errors:
        raise errors[0]


def _as_stored(task: CheckTask) -> bool:
    config = task.open
    return (
        task.store.reads_in_part
        and config.file_type in ("netcdf4", "netcdf3")
        and not (config.preprocessors or config.xarray_open_kwargs or config.promoted)
    )


def check_decoded(task: CheckTask) -> None:
    """Each sample opened by xarray, compared with the references opened by xarray: the
    check of inputs that cannot be compared as stored (other file types, preprocessors,
    open options), and the reference that the check as stored must agree with."""
    with task.store.open_staged(task.dim, _spans(task), _remote(task)) as out:
        for item, region in task.samples:
            with open_input(item.url, task.open) as src:
                part = out.isel({d: slice(*s) for d, s in region.items()})
                new = [d for d in region if d not in src.dims]  # dims the store adds
                _raise_first(unreadable(part, task.open.redact(item.url)))
                compare(src, _without(part, new), task.open.redact(item.url))


def _without(part: xr.Dataset, new: list[str]) -> xr.Dataset:
    """``part`` of the store less the dims ``new`` it adds to an input (one step of each)
    and their coordinates; the variables it leads with them (the input's scalar
    coordinates) kept, as ``squeeze(drop=True)`` does not."""
    return part.isel({d: 0 for d in new}).drop_vars([d for d in new if d in part.variables])


def _check_stored(task: CheckTask, refs: Staged) -> None:
    """Each sample read as stored, compared with the references as stored (``refs``)."""
    for item, region in task.samples:
        where = task.open.redact(item.url)
        url = reference_url(item.url, task.scan) if task.scan else None
        path = local_copy(item.url, task.open.fetch)
        with stored_variables(path, where, COMPARED) as variables:
            for var in variables:
                chunks = _Chunks(var.dataset, url, var.dims, region) if var.dataset else None
                _check_variable(refs, var, region, where, chunks)


def _remote(task: CheckTask) -> dict | None:
    """The fsspec options that read the inputs the references point into, with the
    credentials of the fetch (references name inputs without them)."""
    if task.scan is None or not task.samples or task.protocol in (None, "file", "local"):
        return None
    return input_options(reference_url(task.samples[0][0].url, task.scan), task.scan)


def _spans(task: CheckTask) -> list[tuple[int, int]]:
    return [region[task.dim] for _, region in task.samples if task.dim in region]


def _check_variable(
    refs: Staged, var: Variable, spans: dict, where: str, chunks: _Chunks | None
) -> None:
    """One variable of an input: dims, decoding attributes, values and missing values.
    The store may lead it with concat dims the input lacks (one step of each)."""
    name, attrs = var.name, var.attrs
    zarray, zattrs = refs.meta.get(f"{name}/.zarray"), refs.meta.get(f"{name}/.zattrs", {})
    if zarray is None:
        raise ValidationError(f"{where}: variable {name!r} is missing from the store")
    dims, stored = list(var.dims), zattrs.get("_ARRAY_DIMENSIONS", [])
    if stored == [name] != dims and name in spans and len(dims) == 1 and var.dtype == "S1":
        _check_label(refs, var, zarray, spans[name], where)
        return
    new = stored[: len(stored) - len(dims)]
    if stored[len(new) :] != dims or not set(new) <= set(spans):
        raise ValidationError(f"{where}: {name!r} has dims {stored} in the store, not {dims}")
    region = tuple(
        slice(*spans[d]) if d in spans else slice(0, n)
        for d, n in zip(stored, zarray["shape"], strict=True)
    )

    def read(part: tuple[slice, ...]) -> np.ndarray:
        # an array even when the input's variable is a scalar string (an object, once indexed)
        return np.asarray(refs.read(name, zarray, part, where)[(0,) * len(new)])

    if name in spans and not _same_encoding(zarray, zattrs, var.dtype, attrs):
        got, want = read(region), var.values(where)
        compare_values(decoded(got, zattrs), decoded(want, attrs), name, dims, where)
        return
    _check_attrs(name, zattrs, attrs, where)
    fills = [_fill_value(zarray), zattrs.get("missing_value")]
    input_fills = [attrs.get("_FillValue"), attrs.get("missing_value")]
    if chunks is not None and chunks.same_places(refs, name, zarray, region):
        # every chunk is the input's own: one decoded shows that the metadata decodes them
        probe = _first_chunk(region, zarray["chunks"])
        got = read(probe)
        compare_values(got, var.values(where, chunks.local(probe)), name, dims, where)
        if _masked(fills) == _masked(input_fills):
            return  # and readers mask the same values in both
        got = want = var.values(where)
    else:
        got, want = read(region), var.values(where)
        compare_values(got, want, name, dims, where)
    masked, wanted = _missing(got, fills), _missing(want, input_fills)
    compare_values(masked, wanted, f"{name} (missing)", dims, where)


def _check_label(refs: Staged, var: Variable, zarray: dict, span, where: str) -> None:
    """A 0-d char array naming its input along a new dim (CMIP's ``char
    realization(strlen)``), held in the store as that one label, which xarray reads."""
    chars = var.values(where)
    label = np.array([chars.tobytes()], dtype=f"S{max(chars.size, 1)}")
    got = np.asarray(refs.read(var.name, zarray, (slice(*span),), where))
    compare_values(got, label, var.name, [var.name], where)


def _same_encoding(zarray: dict, zattrs: dict, dtype: np.dtype, attrs: dict) -> bool:
    return np.dtype(zarray["dtype"]) == dtype and all(
        zattrs.get(k) == attrs.get(k) for k in TIME_ENCODING
    )


def _check_attrs(name: str, zattrs: dict, attrs: dict, where: str) -> None:
    """The attributes by which readers scale ``name`` (and decode its times) are the input's."""
    timelike = " since " in str(attrs.get("units", "")) + str(zattrs.get("units", ""))
    for key in DECODING + TIME_ENCODING if timelike else DECODING:
        if zattrs.get(key) != attrs.get(key):
            raise ValidationError(
                f"{where}: {name!r} has {key} {zattrs.get(key)!r} in the store, "
                f"the input {attrs.get(key)!r}"
            )


def _missing(values: np.ndarray, fills: list) -> np.ndarray:
    """Where ``values`` hold one of ``fills`` (what readers mask)."""
    mask = np.zeros(values.shape, dtype=bool)
    for number in _masked(fills):
        if values.dtype.kind == "S":  # chars: the fill value as text (attrs) or bytes
            number = number.encode() if isinstance(number, str) else number
        mask |= np.isnan(values) if number == "NaN" else values == number
    return mask


def _masked(fills: list) -> set:
    """The numbers ``fills`` (each None, a number or an array of them) make readers mask,
    NaN as "NaN"."""
    numbers = set()
    for fill in fills:
        for value in np.ravel(np.asarray(fill if fill is not None else [], dtype=object)):
            number = _number(value)
            numbers.add("NaN" if number != number else number)
    return numbers


class _Chunks:
    """The chunks of one HDF5 variable of a sample input (whose references name it
    ``url``), which lies at ``spans`` along the concat dims in the store."""

    def __init__(self, dataset, url: str | None, dims: tuple[str, ...], spans: dict):
        self.dataset, self.url = dataset, url
        self.chunks = dataset.chunks  # h5py reads it from the file each time it is asked
        self.shift = [spans[d][0] if d in spans else 0 for d in dims]

    def local(self, region: tuple[slice, ...]) -> tuple[slice, ...]:
        """``region`` of the store as a region of the input."""
        return tuple(
            slice(r.start - s, r.stop - s) for r, s in zip(region, self.shift, strict=True)
        )

    def same_places(self, refs: Staged, name: str, zarray: dict, region: tuple[slice, ...]):
        """Whether every chunk of ``region`` that the references give is the byte range of
        the input where HDF5's chunk index puts the chunk at that position, stored with
        all of its filters, and the input has no other chunk there."""
        if self.url is None or self.chunks != tuple(zarray["chunks"]):
            return False
        if len(self.shift) != len(region):
            return False
        try:
            places = self._places
        except (OSError, RuntimeError, ValueError):  # HDF5 cannot tell, say
            return False
        if places is None:
            return False
        references = refs.references
        for key, index in refs.keys(name, zarray, region).items():
            ref, place = references.get(key), places.get(index)
            if ref is None or place is None:
                if ref is not place:
                    return False
            elif isinstance(ref, bytes | str) or tuple(ref) != place:
                return False
        return True

    @cached_property
    def _places(self) -> dict[tuple[int, ...], tuple[str, int, int]] | None:
        """The reference each chunk of the input would have, by the index of the chunk in
        the store; None if a chunk skips a filter or the input does not start at a chunk
        of the store."""
        chunks, shift = self.chunks, self.shift
        if any(s % c for s, c in zip(shift, chunks, strict=True)):
            return None
        base = [s // c for s, c in zip(shift, chunks, strict=True)]
        found, skipped = {}, []

        def visit(info) -> None:
            index = tuple(
                o // c + b for o, c, b in zip(info.chunk_offset, chunks, base, strict=True)
            )
            found[index] = (self.url, info.byte_offset, info.size)
            if info.filter_mask:
                skipped.append(index)

        self.dataset.id.chunk_iter(visit)
        return None if skipped else found


def _first_chunk(region: tuple[slice, ...], chunks) -> tuple[slice, ...]:
    """The part of ``region`` in its first chunk."""
    return tuple(
        slice(r.start, min(r.stop, (r.start // c + 1) * c))
        for r, c in zip(region, chunks, strict=True)
    )


class Staged:
    """Staged references read as stored: their metadata, and chunks fetched by fsspec from
    the file system they point into (``protocol``), decoded with the codecs the metadata
    names."""

    def __init__(self, fo: dict, protocol: str | None = None, options: dict | None = None):
        self.references = fo["refs"]
        self.meta = json.loads(self.references[".zmetadata"])["metadata"]
        self.fs = fsspec.filesystem(protocol or "file", **(options or {}))

    def read(self, name: str, zarray: dict, region: tuple[slice, ...], where: str) -> np.ndarray:
        """The stored values of array ``name`` in ``region``, fill values where no chunk is."""
        dtype = np.dtype(zarray["dtype"])
        fill = _fill_value(zarray)
        out = np.full([s.stop - s.start for s in region], 0 if fill is None else fill, dtype)
        keys = self.keys(name, zarray, region)
        found = self._fetch(keys)
        codecs = _codecs(zarray)
        for key, index in keys.items():
            data = found.get(key)
            if data is None:
                continue  # no chunk: fill values, as readers see it
            chunk = decode_chunk(data, codecs, zarray, dtype, f"{where}: chunk {key}")
            inner, outer = _overlap(index, zarray["chunks"], region)
            out[outer] = chunk[inner]
        return out

    def _fetch(self, keys) -> dict:
        """The bytes of each chunk of ``keys`` that has a reference (or the error reading
        it), as kerchunk's specification reads them: inline (text, or base64 after
        "base64:"), a whole file, or a byte range of one."""
        found, ranges = {}, []
        for key in keys:
            ref = self.references.get(key)
            if isinstance(ref, bytes):
                found[key] = ref
            elif isinstance(ref, str):
                found[key] = (
                    base64.b64decode(ref[7:]) if ref.startswith("base64:") else ref.encode()
                )
            elif ref is not None:
                ranges.append((key, ref))
        if ranges:
            paths = [ref[0] for _, ref in ranges]
            starts = [ref[1] if len(ref) == 3 else None for _, ref in ranges]
            ends = [ref[1] + ref[2] if len(ref) == 3 else None for _, ref in ranges]
            data = self.fs.cat_ranges(paths, starts, ends, on_error="return")
            found.update(zip((key for key, _ in ranges), data, strict=True))
        return found

    @staticmethod
    def keys(name: str, zarray: dict, region: tuple[slice, ...]) -> dict[str, tuple[int, ...]]:
        """The keys of the chunks of array ``name`` that meet ``region``, and their indices."""
        chunks = zarray["chunks"]
        grid = [range(s.start // c, -(-s.stop // c)) for s, c in zip(region, chunks, strict=True)]
        return {f"{name}/{'.'.join(map(str, i)) or '0'}": i for i in itertools.product(*grid)}


def _codecs(zarray: dict) -> list:
    """The codecs that decode a chunk, in the order they apply: the compressor, then the
    filters in reverse (as Zarr v2 does)."""

    configs = [zarray["compressor"], *reversed(zarray["filters"] or [])]
    return [numcodecs.get_codec(c) for c in configs if c]


def decode_chunk(data, codecs: list, zarray: dict, dtype: np.dtype, what: str) -> np.ndarray:
    """A chunk's bytes decoded into an array of the chunk's shape (``what`` names it in
    the error if they do not decode); the check as stored decodes every chunk it reads
    through this function."""

    if isinstance(data, Exception):
        raise ValidationError(f"{what} cannot be read: {data}")
    try:
        for codec in codecs:
            data = codec.decode(data)
        flat = ensure_ndarray_like(data).view(dtype).reshape(-1, order="A")
        return flat.reshape(zarray["chunks"], order=zarray["order"])
    except Exception as exc:
        raise ValidationError(f"{what} does not decode: {exc}") from exc


def _fill_value(zarray: dict):
    """The fill value of a Zarr v2 array: None, a number, or a fixed-width one's bytes."""
    fill = zarray["fill_value"]
    if np.dtype(zarray["dtype"]).kind == "S" and isinstance(fill, str):
        return base64.standard_b64decode(fill)
    return None if fill is None else _number(fill)


def _number(fill):
    """A Zarr v2 fill value as a number ("NaN" and infinities are strings; None is 0); a
    char variable's text fill value as it is."""
    if fill is None:
        return 0
    if fill in ("NaN", "Infinity", "-Infinity"):
        return float(fill)
    return fill


def _overlap(index: tuple[int, ...], chunks, region: tuple[slice, ...]):
    """Where chunk ``index`` meets ``region``: slices into the chunk and into the region."""
    inner, outer = [], []
    for i, c, s in zip(index, chunks, region, strict=True):
        lo, hi = max(i * c, s.start), min((i + 1) * c, s.stop)
        inner.append(slice(lo - i * c, hi - i * c))
        outer.append(slice(lo - s.start, hi - s.start))
    return tuple(inner), tuple(outer)


def decoded(values: np.ndarray, attrs: dict) -> np.ndarray:
    """The values of a 1-d coordinate as xarray decodes them (times as datetimes)."""

    attrs = {k: v for k, v in attrs.items() if k != "_ARRAY_DIMENSIONS"}
    var = xr.Variable(("x",), values, attrs)
    return np.asarray(xr.conventions.decode_cf_variable("x", var).values)
