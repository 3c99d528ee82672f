"""GRIB 2 inputs through cfgrib: one time per file, several times and ensemble members."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from arcoforge import OpenWithXarray, StoreToZarr, bake, pattern_from_file_sequence
from arcoforge.testing.archives import write_grib_archive

pytest.importorskip("cfgrib", reason="GRIB needs the [grib] extra")

GRIB = {"engine": "cfgrib", "backend_kwargs": {"indexpath": ""}}


def grib_recipe(paths, nitems, **opener):
    pattern = pattern_from_file_sequence(
        [str(p) for p in paths], "time", nitems_per_file=nitems, file_type="grib"
    )
    return pattern | OpenWithXarray(**opener) | StoreToZarr("g.zarr", target_chunks={"time": 3})


def test_one_analysis_time_per_file(tmp_path):
    paths = write_grib_archive(tmp_path / "src", days=3, steps_per_file=1)
    result = bake(grib_recipe(paths, 1), tmp_path / "out", workers=2)
    out = xr.open_zarr(result.url)
    assert out.sizes["time"] == 6
    for i, path in enumerate(paths):
        with xr.open_dataset(path, **GRIB) as src:
            for var in ("t2m", "msl"):
                np.testing.assert_array_equal(out[var].isel(time=i).values, src[var].values)
            assert out.time.values[i] == src.time.values


def test_several_times_and_members_per_file(tmp_path):
    paths = write_grib_archive(tmp_path / "src", days=3, steps_per_file=2, members=3)
    result = bake(grib_recipe(paths, 2), tmp_path / "out", workers=2)
    out = xr.open_zarr(result.url)
    src = xr.concat([xr.open_dataset(p, **GRIB).load() for p in paths], dim="time")
    assert dict(out.sizes) == {"number": 3, "time": 6, "latitude": 7, "longitude": 12}
    for var in ("t2m", "msl"):
        np.testing.assert_array_equal(out[var].transpose(*src[var].dims).values, src[var].values)
    np.testing.assert_array_equal(out.valid_time.values, src.valid_time.values)
    np.testing.assert_array_equal(out.number.values, [0, 1, 2])


def test_filter_by_keys_selects_one_variable(tmp_path):
    paths = write_grib_archive(tmp_path / "src", days=2, steps_per_file=1)
    opener = {"xarray_open_kwargs": {"backend_kwargs": {"filter_by_keys": {"shortName": "msl"}}}}
    result = bake(grib_recipe(paths, 1, **opener), tmp_path / "out", workers=1)
    out = xr.open_zarr(result.url)
    assert set(out.data_vars) == {"msl"}
    with xr.open_dataset(paths[-1], **GRIB) as src:
        np.testing.assert_array_equal(out.msl.isel(time=-1).values, src.msl.values)
