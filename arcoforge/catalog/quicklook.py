"""Quick-looks: a map of one variable at its first and last time step, as PNG files.

Only the two 2-D slices are read, strided to at most 1000 points per axis. Figures are drawn with :class:`matplotlib.figure.Figure`
on an Agg canvas of their own, so pyplot's global state and backend are never touched.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from arcoforge.catalog import cf
from arcoforge.catalog.record import QuickLook
from arcoforge.errors import require

FIRST, LAST = "quicklook-first.png", "quicklook-last.png"
MAX_POINTS = 1000  # per map axis: finer than the image's pixels, and a bounded read


def choose_variable(ds: xr.Dataset) -> str | None:
    """The data variable a quick-look shows: a numeric one whose last two dims are y and
    x (by CF kind, or named lat/lon, y/x), with a time dim if any has one; None if none
    maps."""
    mappable = [name for name, var in ds.data_vars.items() if _map_dims(ds, var)]
    timed = [name for name in mappable if _time_dim(ds, ds[name]) is not None]
    found = timed or mappable
    return str(found[0]) if found else None


def write_quicklook(
    ds: xr.Dataset, folder: str | Path, variable: str | None = None
) -> QuickLook | None:
    """Draw ``variable`` (else :func:`choose_variable`'s) at the first and last step of its
    time dim into ``folder/quicklook-first.png`` and ``quicklook-last.png``; None when no
    variable maps. Without a time dim, or with one step, both name the one image. Each map
    axis is read with a stride keeping at most :data:`MAX_POINTS` points."""
    variable = variable or choose_variable(ds)
    if variable is None:
        return None
    var = ds[variable]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    time = _time_dim(ds, var)
    steps = [0, var.sizes[time] - 1] if time and var.sizes[time] > 1 else [0 if time else None]
    slices = [_slice(var, time, step) for step in steps]
    finite = [s.values[np.isfinite(s.values)] for s in slices]
    values = np.concatenate(finite) if any(v.size for v in finite) else np.zeros(1)
    limits = float(values.min()), float(values.max())
    names = [FIRST, LAST][: len(slices)]
    alts = [_draw(s, folder / name, limits) for s, name in zip(slices, names, strict=True)]
    return QuickLook(
        variable=variable, first=FIRST, last=names[-1], alt_first=alts[0], alt_last=alts[-1]
    )


def _map_dims(ds: xr.Dataset, var: xr.DataArray) -> tuple[str, str] | None:
    """The (y, x) dims of ``var`` when they are its last two, it is real-valued (integers
    or floats: matplotlib draws no complex numbers) and no dim is empty."""
    numeric = np.issubdtype(var.dtype, np.floating) or np.issubdtype(var.dtype, np.integer)
    if var.ndim < 2 or not numeric or 0 in var.shape:
        return None
    y, x = var.dims[-2:]
    kinds = (_dim_kind(ds, y), _dim_kind(ds, x))
    return (y, x) if kinds == ("y", "x") else None


def _dim_kind(ds: xr.Dataset, dim: str) -> str:
    if dim in ds.coords:
        found = cf.kind(ds[dim].variable)
        if found != "other":
            return found
    named = {"lat": "y", "latitude": "y", "y": "y", "lon": "x", "longitude": "x", "x": "x"}
    return named.get(str(dim).lower(), "other")


def _time_dim(ds: xr.Dataset, var: xr.DataArray) -> str | None:
    return next((d for d in var.dims if d in ds.coords and cf.kind(ds[d].variable) == "time"), None)


def _slice(var: xr.DataArray, time: str | None, step: int | None) -> xr.DataArray:
    """The 2-D map at ``step`` of ``time``, the first index of every other leading dim,
    each map axis strided to at most :data:`MAX_POINTS` points; read from the store now,
    those points alone."""
    index: dict = {d: 0 for d in var.dims[:-2]}
    for dim in var.dims[-2:]:
        index[dim] = slice(None, None, -(-var.sizes[dim] // MAX_POINTS))
    if time:
        index[time] = step
    return var.isel(index).load()


def _draw(data: xr.DataArray, path: Path, limits: tuple[float, float]) -> str:
    """Write ``data`` as a PNG with a colour bar in its units; return its alt text."""
    figure_module = require("matplotlib.figure", "catalog quick-looks")
    agg = require("matplotlib.backends.backend_agg", "catalog quick-looks")
    figure = figure_module.Figure(figsize=(6.4, 3.6), layout="constrained")
    agg.FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    y, x = data.dims
    xs, ys = _axis(data, x), _axis(data, y)
    mesh = axes.pcolormesh(
        xs, ys, np.ma.masked_invalid(data.values), vmin=limits[0], vmax=limits[1]
    )
    label, unit = _label(data), cf.units(data.variable)
    figure.colorbar(mesh, ax=axes, label=unit or str(data.name))
    when = _when(data)
    axes.set_title(f"{label}{f', {when}' if when else ''}", fontsize="medium", wrap=True)
    axes.set_xlabel(str(x))
    axes.set_ylabel(str(y))
    figure.savefig(path, dpi=80)
    return _alt(data, label, unit, when, xs, ys, x, y)


def _axis(data: xr.DataArray, dim: str) -> np.ndarray:
    """The 1-D coordinate of ``dim`` if numeric, else its indices."""
    if dim in data.coords and data[dim].ndim == 1 and np.issubdtype(data[dim].dtype, np.number):
        return np.asarray(data[dim].values)
    return np.arange(data.sizes[dim])


def _label(data: xr.DataArray) -> str:
    return str(data.attrs.get("long_name") or data.attrs.get("standard_name") or data.name)


def _when(data: xr.DataArray) -> str | None:
    """The time of the slice, from its scalar time coordinate."""
    for coord in data.coords.values():
        if coord.ndim == 0 and cf.kind(coord.variable) == "time":
            return cf.text(coord.values[()])
    return None


def _alt(data, label, unit, when, xs, ys, x, y) -> str:
    """A sentence saying what the image shows, for readers who cannot see it."""
    values = data.values[np.isfinite(data.values)]
    span = (
        f"values from {values.min():.4g} to {values.max():.4g}{f' {unit}' if unit else ''}"
        if values.size
        else "no valid values"
    )
    return (
        f"Map of {label} ({data.name}){f' on {when}' if when else ''}: {span}, "
        f"over {x} {cf.text(xs[0])} to {cf.text(xs[-1])} and {y} {cf.text(ys[0])} to "
        f"{cf.text(ys[-1])}."
    )
