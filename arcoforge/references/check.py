"""The check of a reference bake: sample inputs read through the staged references and
compared with the inputs read directly, before the references are published.

netCDF inputs opened without preprocessing are compared as stored, through kerchunk
JSON or Parquet references: every chunk of a sample is fetched by fsspec's
``ReferenceFileSystem`` and decoded with the codecs its metadata names, then compared
value for value with what the netCDF library reads from the input, along with the
attributes that decide how readers decode it. Values as stored are compared exactly (a
decoded comparison allows half a step of packed data), and the check costs no more than
the chunks it reads, not the per-chunk overhead of zarr's reader nor xarray's import of
dask. The concat coordinate, which references hold in the units of the first input, is
compared decoded when an input's units differ. Other inputs and Icechunk stores are
compared through xarray.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

import numpy as np

from ..errors import ValidationError
from ..openers import OpenConfig, open_input, open_netcdf
from ..patterns import Input
from ..sources import local_copy
from ..validate import compare, compare_values
from .manifest import json_value
from .store import ReferenceStore

# attributes by which readers scale stored values (units and calendar decode times)
DECODING = ("scale_factor", "add_offset", "_Unsigned")
TIME_ENCODING = ("units", "calendar")


@dataclass(frozen=True)
class CheckTask:
    """Compare sample inputs with the references at their spans along ``dim``; the
    references point into files of ``protocol``."""

    store: ReferenceStore
    open: OpenConfig
    samples: tuple[tuple[Input, tuple[int, int] | None], ...]
    dim: str | None
    protocol: str | None = None


def check_input(task: CheckTask) -> list[str]:
    """Raise :class:`~arcoforge.errors.ValidationError` unless the references give exactly
    the values of each sample input; return their URLs."""
    if _as_stored(task):
        _check_stored(task)
    else:
        _check_decoded(task)
    return [item.url for item, _ in task.samples]


def _as_stored(task: CheckTask) -> bool:
    config = task.open
    return (
        task.store.kind in ("json", "parquet")
        and config.file_type in ("netcdf4", "netcdf3")
        and not (config.preprocessors or config.xarray_open_kwargs or config.promoted)
    )


def _check_decoded(task: CheckTask) -> None:
    """Each sample opened by xarray, compared with the references opened by xarray."""
    spans = [span for _, span in task.samples if span is not None]
    with task.store.open_staged(task.dim, spans) as out:
        for item, span in task.samples:
            with open_input(item.url, task.open) as src:
                part = out.isel({task.dim: slice(*span)}) if task.dim is not None else out
                compare(src, part, task.open.redact(item.url))


def _check_stored(task: CheckTask) -> None:
    """Each sample read by the netCDF library, compared with the references as stored."""
    spans = [span for _, span in task.samples if span is not None]
    staged = task.store.staged_references(task.dim, spans)
    refs = Staged(staged, task.protocol, task.store.storage_options)
    for item, span in task.samples:
        where = task.open.redact(item.url)
        with open_netcdf(local_copy(item.url, task.open.fetch), where) as nc:
            for name, var in nc.variables.items():
                _check_variable(refs, name, var, task.dim, span, where)


def _check_variable(refs: Staged, name: str, var, dim: str | None, span, where: str) -> None:
    """One variable of an input: dims, decoding attributes, values and missing values."""
    zarray, zattrs = refs.meta.get(f"{name}/.zarray"), refs.meta.get(f"{name}/.zattrs", {})
    if zarray is None:
        raise ValidationError(f"{where}: variable {name!r} is missing from the store")
    dims = list(var.dimensions)
    if zattrs.get("_ARRAY_DIMENSIONS") != dims:
        raise ValidationError(
            f"{where}: {name!r} has dims {zattrs.get('_ARRAY_DIMENSIONS')} in the store, not {dims}"
        )
    attrs = {k: json_value(var.getncattr(k)) for k in var.ncattrs()}
    region = tuple(
        slice(*span) if d == dim and span else slice(0, n)
        for d, n in zip(dims, zarray["shape"], strict=True)
    )
    got, want = refs.read(name, zarray, region, where), np.asarray(var[...])
    if name == dim and not _same_encoding(zarray, zattrs, want.dtype, attrs):
        compare_values(decoded(got, zattrs), decoded(want, attrs), name, dims, where)
        return
    _check_attrs(name, zattrs, attrs, where)
    compare_values(got, want, name, dims, where)
    masked = _missing(got, [zarray["fill_value"], zattrs.get("missing_value")])
    wanted = _missing(want, [attrs.get("_FillValue"), attrs.get("missing_value")])
    compare_values(masked, wanted, f"{name} (missing)", dims, where)


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
    for fill in fills:
        for value in np.ravel(np.asarray(fill if fill is not None else [], dtype=object)):
            number = _number(value)
            mask |= np.isnan(values) if number != number else values == number
    return mask


class Staged:
    """Staged references read as stored: metadata, and chunks fetched through fsspec's
    ``ReferenceFileSystem`` and decoded with the codecs the metadata names."""

    def __init__(
        self, fo: str | dict, protocol: str | None = None, target_options: dict | None = None
    ):
        from fsspec.implementations.reference import ReferenceFileSystem

        # the file system of the protocol given, as it is: fsspec would otherwise find the
        # protocol by loading a whole record of Parquet, and wrap local files to be async;
        # ``target_options`` reach references on an object store
        self.fs = ReferenceFileSystem(
            fo=fo, fs={protocol or "file": {}}, target_options=target_options
        )
        self.meta = json.loads(self.fs.cat_file(".zmetadata"))["metadata"]

    def read(self, name: str, zarray: dict, region: tuple[slice, ...], where: str) -> np.ndarray:
        """The stored values of array ``name`` in ``region``, fill values where no chunk is."""
        chunks = zarray["chunks"]
        dtype = np.dtype(zarray["dtype"])
        out = np.full([s.stop - s.start for s in region], _number(zarray["fill_value"]), dtype)
        grid = [range(s.start // c, -(-s.stop // c)) for s, c in zip(region, chunks, strict=True)]
        keys = {f"{name}/{'.'.join(map(str, i)) or '0'}": i for i in itertools.product(*grid)}
        found = self.fs.cat(list(keys), on_error="return")
        codecs = _codecs(zarray)
        for key, index in keys.items():
            data = found.get(key)
            if data is None or isinstance(data, FileNotFoundError):
                continue  # no chunk: fill values, as readers see it
            chunk = _decode(data, codecs, zarray, dtype, f"{where}: chunk {key}")
            inner, outer = _overlap(index, chunks, region)
            out[outer] = chunk[inner]
        return out


def _codecs(zarray: dict) -> list:
    """The codecs that decode a chunk, in the order they apply: the compressor, then the
    filters in reverse (as Zarr v2 does)."""
    import numcodecs

    configs = [zarray["compressor"], *reversed(zarray["filters"] or [])]
    return [numcodecs.get_codec(c) for c in configs if c]


def _decode(data, codecs: list, zarray: dict, dtype: np.dtype, what: str) -> np.ndarray:
    """A chunk's bytes decoded into an array of the chunk's shape."""
    from numcodecs.compat import ensure_ndarray_like

    if isinstance(data, Exception):
        raise ValidationError(f"{what} cannot be read: {data}")
    try:
        for codec in codecs:
            data = codec.decode(data)
        flat = ensure_ndarray_like(data).view(dtype).reshape(-1, order="A")
        return flat.reshape(zarray["chunks"], order=zarray["order"])
    except Exception as exc:
        raise ValidationError(f"{what} does not decode: {exc}") from None


def _number(fill):
    """A Zarr v2 fill value as a number ("NaN" and infinities are strings; None is 0)."""
    if fill is None:
        return 0
    return float(fill) if isinstance(fill, str) else fill


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
    import xarray as xr

    attrs = {k: v for k, v in attrs.items() if k != "_ARRAY_DIMENSIONS"}
    var = xr.Variable(("x",), values, attrs)
    return np.asarray(xr.conventions.decode_cf_variable("x", var).values)
