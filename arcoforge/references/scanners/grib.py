"""Scan a GRIB file (edition 1 or 2, many messages) into a manifest.

cfgrib gives the dataset's shape (variables, their dims and coordinates); eccodes lists the
messages with their byte ranges and keys, each placed in its variable's grid by the values
of its keys along the leading dims. Each message is one chunk, decoded by kerchunk's
``grib`` codec; coordinates are written inline. They come from message keys, which have
no fill values, so unlike other formats' they are not checked for missing values.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from arcoforge.errors import SourceError, require
from arcoforge.references.inputs import ScanConfig, opened
from arcoforge.references.manifest import (
    NO_FILE,
    ArrayRefs,
    Manifest,
    inline_array,
    json_value,
    zarray,
)
from arcoforge.sources import FetchConfig, is_remote, local_copy

SPATIAL = {"latitude", "longitude", "values", "x", "y"}


def scan_grib(url: str, config: ScanConfig) -> Manifest:
    """The manifest of the GRIB file at ``url``: a remote file is fetched whole, once,
    through the cache (cfgrib and eccodes read local files), where the in-bake check
    finds it again."""
    source = _local(url, config)
    ds = _structure(source, url, config)
    messages = _messages(source, config.grib_filter or {})
    arrays = {}
    for name, var in ds.data_vars.items():
        arrays[name] = _variable(name, var, ds, messages, url)
    coords = {}
    for name, coord in ds.coords.items():
        encoded = xr.conventions.encode_cf_variable(coord.variable, name=name)
        attrs = {k: json_value(v) for k, v in encoded.attrs.items()}
        arrays[name] = inline_array(
            encoded.values, {**attrs, "_ARRAY_DIMENSIONS": list(coord.dims)}
        )
        if name in config.concat_dims and coord.dims == (name,):
            coords[name] = encoded.values
    return Manifest([url], arrays, {k: json_value(v) for k, v in ds.attrs.items()}, coords)


def _local(url: str, config: ScanConfig) -> str:
    """A local path holding the bytes of ``url``."""
    if is_remote(url) and not url.startswith("file://"):
        return local_copy(url, config.fetch or FetchConfig())
    with opened(url, config) as source:
        return source


def _structure(path: str, url: str, config: ScanConfig) -> xr.Dataset:
    backend = {"indexpath": "", "filter_by_keys": config.grib_filter or {}}
    require("cfgrib", "GRIB inputs")
    ds = xr.open_dataset(path, engine="cfgrib", backend_kwargs=backend, decode_timedelta=True)
    for dim in config.concat_dims:
        if dim in ds.coords and ds[dim].ndim == 0:
            ds = ds.expand_dims(dim)
    return ds


def _messages(path: str, wanted: dict) -> list[tuple[int, int, dict]]:
    """Offset, length and keys of every message that has the ``wanted`` keys."""
    import eccodes

    found = []
    with open(path, "rb") as f:
        while (gid := eccodes.codes_grib_new_from_file(f)) is not None:
            try:
                keys = {k: _get(eccodes, gid, k) for k in (*KEYS, *wanted)}
            finally:
                eccodes.codes_release(gid)
            if all(str(keys[k]) == str(v) for k, v in wanted.items()):
                keys[str(keys["typeOfLevel"])] = keys["level"]
                found.append((int(keys["offset"]), int(keys["totalLength"]), keys))
    return found


KEYS = (
    "offset",
    "totalLength",
    "cfVarName",
    "shortName",
    "dataDate",
    "dataTime",
    "number",
    "step",
    "typeOfLevel",
    "level",
)


def _get(eccodes, gid, key):
    try:
        return eccodes.codes_get(gid, key)
    except eccodes.KeyValueNotFoundError:
        return None


def _value(keys: dict, dim: str):
    """The value of a message's key along ``dim``, as cfgrib gives that coordinate."""
    if dim == "time":
        date, time = int(keys["dataDate"]), int(keys["dataTime"])
        stamp = f"{date // 10000:04d}-{date // 100 % 100:02d}-{date % 100:02d}T{time // 100:02d}:{time % 100:02d}"
        return np.datetime64(stamp, "ns")
    if dim == "step":
        return np.timedelta64(int(keys["step"]), "h").astype("timedelta64[ns]")
    return keys.get(dim)


def _variable(name: str, var: xr.DataArray, ds: xr.Dataset, messages, url: str) -> ArrayRefs:
    lead = [d for d in var.dims if d not in SPATIAL]
    spatial = [var.sizes[d] for d in var.dims if d in SPATIAL]
    grid = tuple(var.sizes[d] for d in lead) + (1,) * len(spatial)
    files = np.full(grid, NO_FILE, dtype=np.int32)
    offsets = np.zeros(grid, dtype=np.uint64)
    lengths = np.zeros(grid, dtype=np.uint64)
    for offset, length, keys in messages:
        if name not in (keys["cfVarName"], keys["shortName"]):
            continue
        index = []
        for dim in lead:
            at = np.flatnonzero(ds[dim].values == _value(keys, dim))
            if not at.size:
                break
            index.append(int(at[0]))
        else:
            at = (*index, *([0] * len(spatial)))
            files[at], offsets[at], lengths[at] = 0, offset, length
    dtype = np.dtype(var.dtype)
    codec = {"id": "grib", "var": name, "dtype": dtype.str}
    meta = zarray(var.shape, [1] * len(lead) + spatial, dtype, None, [codec], "NaN")
    coordinates = " ".join(sorted(n for n in ds.coords if n not in ds.dims))
    attrs = {k: json_value(v) for k, v in var.attrs.items()}
    attrs.update(_ARRAY_DIMENSIONS=list(var.dims), coordinates=coordinates)
    if not (files != NO_FILE).any():
        raise SourceError(f"{url}: no message of variable {name!r} found")
    return ArrayRefs(meta, attrs, files, offsets, lengths)
