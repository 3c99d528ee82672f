"""Ensembles: one netCDF file a time step and member, the member named by a dim, a scalar
coordinate, a char array or only the file's name; and xarray's combination of them, which
references along several concat dims must equal."""

from __future__ import annotations

from pathlib import Path

import netCDF4
import numpy as np
import xarray as xr

from arcoforge.recipe.patterns import ConcatDim, FilePattern


def member_file(root: Path, time: int, member: int, layout: str, steps: int = 1) -> Path:
    """File ``time`` of one member (a key, 10, 20, ...), ``steps`` days from day
    ``10 * time``: ``member`` a length-1 dim, a scalar coordinate, or absent (then only
    the file name tells it)."""
    rng = np.random.default_rng(100 * time + member)
    tas = rng.normal(280, 5, (steps, 24, 32)).astype("float32")
    ds = xr.Dataset(
        {"tas": (("time", "lat", "lon"), tas, {"units": "K"})},
        coords={
            "time": ("time", 10 * time + np.arange(steps), {"units": "days since 2000-01-01"}),
            "lat": np.linspace(-50, 50, 24),
            "lon": np.linspace(0, 348.75, 32),
        },
        attrs={"title": "ensemble"},
    )
    if layout == "dim":
        ds = ds.expand_dims(member=[member], axis=1)
    elif layout == "scalar":
        ds = ds.assign_coords(member=member)
    path = root / f"tas_t{time}_m{member}.nc"
    chunks = (1, 1, 12, 16) if layout == "dim" else (1, 12, 16)
    encoding = {"tas": {"zlib": True, "chunksizes": chunks}, "time": {"dtype": "int32"}}
    ds.to_netcdf(path, engine="netcdf4", encoding=encoding)
    return path


def one_member_per_file(root: Path, layout: str, keys) -> FilePattern:
    """One file of time 0 for each member of ``keys`` (see :func:`member_file`), and the
    pattern along ``member`` that names them."""
    root.mkdir(parents=True, exist_ok=True)
    for m in keys:
        member_file(root, 0, m, layout)
    return FilePattern(lambda member: str(root / f"tas_t0_m{member}.nc"), ConcatDim("member", keys))


def members_combined(pattern: FilePattern, layout: str) -> xr.Dataset:
    """The files of :func:`one_member_per_file` combined along ``member`` by xarray."""
    members = []
    for k in pattern.concat_dims[0].keys:
        ds = xr.open_dataset(pattern.format_function(member=k)).load()
        members.append(
            ds.expand_dims(member=[k]) if layout == "absent" else ds.expand_dims("member")
        )
    return xr.concat(members, "member", data_vars="minimal", coords="minimal")


CHAR_MEMBERS = ["r1i1p1", "r10i1p1f1", "r2i1p1"]
"""The members of :func:`char_members`, CMIP's realization labels of unequal widths."""


def char_members(root: Path, file_format: str = "NETCDF4") -> dict[str, Path]:
    """One file a member, each naming it in a 0-d char array ``char realization(strlen)``
    (a coordinate of ``tas``), ``strlen`` as long as the label: the widest is not first."""
    root.mkdir(parents=True, exist_ok=True)
    paths = {}
    for k, label in enumerate(CHAR_MEMBERS):
        path = paths[label] = root / f"tas_{label}.nc"
        with netCDF4.Dataset(path, "w", format=file_format) as nc:
            nc.createDimension("time", 3)
            nc.createDimension("strlen", len(label))
            time = nc.createVariable("time", "f8", ("time",))
            time.units = "days since 2000-01-01"
            time[:] = np.arange(3)
            tas = nc.createVariable("tas", "f4", ("time",))
            tas.coordinates = "realization"
            tas[:] = np.arange(3.0) + 10 * k
            realization = nc.createVariable("realization", "S1", ("strlen",))
            realization[:] = netCDF4.stringtochar(np.array([label], f"S{len(label)}"))
    return paths


def members_pattern(paths: dict[str, Path]) -> FilePattern:
    """The files of :func:`char_members` along ``realization``, keyed by their labels."""
    return FilePattern(
        lambda realization: str(paths[realization]), ConcatDim("realization", list(paths))
    )
