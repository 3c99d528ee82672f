"""Openers: turn an input's bytes into an xarray Dataset, preprocessing applied."""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from arcoforge.errors import ArcoforgeError, SourceError, one_line, require
from arcoforge.recipe.steps import Preprocess, Recipe
from arcoforge.sources import FetchConfig, is_remote, local_copy
from arcoforge.sources.secrets import masked_cause, secret_values, show_userinfo

ENGINES = {
    "netcdf4": "netcdf4",
    "hdf5": "h5netcdf",
    "netcdf3": "netcdf4",
    "zarr": "zarr",
    "grib": "cfgrib",
    "unknown": None,
}


@dataclass(frozen=True)
class OpenConfig:
    """How every input of a recipe is fetched, opened and preprocessed; picklable."""

    fetch: FetchConfig
    file_type: str = "netcdf4"
    xarray_open_kwargs: dict = field(default_factory=dict)
    preprocessors: tuple[Preprocess, ...] = ()
    concat_dims: tuple[str, ...] = ()
    promoted: tuple[str, ...] = ()

    def redact(self, text: str) -> str:
        """``text`` with every secret masked."""
        return self.fetch.redact(text)


def open_config(recipe: Recipe, cache: str | None) -> OpenConfig:
    """How a bake of ``recipe`` fetches, opens and preprocesses every input."""
    pattern, fetch = recipe.pattern, recipe.fetch
    open_kwargs = {**pattern.fsspec_open_kwargs, **(fetch.open_kwargs or {})}
    query = {**pattern.query_string_secrets, **(fetch.secrets or {})}
    return OpenConfig(
        fetch=FetchConfig(
            cache=cache or fetch.cache,
            open_kwargs=open_kwargs,
            query_secrets=query,
            userinfo=pattern.userinfo,
            secrets=tuple(secret_values(query, open_kwargs, pattern.userinfo)),
            retries=fetch.retries,
            retry_delay=fetch.retry_delay,
            max_connections_per_host=fetch.max_connections_per_host,
            timeout=fetch.timeout,
        ),
        file_type=recipe.file_type,
        xarray_open_kwargs=dict(getattr(recipe.opener, "xarray_open_kwargs", {})),
        preprocessors=recipe.preprocessors,
        concat_dims=tuple(d.name for d in pattern.concat_dims),
    )


@contextmanager
def cache_for(recipe: Recipe, cache: str | None) -> Iterator[str | None]:
    """The cache folder: the given one, or a temporary one while remote inputs need it."""
    given = cache or recipe.fetch.cache
    remote = recipe.file_type != "zarr" and any(is_remote(i.url) for i in recipe.pattern.inputs())
    if given or not remote:
        yield given
        return
    temp = tempfile.mkdtemp(prefix="arcoforge-cache-")
    try:
        yield temp
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def preload(file_type: str = "netcdf4", forking: bool = True) -> None:
    """Import the backends a Zarr bake uses (xarray's, netCDF4 for netCDF and HDF5 inputs,
    dask.array: xarray imports it whenever it makes a variable, about 0.7 s), once.

    ``forking``: now, before worker processes are forked from this one, which saves each
    that import. Otherwise only this process, the driver, gains, and the imports run in a
    thread while the engine's own workers start or scan: the driver needs them only when
    it writes the store's template, after the scan (if the thread fails, it imports them
    itself then). Engines with workers of their own call it as they start, before the
    driver schedules tasks, which the imports would hold up.
    """
    if forking:
        _import_backends(file_type)
    else:
        worker = threading.Thread(target=_import_quietly, args=(file_type,), daemon=True)
        worker.start()


def _import_quietly(file_type: str) -> None:
    with suppress(Exception):
        _import_backends(file_type)


def _import_backends(file_type: str) -> None:
    xr.backends.list_engines()
    if file_type in ("netcdf4", "hdf5", "netcdf3"):
        import netCDF4  # noqa: F401
    with suppress(ImportError):
        import dask.array  # noqa: F401


@contextmanager
def open_input(url: str, config: OpenConfig) -> Iterator[xr.Dataset]:
    """Open ``url`` as a lazy Dataset with preprocessing applied; close it afterwards."""
    where = config.redact(url)
    zarr = config.file_type == "zarr"
    target = show_userinfo(url, config.fetch.userinfo) if zarr else local_copy(url, config.fetch)
    ds = _open(target, where, config)
    try:
        yield _promote_scalars(_preprocess(ds, where, config.preprocessors), config)
    finally:
        ds.close()


def _open(target: str, where: str, config: OpenConfig) -> xr.Dataset:
    kwargs = {"engine": ENGINES[config.file_type], "chunks": None, **config.xarray_open_kwargs}
    if config.file_type == "zarr":
        kwargs.setdefault("storage_options", config.fetch.open_kwargs or None)
    if config.file_type == "grib":
        kwargs.setdefault("backend_kwargs", {"indexpath": ""})
        require("cfgrib", "GRIB inputs")
    try:
        return xr.open_dataset(target, **kwargs)
    except ImportError as exc:  # one_line names the extra, if one installs what is missing
        raise SourceError(f"{where}: cannot open {config.file_type}: {one_line(exc)}") from exc
    except Exception as exc:
        cause, masked = config.redact(one_line(exc)), masked_cause(exc, config.fetch.secrets)
        raise SourceError(f"{where}: cannot open as {config.file_type}: {cause}") from masked


def _promote_scalars(ds: xr.Dataset, config: OpenConfig) -> xr.Dataset:
    """A concat dim held as a scalar coordinate (GRIB's ``time``) becomes a length-1 dim,
    and so do scalar coordinates that the scan found to differ between inputs."""
    for dim in config.concat_dims:
        if dim not in ds.dims and dim in ds.coords and ds[dim].ndim == 0:
            ds = ds.expand_dims(dim)
    if config.promoted:
        along = config.concat_dims[0]
        ds = ds.assign_coords(
            {n: ds[n].expand_dims(along) for n in config.promoted if n in ds.coords}
        )
    return ds


def _preprocess(ds: xr.Dataset, where: str, steps: Sequence[Preprocess]) -> xr.Dataset:
    for step in steps:
        try:
            ds = step.func(ds)
        except ArcoforgeError:
            raise
        except Exception as exc:
            raise SourceError(
                f"{where}: preprocessing {step.name} failed: {one_line(exc)}"
            ) from exc
        if not isinstance(ds, xr.Dataset):
            raise SourceError(f"{where}: preprocessing {step.name} returned {type(ds).__name__}")
    return ds


def read_variables(
    url: str, config: OpenConfig, wanted: dict[str, dict[str, slice]]
) -> dict[str, np.ndarray]:
    """Decoded values of the ``wanted`` variables of one input, each sliced by dim name.

    netCDF and HDF5 inputs without preprocessing are read with the netCDF4 library and
    decoded by xarray's CF decoder, three times faster than through ``open_dataset``;
    everything else goes through :func:`open_input`.
    """
    where = config.redact(url)
    if direct(config):
        with open_netcdf(local_copy(url, config.fetch), where) as nc:
            inherited = _bounds_attrs(nc, wanted)
            out = {}
            for name, sel in wanted.items():
                var = nc.variables.get(name)
                own, axes = _held_dims(var, sel, config.concat_dims)
                out[name] = np.expand_dims(_read(var, name, own, where, inherited.get(name)), axes)
            return out
    with open_input(url, config) as ds:
        return {n: _read(ds.variables.get(n), n, sel, where) for n, sel in wanted.items()}


STORED_ATTRS = ("scale_factor", "add_offset", "_FillValue", "missing_value", "_Unsigned")
"""The attributes that say how a number is packed, besides its dtype."""


def read_stored(
    url: str, config: OpenConfig, wanted: dict[str, dict[str, slice]], packing: dict[str, dict]
) -> dict[str, np.ndarray]:
    """Values of the ``wanted`` variables of one netCDF input (read as :func:`read_variables`
    reads them) packed as ``packing`` (``dtype`` and :data:`STORED_ATTRS`) gives for each:
    read as stored, without decoding, where the input packs them so; else decoded and
    packed again."""
    where = config.redact(url)
    with open_netcdf(local_copy(url, config.fetch), where) as nc:
        inherited = _bounds_attrs(nc, wanted)
        out = {}
        for name, sel in wanted.items():
            var, pack = nc.variables.get(name), packing[name]
            own, axes = _held_dims(var, sel, config.concat_dims)
            if var is not None and _packed_as(var, pack):
                values = _read_raw(var, name, own, where)
            else:
                values = _read(var, name, own, where, inherited.get(name))
                plain = xr.Variable(tuple(own), values, encoding=dict(pack))
                values = xr.conventions.encode_cf_variable(plain).values
            out[name] = np.expand_dims(values, axes)
    return out


def _held_dims(var, sel: dict[str, slice], concat_dims) -> tuple[dict[str, slice], tuple]:
    """``sel`` less the concat dims the netCDF variable lacks, and their axes: an input that
    holds a concat dim as a scalar coordinate (CMIP's ``realization``) is opened with that
    dim of one step (:func:`_promote_scalars`), which the direct read adds back."""
    if var is None:
        return sel, ()
    held = set(var.dimensions)
    axes = tuple(k for k, d in enumerate(sel) if d in concat_dims and d not in held)
    return {d: s for d, s in sel.items() if d in held or d not in concat_dims}, axes


def _packed_as(var, pack: dict) -> bool:
    """Whether a netCDF variable is stored with the dtype and packing ``pack`` gives."""
    if var.dtype != np.dtype(pack["dtype"]):
        return False
    names = set(var.ncattrs())
    for key in STORED_ATTRS:
        if (key in names) != (key in pack):
            return False
        if key in names and not _same_attr(var.getncattr(key), pack[key]):
            return False
    return True


def _same_attr(a, b) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return bool(np.array_equal(np.asarray(a, float), np.asarray(b, float), equal_nan=True))


def _read_raw(var, name: str, sel: dict[str, slice], where: str) -> np.ndarray:
    try:
        dims = tuple(var.dimensions)
        if set(dims) != set(sel):
            raise ValueError(f"dims {dims} differ from the scanned {tuple(sel)}")
        raw = np.asarray(var[tuple(sel[d] for d in dims)])
        return xr.Variable(dims, raw).transpose(*sel).values
    except Exception as exc:
        raise SourceError(f"{where}: reading {name!r} failed: {one_line(exc)}") from exc


def direct(config: OpenConfig) -> bool:
    """Whether inputs are read with the netCDF4 library rather than through xarray."""
    return (
        config.file_type in ("netcdf4", "hdf5", "netcdf3")
        and not config.preprocessors
        and not config.xarray_open_kwargs
        and not config.promoted
    )


@contextmanager
def open_netcdf(path: str, where: str) -> Iterator:
    """The netCDF file at ``path``, its values read as stored (no masking nor scaling)."""
    import netCDF4

    try:
        nc = netCDF4.Dataset(path)
    except Exception as exc:
        raise SourceError(f"{where}: cannot open: {one_line(exc)}") from exc
    try:
        nc.set_auto_maskandscale(False)
        nc.set_auto_chartostring(False)
        yield nc
    finally:
        nc.close()


def _is_char_array(var, dims: tuple[str, ...], sel: dict[str, slice]) -> bool:
    """A netCDF ``char`` array whose last dim xarray folds into fixed-width strings (WRF's
    ``char Times(Time, DateStrLen)`` is read as ``Times(Time)``)."""
    return var.dtype == np.dtype("S1") and len(dims) == len(sel) + 1 and dims[-1] not in sel


def _bounds_attrs(nc, wanted) -> dict[str, dict]:
    """The time attributes that CF bounds variables among ``wanted`` inherit from the
    variable naming them in its ``bounds`` attribute, as xarray's decoder gives them."""
    out = {}
    for var in nc.variables.values():
        names = set(var.ncattrs())
        bounds = var.getncattr("bounds") if "bounds" in names else None
        if isinstance(bounds, str) and bounds in wanted:
            out[bounds] = {k: var.getncattr(k) for k in ("units", "calendar") if k in names}
    return out


def _read(var, name: str, sel: dict[str, slice], where: str, inherited=None) -> np.ndarray:
    if var is None:
        raise SourceError(f"{where}: variable {name!r} is missing")
    try:
        if isinstance(var, xr.Variable):
            return var.transpose(*sel).isel(sel).values
        return _decode_netcdf(var, name, sel, inherited or {})
    except ArcoforgeError:
        raise
    except Exception as exc:
        raise SourceError(f"{where}: reading {name!r} failed: {one_line(exc)}") from exc


def _decode_netcdf(var, name: str, sel: dict[str, slice], inherited: dict) -> np.ndarray:
    dims = tuple(var.dimensions)
    chars = {dims[-1]: slice(None)} if _is_char_array(var, dims, sel) else {}
    if set(dims) != set(sel) | set(chars):
        raise ValueError(f"dims {dims} differ from the scanned {tuple(sel)}")
    raw = var[tuple({**sel, **chars}[d] for d in dims)]
    attrs = {**inherited, **{k: var.getncattr(k) for k in var.ncattrs()}}
    plain = xr.Variable(dims, np.asarray(raw), attrs)
    decoded = xr.conventions.decode_cf_variable(name, plain, stack_char_dim=bool(chars))
    return decoded.transpose(*sel).values
