"""Bakes of files shaped like real archives (CMIP, WRF, ERA5, xclim, ensembles), each
compared with xarray's own reading of the sources: values, dims, dtypes, attributes,
calendars and bounds; or refused with one line naming the input."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import netCDF4
import numcodecs
import numpy as np
import pytest
import xarray as xr
import zarr

from arcoforge import (
    ConcatDim,
    FilePattern,
    MergeDim,
    OpenWithXarray,
    StoreToZarr,
    bake,
    pattern_from_file_sequence,
)
from arcoforge.errors import AppendError, ArcoforgeError, SchemaError
from arcoforge.references.formats.icechunk import readonly_store
from arcoforge.references.store import open_references
from arcoforge.testing.archives import write_grib_archive
from arcoforge.testing.compare import assert_matches_sources, bake_fails
from arcoforge.testing.ensembles import CHAR_MEMBERS, char_members, members_pattern
from arcoforge.testing.recipes import ref_recipe

ROOT = Path(__file__).resolve().parents[2]


def write_cmip(folder: Path, calendar: str, files: int = 3, months: int = 4) -> list[Path]:
    """Monthly ``tas`` files laid out as CMIP's: ``time`` with ``bounds = "time_bnds"``
    (the bounds without units of their own), ``lat_bnds``, a 0-d ``height``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in range(files):
        path = folder / f"tas_Amon_model_{calendar}_{f}.nc"
        with netCDF4.Dataset(path, "w", format="NETCDF4_CLASSIC") as nc:
            nc.createDimension("time", None)
            nc.createDimension("lat", 4)
            nc.createDimension("lon", 5)
            nc.createDimension("bnds", 2)
            nc.variant_label = "r1i1p1f1"
            time = nc.createVariable("time", "f8", ("time",))
            time.setncatts(
                {"units": "days since 1850-01-01", "calendar": calendar, "bounds": "time_bnds"}
            )
            bounds = nc.createVariable("time_bnds", "f8", ("time", "bnds"))
            lat = nc.createVariable("lat", "f8", ("lat",))
            lat.setncatts({"units": "degrees_north", "bounds": "lat_bnds"})
            lat_bnds = nc.createVariable("lat_bnds", "f8", ("lat", "bnds"))
            nc.createVariable("lon", "f8", ("lon",)).units = "degrees_east"
            height = nc.createVariable("height", "f8", ())
            height.setncatts({"units": "m", "axis": "Z", "positive": "up"})
            tas = nc.createVariable(
                "tas", "f4", ("time", "lat", "lon"), fill_value=np.float32(1e20)
            )
            tas.setncatts({"units": "K", "coordinates": "height"})
            start = 30 * months * f + 30 * np.arange(months)
            time[:] = start + 15
            bounds[:] = np.stack([start, start + 30], axis=1)
            lat[:] = [-45, -15, 15, 45]
            lat_bnds[:] = np.stack([lat[:] - 15, lat[:] + 15], axis=1)
            nc["lon"][:] = np.arange(5) * 72.0
            height[...] = 2.0
            tas[:] = 250 + np.arange(months * 20).reshape(months, 4, 5) / 8 + f
        paths.append(path)
    return paths


def write_wrf(folder: Path, files: int = 3, steps: int = 2) -> list[Path]:
    """netCDF-3 files laid out as WRF's output: ``char Times(Time, DateStrLen)``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in range(files):
        path = folder / f"wrfout_d01_{f}.nc"
        with netCDF4.Dataset(path, "w", format="NETCDF3_64BIT_OFFSET") as nc:
            for dim, n in {
                "Time": None,
                "DateStrLen": 19,
                "south_north": 3,
                "west_east": 4,
            }.items():
                nc.createDimension(dim, n)
            nc.TITLE = " OUTPUT FROM WRF V4.1 MODEL"
            times = nc.createVariable("Times", "S1", ("Time", "DateStrLen"))
            t2 = nc.createVariable("T2", "f4", ("Time", "south_north", "west_east"))
            t2.setncatts({"units": "K", "description": "TEMP at 2 M", "MemoryOrder": "XY "})
            stamps = [
                dt.datetime(2019, 1, 1) + dt.timedelta(hours=3 * (f * steps + i))
                for i in range(steps)
            ]
            text = np.array([s.strftime("%Y-%m-%d_%H:%M:%S") for s in stamps], "S19")
            times[:] = netCDF4.stringtochar(text)
            t2[:] = 270 + np.arange(steps * 12).reshape(steps, 3, 4) / 4 + f
        paths.append(path)
    return paths


def write_era5(folder: Path, expvers: tuple[str, ...], steps: int = 2) -> list[Path]:
    """Hourly files laid out as ERA5's from the new CDS: a variable-length string
    ``expver(valid_time)``, "0001" for final data and "005" for the preliminary."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for f, expver in enumerate(expvers):
        path = folder / f"era5_{f}.nc"
        with netCDF4.Dataset(path, "w", format="NETCDF4") as nc:
            nc.createDimension("valid_time", steps)
            nc.createDimension("latitude", 3)
            nc.createDimension("longitude", 4)
            time = nc.createVariable("valid_time", "i8", ("valid_time",))
            time.setncatts({"units": "seconds since 1970-01-01", "calendar": "proleptic_gregorian"})
            labels = nc.createVariable("expver", str, ("valid_time",))
            t2m = nc.createVariable("t2m", "f4", ("valid_time", "latitude", "longitude"))
            time[:] = 1704067200 + 3600 * (f * steps + np.arange(steps))
            for i in range(steps):
                labels[i] = expver
            t2m[:] = 270 + np.arange(steps * 12).reshape(steps, 3, 4) / 4 + f
        paths.append(path)
    return paths


def open_sources(paths, dim: str, preprocess=None) -> xr.Dataset:
    """The sources as xarray combines them: concatenated along ``dim``."""
    opened = [xr.open_dataset(p) for p in paths]
    if preprocess:
        opened = [preprocess(ds) for ds in opened]
    return xr.concat(
        opened,
        dim=dim,
        data_vars="minimal",
        coords="minimal",
        compat="override",
        combine_attrs="drop_conflicts",
    ).load()


def assert_like_xarray(url: str, src: xr.Dataset) -> xr.Dataset:
    """The store equals ``src``: values, dims, attributes and dtypes; and its times are
    encoded as xarray's ``to_zarr`` encodes ``src`` (units, calendar)."""
    out = xr.open_zarr(url).load()
    xr.testing.assert_identical(out, src)
    theirs = Path(url).parent / "xarray.zarr"
    src.to_zarr(theirs, mode="w", consolidated=False)
    for name, var in src.variables.items():
        assert out[name].dims == var.dims, name
        assert out[name].dtype == var.dtype, name
    with xr.open_zarr(theirs, consolidated=False) as expected:
        for name, var in expected.variables.items():
            for key in ("calendar", "units"):
                assert out[name].encoding.get(key) == var.encoding.get(key), (name, key)
    return out


def zarr_recipe(paths, dim: str, nitems: int, store: str = "out.zarr", **writer):
    pattern = pattern_from_file_sequence([str(p) for p in paths], dim, nitems_per_file=nitems)
    return pattern | OpenWithXarray() | StoreToZarr(store, **writer)


@pytest.mark.parametrize("calendar", ["360_day", "noleap", "standard"])
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_cmip_time_bounds_on_every_calendar(tmp_path, calendar, zarr_format):
    paths = write_cmip(tmp_path / "src", calendar)
    recipe = zarr_recipe(paths, "time", 4, target_chunks={"time": 3}, zarr_format=zarr_format)
    result = bake(recipe, tmp_path / "out", workers=2)
    out = assert_like_xarray(result.url, open_sources(paths, "time"))
    assert out.time.attrs["bounds"] == "time_bnds"
    assert out.time.encoding["calendar"] == calendar
    assert str(out.time_bnds.values[0, 0])[:10] == "1850-01-01"
    assert out.height.dims == () and float(out.height) == 2.0


def test_cmip_time_bounds_in_one_chunk(tmp_path):
    """Every input writes part of one chunk of ``time_bnds``; each task's check reads the
    store while the other parts still hold fill values."""
    paths = write_cmip(tmp_path / "src", "360_day")
    result = bake(zarr_recipe(paths, "time", 4), tmp_path / "out", workers=1)
    assert_like_xarray(result.url, open_sources(paths, "time"))


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_wrf_char_times(tmp_path, zarr_format):
    paths = write_wrf(tmp_path / "src")
    recipe = zarr_recipe(paths, "Time", 2, target_chunks={"Time": 4}, zarr_format=zarr_format)
    result = bake(recipe, tmp_path / "out", workers=1)
    out = assert_like_xarray(result.url, open_sources(paths, "Time"))
    assert out.Times.dims == ("Time",) and out.Times.dtype == np.dtype("S19")
    assert out.Times.values[-1] == b"2019-01-01_15:00:00"


def test_era5_expver_of_different_widths_takes_the_widest(tmp_path):
    paths = write_era5(tmp_path / "src", ("0001", "0001", "005"))
    assert xr.open_dataset(paths[2]).expver.dtype == np.dtype("<U3")
    recipe = zarr_recipe(paths, "valid_time", 2, target_chunks={"valid_time": 1})
    result = bake(recipe, tmp_path / "out", workers=2)
    out = xr.open_zarr(result.url)
    assert out.expver.dtype == np.dtype("<U4")
    assert out.expver.values.tolist() == ["0001"] * 4 + ["005"] * 2
    src = open_sources(paths, "valid_time")
    assert src.expver.dtype == np.dtype("<U4")
    assert_like_xarray(result.url, src)


def test_ensemble_members_as_string_keys_of_a_new_dim(tmp_path):
    members = ["r1i1p1f1", "r2i1p1f1", "r10i1p1f1"]
    paths = [write_cmip(tmp_path / m, "noleap", files=1)[0] for m in members]
    for path, member in zip(paths, members, strict=True):
        with netCDF4.Dataset(path, "a") as nc:
            nc.variant_label = member

    def as_member(ds: xr.Dataset) -> xr.Dataset:
        return ds.expand_dims(realization=[ds.attrs["variant_label"]])

    pattern = FilePattern(
        lambda realization: str(paths[members.index(realization)]),
        ConcatDim("realization", members, nitems_per_file=1),
    )
    recipe = pattern | OpenWithXarray() | as_member | StoreToZarr("ens.zarr")
    result = bake(recipe, tmp_path / "out", workers=1)
    out = xr.open_zarr(result.url).load()
    assert out.realization.values.tolist() == members
    src = open_sources(paths, "realization", as_member)
    xr.testing.assert_identical(out, src)
    assert "variant_label" not in out.attrs  # it differs between the members


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("file_format", ["NETCDF4", "NETCDF3_CLASSIC"])
def test_members_named_by_a_scalar_char_array(tmp_path, file_format, zarr_format):
    """Each file names its member in ``char realization(strlen)``, which xarray reads as a
    scalar string coordinate: the members combine along it, read as stored by the fast
    path (was: ``reading 'tas' failed: ValueError: dims ('time',) differ from the scanned
    ('realization', 'time')``, for any scalar coordinate named as the concat dim)."""
    paths = char_members(tmp_path / "src", file_format)
    file_type = "netcdf3" if file_format.startswith("NETCDF3") else "netcdf4"
    recipe = (
        members_pattern(paths)
        | OpenWithXarray(file_type=file_type)
        | StoreToZarr("ens.zarr", zarr_format=zarr_format)
    )
    result = bake(recipe, tmp_path / "out", workers=1)
    assert result.stats["validated_inputs"] == 2  # the first and the last
    out = xr.open_zarr(result.url).load()
    assert out.realization.values.tolist() == [m.encode() for m in CHAR_MEMBERS]
    assert out.tas.dims == ("realization", "time")
    xr.testing.assert_identical(out, open_sources(list(paths.values()), "realization"))


def write_xclim_like(folder: Path, variables: tuple[str, ...], years: int = 2, differ=None):
    """One file per variable and year, each holding the same ``time_vectors(time, six)``,
    as xclim's NRCAN test files do; ``differ`` (variable, year) changes one of its values."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in variables:
        for year in range(years):
            times = np.arange(3) + 3 * year
            vectors = np.stack([np.full(3, 2000 + year), np.ones(3), times + 1] * 2, 1)
            if differ == (name, year):
                vectors[1, 2] = 99
            ds = xr.Dataset(
                {
                    name: (("time", "lat"), np.arange(6.0).reshape(3, 2) + year, {"units": "K"}),
                    "time_vectors": (("time", "six"), vectors.astype("int16")),
                },
                coords={
                    "time": ("time", times, {"units": "days since 2000-01-01"}),
                    "lat": [10.0, 20.0],
                },
            )
            ds.to_netcdf(folder / f"{name}_{year}.nc")
    pattern = FilePattern(
        lambda variable, time: str(folder / f"{variable}_{time}.nc"),
        MergeDim("variable", list(variables)),
        ConcatDim("time", list(range(years)), nitems_per_file=3),
    )
    return pattern | OpenWithXarray() | StoreToZarr("x.zarr", target_chunks={"time": 3})


def test_equal_variable_under_several_merge_keys_is_kept_once(tmp_path):
    recipe = write_xclim_like(tmp_path / "src", ("pr", "tasmax", "tasmin"))
    result = bake(recipe, tmp_path / "out", workers=1)
    out = xr.open_zarr(result.url).load()
    paths = sorted((tmp_path / "src").glob("*.nc"))
    src = xr.merge(
        [
            open_sources([p for p in paths if p.name.startswith(v)], "time")
            for v in ("pr", "tasmax", "tasmin")
        ],
        compat="equals",
    )
    xr.testing.assert_identical(out, src)
    assert out.time_vectors.dtype == np.int16


def test_different_variable_under_two_merge_keys_is_refused(tmp_path):
    recipe = write_xclim_like(tmp_path / "src", ("pr", "tasmax"), differ=("tasmax", 1))
    text = bake_fails(recipe, tmp_path / "out", SchemaError)
    assert text == (
        f"variable 'time_vectors' differs between {tmp_path / 'src' / 'pr_1.nc'} and "
        f"{tmp_path / 'src' / 'tasmax_1.nc'}: at {{'time': 1, 'six': 2}}, 99 in the second, "
        "5 in the first"
    )


def test_large_variable_under_two_merge_keys_is_refused(tmp_path):
    """Variables over 1 MiB an input are not read by the scan, so they cannot be compared."""
    folder = tmp_path / "src"
    folder.mkdir()
    for key in ("a", "b"):
        big = np.zeros((2, 70_000))
        ds = xr.Dataset(
            {key: ("time", [1.0, 2.0]), "big": (("time", "x"), big)}, coords={"time": [0, 1]}
        )
        ds.to_netcdf(folder / f"{key}.nc")
    pattern = FilePattern(
        lambda variable, time: str(folder / f"{variable}.nc"),
        MergeDim("variable", ["a", "b"]),
        ConcatDim("time", [0], nitems_per_file=2),
    )
    recipe = pattern | OpenWithXarray() | StoreToZarr("big.zarr")
    text = bake_fails(recipe, tmp_path / "out", SchemaError)
    assert text == (
        f"variable 'big' is in both {folder / 'a.nc'} and {folder / 'b.nc'}, too large to "
        "compare in the scan (over 1048576 bytes an input); each merge key must hold "
        "different variables"
    )


@pytest.mark.parametrize("bad", [[np.nan] * 4, [-45.0, np.nan, 15.0, np.nan]])
def test_missing_values_in_a_coordinate_are_refused_by_the_scan(tmp_path, bad):
    paths = write_cmip(tmp_path / "src", "noleap")
    with netCDF4.Dataset(paths[1], "a") as nc:
        nc["lat"][:] = bad
    n = int(np.isnan(bad).sum())
    text = bake_fails(zarr_recipe(paths, "time", 4), tmp_path / "out", SchemaError)
    first = int(np.flatnonzero(np.isnan(bad))[0])
    assert text == (
        f"{paths[1]}: coordinate 'lat' has {n} missing value(s) of 4, first at index {first}"
    )


def test_icechunk_references_of_cmip_files_with_0d_height(tmp_path):
    pytest.importorskip("icechunk")
    paths = write_cmip(tmp_path / "src", "noleap")
    result = bake(ref_recipe(paths), f"icechunk://{tmp_path / 'ic'}", workers=1)
    out = assert_matches_sources(result.url, paths)
    assert out.height.dims == () and float(out.height) == 2.0
    assert out.time.encoding["calendar"] == "noleap"
    xr.testing.assert_identical(out, open_sources(paths, "time"))
    with open_references(bake(ref_recipe(paths), tmp_path / "json").url) as ds:
        xr.testing.assert_identical(ds.load(), out)


def test_icechunk_references_of_grib_files(tmp_path):
    pytest.importorskip("icechunk")
    pytest.importorskip("cfgrib")
    paths = write_grib_archive(tmp_path / "src", days=2, steps_per_file=1)
    recipe = ref_recipe(paths, file_type="grib")
    result = bake(recipe, f"icechunk://{tmp_path / 'ic'}", workers=1)
    grib = {"engine": "cfgrib", "backend_kwargs": {"indexpath": ""}}
    src = xr.concat(
        [xr.open_dataset(p, **grib).expand_dims("time").load() for p in paths],
        dim="time",
        coords="different",
        compat="equals",
    )
    with open_references(result.url) as ds:
        out = ds.load()
    for name, var in src.variables.items():
        assert out[name].dtype == var.dtype, name
        np.testing.assert_array_equal(out[name].transpose(*var.dims).values, var.values, name)
    assert out.t2m.dtype == np.float32 and out.sizes["time"] == 4
    with open_references(bake(recipe, tmp_path / "json").url) as ds:
        xr.testing.assert_identical(ds.load(), out)
    group = zarr.open_group(readonly_store(str(tmp_path / "ic" / "ref")), mode="r")
    codecs = group["t2m"].metadata.to_dict()["codecs"]
    assert list(codecs) == [
        {"name": "numcodecs.grib", "configuration": {"var": "t2m", "dtype": "<f4"}}
    ]


# -- real files: iris-sample-data (Met Office, Open Government Licence) ------------------


def sample_data(name: str) -> Path:
    """A file of the iris-sample-data package."""
    iris_sample_data = pytest.importorskip("iris_sample_data")
    return Path(iris_sample_data.path) / name


def split_along(path: Path, dim: str, sizes: list[int], folder: Path) -> list[Path]:
    """``path`` cut along ``dim`` into files of ``sizes`` steps, each variable's raw values
    and attributes copied as stored (same format, dtypes, fill values, strings)."""
    folder.mkdir(parents=True, exist_ok=True)
    out, start = [], 0
    with netCDF4.Dataset(path) as src:
        src.set_auto_maskandscale(False)
        src.set_auto_chartostring(False)
        for i, n in enumerate(sizes):
            part = folder / f"{path.stem}_{i}{path.suffix}"
            with netCDF4.Dataset(part, "w", format=src.data_model) as dst:
                dst.setncatts({k: src.getncattr(k) for k in src.ncattrs()})
                for name, d in src.dimensions.items():
                    dst.createDimension(name, None if d.isunlimited() else len(d))
                for var in src.variables.values():
                    _copy_variable(var, dst, dim, slice(start, start + n))
            out.append(part)
            start += n
    return out


def _copy_variable(var, dst, dim: str, span: slice) -> None:
    attrs = {k: var.getncattr(k) for k in var.ncattrs()}
    fill = attrs.pop("_FillValue", None)
    dtype = str if var.dtype is str else var.dtype
    new = dst.createVariable(var.name, dtype, var.dimensions, fill_value=fill)
    new.setncatts(attrs)
    index = tuple(span if d == dim else slice(None) for d in var.dimensions)
    values = var[index] if var.dimensions else var[...]
    if var.dtype is str:
        for i, text in enumerate(np.asarray(values).ravel()):
            new[i] = text
    else:
        new[...] = values


def nemo_by_time_centered(ds: xr.Dataset) -> xr.Dataset:
    return ds.swap_dims(time_counter="time_centered")


def test_real_nemo_monthly_files_360_day_bounds(tmp_path):
    """NEMO ocean output: ``time_centered_bounds`` on the 360-day calendar, decoded to cftime;
    ``time_counter`` is 0 in every file, so the files combine along ``time_centered``."""
    paths = sorted(sample_data("NEMO").glob("*.nc"))
    pattern = pattern_from_file_sequence([str(p) for p in paths], "time_centered", 1)
    recipe = pattern | OpenWithXarray() | nemo_by_time_centered | StoreToZarr("nemo.zarr")
    result = bake(recipe, tmp_path / "out", workers=2)
    src = open_sources(paths, "time_centered", nemo_by_time_centered)
    out = assert_like_xarray(result.url, src)
    assert out.time_centered_bounds.encoding["calendar"] == "360_day"
    assert out.time_centered.attrs["bounds"] == "time_centered_bounds"


def test_real_nemo_files_along_time_counter_are_refused(tmp_path):
    paths = sorted(sample_data("NEMO").glob("*.nc"))
    text = bake_fails(zarr_recipe(paths, "time_counter", 1), tmp_path / "out", SchemaError)
    assert text == (
        f"time_counter 0.0 in {paths[1]} repeats time_counter 0.0 in {paths[0]}: "
        "inputs must be sorted along 'time_counter' without duplicates or overlaps"
    )


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_real_hadcm3_a1b_split_along_time(tmp_path, zarr_format):
    """HadCM3's A1B scenario: 360-day ``time_bnds``, 0-d ``height``, grid mapping and
    cftime ``forecast_reference_time``; cut into four files of 60 months."""
    paths = split_along(sample_data("A1B_north_america.nc"), "time", [60] * 4, tmp_path / "src")
    recipe = zarr_recipe(paths, "time", 60, target_chunks={"time": 48}, zarr_format=zarr_format)
    result = bake(recipe, tmp_path / "out", workers=2)
    out = assert_like_xarray(result.url, open_sources(paths, "time"))
    whole = xr.open_dataset(sample_data("A1B_north_america.nc"))
    xr.testing.assert_identical(out, whole.load())


def test_real_hadcm3_a1b_icechunk_references(tmp_path):
    pytest.importorskip("icechunk")
    paths = split_along(sample_data("A1B_north_america.nc"), "time", [120] * 2, tmp_path / "src")
    result = bake(ref_recipe(paths), f"icechunk://{tmp_path / 'ic'}", workers=1)
    with open_references(result.url) as out:
        xr.testing.assert_identical(out.load(), open_sources(paths, "time"))
        assert out.height.dims == () and out.latitude_longitude.dims == ()


def test_real_ostia_standard_calendar_bounds(tmp_path):
    """OSTIA monthly: ``time_bnds`` and ``forecast_reference_time_bnds`` on the standard
    calendar, whose units come from the variables naming them as bounds."""
    paths = split_along(sample_data("ostia_monthly.nc"), "time", [18] * 3, tmp_path / "src")
    recipe = zarr_recipe(paths, "time", 18, target_chunks={"time": 12})
    result = bake(recipe, tmp_path / "out", workers=1)
    out = assert_like_xarray(result.url, open_sources(paths, "time"))
    assert out.time_bnds.dtype.kind == "M"
    xr.testing.assert_identical(out, xr.open_dataset(sample_data("ostia_monthly.nc")).load())


def test_real_variable_length_strings_of_different_widths(tmp_path):
    """``expver`` as variable-length strings: "AB", "ABC" and "ABCD" by turns."""
    cut = split_along(sample_data("vlstr_type.nc"), "time", [25, 50, 75], tmp_path / "src")
    assert [xr.open_dataset(p).expver.dtype.str for p in cut] == ["<U2", "<U3", "<U4"]
    result = bake(zarr_recipe(cut, "time", None, target_chunks={"time": 40}), tmp_path / "out")
    out = assert_like_xarray(result.url, open_sources(cut, "time"))
    xr.testing.assert_identical(out, xr.open_dataset(sample_data("vlstr_type.nc")).load())


def test_real_scenarios_as_string_keys_of_a_new_dim(tmp_path):
    """HadCM3's A1B and E1 scenarios side by side along a new ``experiment`` dim."""
    names = ["A1B", "E1"]
    paths = [sample_data(f"{name}_north_america.nc") for name in names]

    def experiment(ds: xr.Dataset) -> xr.Dataset:
        return ds.expand_dims(experiment=[Path(ds.encoding["source"]).name.split("_")[0]])

    pattern = FilePattern(
        lambda experiment: str(paths[names.index(experiment)]),
        ConcatDim("experiment", names, nitems_per_file=1),
    )
    recipe = pattern | OpenWithXarray() | experiment | StoreToZarr("s.zarr")
    result = bake(recipe, tmp_path / "out", workers=1)
    out = xr.open_zarr(result.url).load()
    assert out.experiment.values.tolist() == names
    xr.testing.assert_identical(out, open_sources(paths, "experiment", experiment))


@pytest.mark.parametrize(
    "path",
    [
        Path(xr.__file__).parent / "tests" / "data" / "example.grib",  # xarray's, from ECMWF
        "polar_stereo.grib2",  # iris-sample-data's, from the Canadian Meteorological Service
    ],
)
def test_real_grib_icechunk_references(tmp_path, path):
    """GRIB references committed to Icechunk (0-d ``step``, ``valid_time`` and levels, a
    GRIB codec) read as cfgrib reads the file."""
    pytest.importorskip("icechunk")
    pytest.importorskip("cfgrib")
    path = sample_data(path) if isinstance(path, str) else path
    if not path.exists():
        pytest.skip(f"{path} is not installed")
    result = bake(ref_recipe([path], file_type="grib"), f"icechunk://{tmp_path / 'ic'}")
    src = xr.open_dataset(path, engine="cfgrib", backend_kwargs={"indexpath": ""}).load()
    with open_references(result.url) as ds:
        out = ds.load()
    for name, var in src.variables.items():
        got = out[name]
        if "time" in got.dims and "time" not in var.dims:  # the concat dim, promoted
            got = got.squeeze("time")
        assert got.dtype == var.dtype, name
        np.testing.assert_array_equal(got.transpose(*var.dims).values, var.values, name)
        assert got.attrs == var.attrs, name


def test_missing_values_in_the_concat_coordinate_are_refused_by_the_scan(tmp_path):
    paths = write_cmip(tmp_path / "src", "standard")
    with netCDF4.Dataset(paths[2], "a") as nc:
        nc["time"][1:] = np.nan
    text = bake_fails(zarr_recipe(paths, "time", 4), tmp_path / "out", SchemaError)
    assert text == f"{paths[2]}: coordinate 'time' has 3 missing value(s) of 4, first at index 1"


def test_append_of_narrower_strings_and_refusal_of_wider_ones(tmp_path):
    paths = write_era5(tmp_path / "src", ("0001", "005", "005"))
    root = tmp_path / "out"
    url = bake(zarr_recipe(paths[:1], "valid_time", 2), root).url
    bake(zarr_recipe(paths[:2], "valid_time", 2), root, append=True)
    out = xr.open_zarr(url)
    assert out.expver.values.tolist() == ["0001"] * 2 + ["005"] * 2
    wider = write_era5(tmp_path / "wider", ("0001", "005", "00001"))
    shutil.copy(wider[2], paths[2])
    with pytest.raises(AppendError) as info:
        bake(zarr_recipe(paths, "valid_time", 2), root, append=True)
    assert str(info.value) == (
        f"cannot append {paths[2]}: 'expver' is <U5 {{'valid_time': 2}}, "
        "the store's is <U4 {'valid_time': 4}"
    )


def test_append_of_cmip_files_on_the_360_day_calendar(tmp_path):
    paths = write_cmip(tmp_path / "src", "360_day")
    root = tmp_path / "out"
    url = bake(zarr_recipe(paths[:2], "time", 4, target_chunks={"time": 3}), root).url
    result = bake(zarr_recipe(paths, "time", 4, target_chunks={"time": 3}), root, append=True)
    assert result.inputs == 1
    assert_like_xarray(url, open_sources(paths, "time"))


def write_zarr_inputs(folder: Path, **encoding) -> list[Path]:
    """Two Zarr v2 stores of two steps each, ``v`` encoded as ``encoding`` says."""
    paths = []
    for i in range(2):
        path = folder / f"z{i}.zarr"
        values = np.arange(20.0).reshape(2, 10) / 3 + i
        ds = xr.Dataset({"v": (("time", "x"), values)}, coords={"time": [2 * i, 2 * i + 1]})
        ds.to_zarr(path, zarr_format=2, encoding={"v": encoding})
        paths.append(path)
    return paths


def test_icechunk_references_of_zarr_v2_inputs_with_filters_and_blosc(tmp_path):
    pytest.importorskip("icechunk")
    codecs = {"filters": [numcodecs.Delta(dtype="<f8")], "compressors": [numcodecs.Blosc()]}
    paths = write_zarr_inputs(tmp_path / "src", **codecs)
    result = bake(ref_recipe(paths, file_type="zarr"), f"icechunk://{tmp_path / 'ic'}")
    src = xr.concat([xr.open_zarr(p).load() for p in paths], "time")
    with open_references(result.url) as out:
        xr.testing.assert_identical(out.load(), src)
    group = zarr.open_group(readonly_store(str(tmp_path / "ic" / "ref")), mode="r")
    names = [c["name"] for c in group["v"].metadata.to_dict()["codecs"]]
    assert names == ["numcodecs.delta", "bytes", "numcodecs.blosc"]


def test_icechunk_refuses_a_codec_without_a_zarr_v3_form(tmp_path):
    pytest.importorskip("icechunk")
    paths = write_zarr_inputs(tmp_path / "src", compressors=[numcodecs.Base64()])
    with pytest.raises(ArcoforgeError) as info:
        bake(ref_recipe(paths, file_type="zarr"), f"icechunk://{tmp_path / 'ic'}")
    assert str(info.value) == "variable 'v': codec 'base64' has no Zarr v3 form for Icechunk"


READER = """
import sys, icechunk, xarray as xr
storage = icechunk.local_filesystem_storage(sys.argv[1])
config = icechunk.RepositoryConfig.default()
prefix = "file://" + sys.argv[2] + "/"
store = icechunk.local_filesystem_store(sys.argv[2])
config.set_virtual_chunk_container(icechunk.VirtualChunkContainer(prefix, store))
access = icechunk.containers_credentials({prefix: None})
repo = icechunk.Repository.open(storage, config, authorize_virtual_chunk_access=access)
ds = xr.open_zarr(repo.readonly_session(branch="main").store, consolidated=False)
print(float(ds.t2m.values.sum()), "arcoforge" in sys.modules)
"""


def test_a_reader_opens_grib_references_through_the_entry_point(tmp_path):
    """A reader that imports only icechunk and xarray opens a GRIB Icechunk repository: zarr
    finds the GRIB codec by the ``zarr.codecs`` entry point pyproject.toml declares, which the
    installed arcoforge declares too."""
    pytest.importorskip("icechunk")
    pytest.importorskip("cfgrib")
    paths = write_grib_archive(tmp_path / "src", days=1, steps_per_file=1)
    result = bake(ref_recipe(paths, file_type="grib"), f"icechunk://{tmp_path / 'ic'}")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    info = tmp_path / "site" / "arcoforge_entry_points-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: arcoforge-entry-points\n")
    lines = [f"{k} = {v}" for k, v in declared["zarr.codecs"].items()]
    (info / "entry_points.txt").write_text("[zarr.codecs]\n" + "\n".join(lines) + "\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(info.parent), str(ROOT)])}
    reader = [sys.executable, "-c", READER, result.url, str(paths[0].parent)]
    done = subprocess.run(reader, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    grib = {"engine": "cfgrib", "backend_kwargs": {"indexpath": ""}}
    want = sum(float(xr.open_dataset(p, **grib).t2m.values.astype("f8").sum()) for p in paths)
    total, imported = done.stdout.split()[-2:]
    assert float(total) == pytest.approx(want, rel=1e-6) and imported == "True"
    installed = importlib.metadata.entry_points(group="zarr.codecs")
    assert {e.name: e.value for e in installed}.get("numcodecs.grib") == (
        declared["zarr.codecs"]["numcodecs.grib"]
    ), "the installed arcoforge declares the codec"


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_char_arrays_holding_bytes_that_are_not_utf8(tmp_path, zarr_format):
    """A char variable is bytes, whatever they hold: the store reads back as the source."""
    paths = []
    for i in range(2):
        path = tmp_path / f"c{i}.nc"
        with netCDF4.Dataset(path, "w", format="NETCDF3_CLASSIC") as nc:
            nc.createDimension("time", None)
            nc.createDimension("n", 4)
            nc.createVariable("time", "f8", ("time",))[:] = [i]
            flag = nc.createVariable("flag", "S1", ("time", "n"))
            flag[0, :] = np.array([b"a", b"\x80", bytes([0xFF - i]), b""], "S1")
        paths.append(path)
    recipe = zarr_recipe(paths, "time", 1, zarr_format=zarr_format)
    result = bake(recipe, tmp_path / "out")
    out = assert_like_xarray(result.url, open_sources(paths, "time"))
    assert out.flag.values.tolist() == [b"a\x80\xff", b"a\x80\xfe"]
