"""Bakes of every supported layout, each compared value for value with its sources."""

from __future__ import annotations

import json
import re

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
from arcoforge.core.runs import RUNS_FOLDER
from arcoforge.errors import SchemaError
from arcoforge.testing.archives import (
    oisst_dataset,
    write_coords_archive,
    write_merge_archive,
    write_oisst_archive,
)
from arcoforge.testing.compare import assert_same_as_sources, xarray_to_zarr
from arcoforge.testing.recipes import simple_recipe
from arcoforge.zarr.append import write_chunks


@pytest.mark.parametrize("workers", [1, 2])
def test_daily_files_equal_sources(tmp_path, small_archive, workers):
    result = bake(simple_recipe(small_archive), tmp_path / "out", workers=workers)
    out, src = assert_same_as_sources(result.url, small_archive)
    assert out.sst.dtype == np.float64  # as xarray's to_zarr: the scale_factor is a JSON number
    assert zarr.open_array(f"{result.url}/sst", mode="r").dtype == np.int16
    assert np.isnan(out.sst.values).any(), "land cells must stay NaN"
    assert out.attrs["title"] == src.attrs["title"]
    assert out.sst.attrs["units"] == "Celsius"
    assert dict(zip(out.sst.dims, out.sst.encoding["chunks"], strict=True)) == {
        "time": 3,
        "lat": 18,
        "lon": 36,
    }
    assert result.inputs == 8
    assert result.dims == {"time": 8, "lat": 18, "lon": 36}
    assert result.stats["validated_inputs"] == 2


def test_int16_packing_is_kept_as_stored(tmp_path, small_archive):
    result = bake(simple_recipe(small_archive), tmp_path / "out", workers=1)
    raw = xr.open_dataset(small_archive[3], mask_and_scale=False)
    assert raw.sst.dtype == np.int16 and raw.sst.attrs["scale_factor"] == np.float32(0.01)
    stored = zarr.open_array(f"{result.url}/sst", mode="r")
    np.testing.assert_array_equal(stored[3:4], raw.sst.values)
    assert (
        stored.attrs["scale_factor"] == pytest.approx(0.01) and stored.attrs["_FillValue"] == -999
    )


def test_decode_writes_the_values_xarray_reads(tmp_path, small_archive):
    pattern = pattern_from_file_sequence([str(p) for p in small_archive], "time", nitems_per_file=1)
    recipe = pattern | OpenWithXarray() | StoreToZarr("d.zarr", {"time": 3}, decode=True)
    result = bake(recipe, tmp_path / "out", workers=1)
    out, _ = assert_same_as_sources(result.url, small_archive, decoded=True)
    assert out.sst.dtype == np.float32
    stored = zarr.open_array(f"{result.url}/sst", mode="r")
    assert stored.dtype == np.float32 and "scale_factor" not in stored.attrs
    raw = xr.open_dataset(small_archive[3], mask_and_scale=False)
    expected = np.where(raw.sst.values == -999, np.nan, raw.sst.values * np.float32(0.01))
    np.testing.assert_array_equal(out.sst.isel(time=[3]).values, expected.astype(np.float32))


def test_default_dtypes_are_xarray_to_zarrs(tmp_path, small_archive):
    """The lead's decision: the default store reads back as xarray's ``to_zarr`` of the same
    source does (a float32 ``scale_factor`` is a JSON number, so float64), not as the source."""
    result = bake(simple_recipe(small_archive), tmp_path / "out", workers=1)
    ours = xr.open_zarr(result.url)
    theirs = xarray_to_zarr(xr.open_mfdataset(small_archive).load())
    assert {n: v.dtype for n, v in ours.variables.items()} == {
        n: v.dtype for n, v in theirs.variables.items()
    }
    assert theirs.sst.dtype == np.float64
    assert xr.open_dataset(small_archive[0]).sst.dtype == np.float32
    for name in theirs.variables:
        raw_ours = zarr.open_array(f"{result.url}/{name}", mode="r")
        assert raw_ours.dtype == theirs[name].encoding["dtype"], name


def test_time_has_one_units_and_calendar(tmp_path, small_archive):
    result = bake(simple_recipe(small_archive), tmp_path / "out", workers=1)
    attrs = zarr.open_group(result.url, mode="r")["time"].attrs
    assert attrs["units"].replace("T", " ") == "days since 1978-01-01 12:00:00"
    assert attrs["calendar"] == "standard"
    times = xr.open_zarr(result.url).time.values
    assert (np.diff(times) == np.timedelta64(1, "D")).all()


def test_multi_step_files(tmp_path):
    paths = write_oisst_archive(tmp_path / "src", days=9, ny=12, nx=24, steps_per_file=3)
    pattern = pattern_from_file_sequence([str(p) for p in paths], "time", nitems_per_file=3)
    recipe = pattern | OpenWithXarray() | StoreToZarr("o.zarr", target_chunks={"time": 2})
    result = bake(recipe, tmp_path / "out", workers=2)
    assert_same_as_sources(result.url, paths)
    assert xr.open_zarr(result.url).sizes["time"] == 9


def test_unknown_steps_per_file_are_counted_by_the_scan(tmp_path):
    paths = write_oisst_archive(tmp_path / "src", days=6, ny=6, nx=12, steps_per_file=3)
    pattern = pattern_from_file_sequence([str(p) for p in paths], "time")
    recipe = pattern | OpenWithXarray() | StoreToZarr("o.zarr", target_chunks={"time": 4})
    result = bake(recipe, tmp_path / "out", workers=1)
    assert_same_as_sources(result.url, paths)


def test_values_match_the_generated_dataset(tmp_path):
    paths = write_oisst_archive(tmp_path / "src", days=5, ny=8, nx=16)
    pattern = pattern_from_file_sequence([str(p) for p in paths], "time", nitems_per_file=1)
    recipe = pattern | OpenWithXarray() | StoreToZarr("d.zarr", decode=True)
    result = bake(recipe, tmp_path / "out", workers=1)
    out = xr.open_zarr(result.url)
    want = oisst_dataset(days=5, ny=8, nx=16)
    for name in want.data_vars:
        np.testing.assert_array_equal(out[name].values, want[name].values)


def test_merge_dim_across_variable_files(tmp_path):
    files = write_merge_archive(tmp_path / "src", days=4, ny=6, nx=12)
    days = [p.name.split("_")[1][:8] for p in files["sst"]]
    pattern = FilePattern(
        lambda variable, time: str(tmp_path / "src" / f"{variable}_{time}.nc"),
        MergeDim("variable", ["sst", "ice"]),
        ConcatDim("time", days, nitems_per_file=1),
    )
    recipe = pattern | OpenWithXarray() | StoreToZarr("m.zarr", target_chunks={"time": 2})
    result = bake(recipe, tmp_path / "out", workers=2)
    out = xr.open_zarr(result.url)
    assert set(out.data_vars) == {"sst", "ice"}
    for var in ("sst", "ice"):
        src = xr.open_mfdataset(files[var], combine="nested", concat_dim="time").load()
        np.testing.assert_array_equal(out[var].values, xarray_to_zarr(src)[var].values)


@pytest.mark.parametrize(
    ("file_format", "chunked", "file_type"),
    [("NETCDF3_64BIT", False, "netcdf3"), ("NETCDF4", False, "netcdf4"), ("NETCDF4", True, "hdf5")],
)
def test_file_formats(tmp_path, file_format, chunked, file_type):
    paths = write_oisst_archive(
        tmp_path / "src", days=4, ny=8, nx=16, file_format=file_format, chunked=chunked
    )
    recipe = simple_recipe(paths, file_type=file_type)
    result = bake(recipe, tmp_path / "out", workers=1)
    assert_same_as_sources(result.url, paths)


def test_noleap_calendar(tmp_path):
    paths = write_oisst_archive(
        tmp_path / "src", days=4, ny=6, nx=12, calendar="noleap", start="2001-02-27"
    )
    result = bake(simple_recipe(paths), tmp_path / "out", workers=1)
    out = xr.open_zarr(result.url)
    assert out.time.values[0].calendar == "noleap"
    assert [t.strftime("%m-%d") for t in out.time.values] == ["02-27", "02-28", "03-01", "03-02"]
    assert zarr.open_group(result.url, mode="r")["time"].attrs["calendar"] == "noleap"
    assert_same_as_sources(result.url, paths)


def test_non_dimension_coordinates(tmp_path):
    paths = write_coords_archive(tmp_path / "src", days=6, ny=5, nx=7)
    pattern = pattern_from_file_sequence([str(p) for p in paths], "time", nitems_per_file=2)
    recipe = pattern | OpenWithXarray() | StoreToZarr("c.zarr", target_chunks={"time": 3})
    result = bake(recipe, tmp_path / "out", workers=2)
    out, _ = assert_same_as_sources(result.url, paths)
    assert {"mask", "forecast_hour"} <= set(out.coords)
    np.testing.assert_array_equal(out.forecast_hour.values, np.arange(1, 7) * 24)
    assert out.mask.dtype == np.int8


def test_zarr_input_is_rechunked(tmp_path, small_archive):
    first = bake(simple_recipe(small_archive, chunks={"time": 1}), tmp_path / "a", workers=1)
    pattern = pattern_from_file_sequence([first.url], "time", file_type="zarr")
    recipe = pattern | OpenWithXarray() | StoreToZarr("r.zarr", target_chunks={"time": 4, "lat": 9})
    result = bake(recipe, tmp_path / "b", workers=1)
    assert_same_as_sources(result.url, small_archive)
    assert xr.open_zarr(result.url).sst.encoding["chunks"] == (4, 9, 36)


def test_target_chunk_size(tmp_path, small_archive):
    # one step of one variable is 18*36*4 = 2592 bytes, so 10kB holds 3 steps
    result = bake(simple_recipe(small_archive, chunks="10kB"), tmp_path / "out", workers=1)
    assert result.chunks["time"] == 3
    assert xr.open_zarr(result.url).time.encoding["chunks"] == (8,)


def test_zarr_v2_and_encoding_control(tmp_path, small_archive):
    encoding = {"sst": {"dtype": "int16", "scale_factor": 0.01, "_FillValue": -999}}
    pattern = pattern_from_file_sequence([str(p) for p in small_archive], "time", nitems_per_file=1)
    recipe = (
        pattern
        | OpenWithXarray()
        | StoreToZarr("v2.zarr", target_chunks={"time": 4}, zarr_format=2, encoding=encoding)
    )
    result = bake(recipe, tmp_path / "out", workers=2)
    meta = json.loads((tmp_path / "out" / "v2.zarr" / "sst" / ".zarray").read_text())
    assert meta["dtype"] == "<i2" and meta["chunks"] == [4, 18, 36]
    assert (tmp_path / "out" / "v2.zarr" / ".zmetadata").exists()
    out = xr.open_zarr(result.url)
    src = xr.open_mfdataset(small_archive).load()
    np.testing.assert_array_equal(out.ice.values, xarray_to_zarr(src).ice.values)
    np.testing.assert_allclose(out.sst.values, src.sst.values, atol=0.005, rtol=0)
    assert np.array_equal(np.isnan(out.sst.values), np.isnan(src.sst.values))


@pytest.mark.parametrize(
    ("encoding", "step", "line"),
    [
        (
            {"chunks": (1, 18, 36), "shards": (4, 18, 36)},
            2,
            "shards of 4 along 'time' do not divide the write chunks of 2",
        ),
        (
            {"chunks": (1, 18, 36), "shards": (3, 18, 36)},
            4,
            "shards of 3 along 'time' do not divide the write chunks of 4",
        ),
        (
            {"chunks": (4, 18, 36)},
            6,
            "chunks of 4 along 'time' do not divide the write chunks of 6",
        ),
    ],
)
def test_stored_objects_a_write_region_would_split_are_refused(
    tmp_path, small_archive, encoding, step, line
):
    """Two write tasks filling parts of one stored chunk or shard at once would lose one's
    part: a chunk or shard that target_chunks does not divide is refused before writing."""
    pattern = pattern_from_file_sequence([str(p) for p in small_archive], "time", nitems_per_file=1)
    writer = StoreToZarr("s.zarr", target_chunks={"time": step}, encoding={"sst": encoding})
    with pytest.raises(SchemaError) as refused:
        bake(pattern | OpenWithXarray() | writer, tmp_path / "out", workers=2)
    unit = line.split(" of ")[1].split()[0]
    assert str(refused.value) == (
        f"StoreToZarr encoding of 'sst': {line} (target_chunks), so two write tasks would fill "
        f"one at once; make target_chunks along 'time' a multiple of {unit}"
    )
    assert not (tmp_path / "out" / "s.zarr").exists()


def test_shards_of_the_write_chunks_bake_and_a_change_rewrites_whole_shards(
    tmp_path, small_archive
):
    """Shards equal to target_chunks with smaller inner chunks bake; a re-bake of changed
    inputs (several in one shard, two workers) writes each shard from one task only."""
    pattern = pattern_from_file_sequence([str(p) for p in small_archive], "time", nitems_per_file=1)
    sharded = {name: {"chunks": (1, 18, 36), "shards": (4, 18, 36)} for name in ("sst", "anom")}
    writer = StoreToZarr("s.zarr", target_chunks={"time": 4}, encoding=sharded)
    result = bake(pattern | OpenWithXarray() | writer, tmp_path / "out", workers=2)
    sst = zarr.open_array(f"{result.url}/sst")
    assert (sst.shards, sst.chunks) == ((4, 18, 36), (1, 18, 36))
    assert_same_as_sources(result.url, small_archive)
    changed = write_oisst_archive(tmp_path / "new", days=8, ny=18, nx=36, seed=7)
    days = (1, 2, 3, 5, 6)
    for day in days:
        small_archive[day].write_bytes(changed[day].read_bytes())
    with xr.open_zarr(result.url) as store:  # what patches write in: whole shards
        assert write_chunks(store) == {"time": 4, "lat": 18, "lon": 36}
    again = bake(pattern | OpenWithXarray() | writer, tmp_path / "out", workers=2)
    assert sorted(again.stats["changed_inputs"]) == sorted(str(small_archive[d]) for d in days)
    assert_same_as_sources(again.url, small_archive)


def test_the_write_chunks_of_a_store_cover_every_variable_s_stored_objects(tmp_path):
    """Along each dim, the least common multiple of the data variables' shards or chunks."""
    ds = xr.Dataset(
        {
            "a": (("time", "x"), np.zeros((12, 4), "f4")),
            "b": (("time", "x"), np.zeros((12, 4), "f4")),
            "c": (("x",), np.zeros(4, "f4")),
        }
    )
    encoding = {
        "a": {"chunks": (1, 4), "shards": (4, 4)},
        "b": {"chunks": (6, 2)},
        "c": {"chunks": (4,)},
    }
    ds.to_zarr(tmp_path / "s.zarr", encoding=encoding, zarr_format=3, consolidated=False)
    with xr.open_zarr(tmp_path / "s.zarr", consolidated=False) as store:
        assert write_chunks(store) == {"time": 12, "x": 4}


def test_preprocessing_applies_to_every_input(tmp_path, small_archive):
    def kelvin(ds):
        return ds.assign(sst=ds.sst + np.float32(273.15)).drop_vars(["anom", "err"])

    pattern = pattern_from_file_sequence([str(p) for p in small_archive], "time", nitems_per_file=1)
    recipe = pattern | OpenWithXarray() | kelvin | StoreToZarr("k.zarr", target_chunks={"time": 4})
    result = bake(recipe, tmp_path / "out", workers=2)
    out = xr.open_zarr(result.url)
    assert set(out.data_vars) == {"sst", "ice"}
    src = xr.open_mfdataset(small_archive)
    np.testing.assert_array_equal(out.sst.values, (src.sst + np.float32(273.15)).values)


def test_rebake_replaces_the_store_with_the_same_values(tmp_path, small_archive):
    first = bake(simple_recipe(small_archive), tmp_path / "out", workers=1)
    before = xr.open_zarr(first.url).load()
    second = bake(simple_recipe(small_archive), tmp_path / "out", workers=2)
    xr.testing.assert_identical(before, xr.open_zarr(second.url).load())


def test_memory_budget_splits_static_dims(tmp_path, small_archive):
    from arcoforge.bake.run import normalize_root, run_plan
    from arcoforge.core.progress import Reporter
    from arcoforge.engines.local import LocalEngine
    from arcoforge.products import make_plan
    from arcoforge.zarr.plan import estimate

    recipe = simple_recipe(small_archive, chunks={"time": 8, "lat": 6})
    plan = make_plan(recipe, normalize_root(tmp_path), cache=None, workers=1)
    plan.max_task_bytes = 18 * 36 * 8 * 4 // 2
    assert len({repr(t.region) for t in plan.write_tasks(estimate(plan))}) > 1

    with LocalEngine(workers=2) as engine:
        result = run_plan(plan, engine, Reporter())
    assert_same_as_sources(result.url, small_archive)


class FailAfter:
    """A preprocessing step that raises from its ``n``-th call on (calls counted in a file)."""

    def __init__(self, counter, n):
        self.counter, self.n = counter, n
        self.__name__ = "fail_after"

    def __call__(self, ds):
        calls = int(self.counter.read_text() or 0) + 1 if self.counter.exists() else 1
        self.counter.write_text(str(calls))
        if calls >= self.n:
            raise OSError("disk went away")
        return ds


def test_failed_bake_leaves_the_published_store_untouched(tmp_path, small_archive):
    from arcoforge.errors import SourceError

    good = bake(simple_recipe(small_archive), tmp_path / "out", workers=1)
    before = xr.open_zarr(good.url).load()
    pattern = pattern_from_file_sequence([str(p) for p in small_archive], "time", nitems_per_file=1)
    # scan: 8 calls, template (lat, lon): 1 call; the write stage fails on its second input
    failing = FailAfter(tmp_path / "calls", n=11)
    recipe = (
        pattern | OpenWithXarray() | failing | StoreToZarr("out.zarr", target_chunks={"time": 3})
    )
    with pytest.raises(
        SourceError,
        match=re.escape(
            "oisst-avhrr-v02r01.19810902.nc: preprocessing fail_after failed: OSError: disk went away"
        ),
    ):
        bake(recipe, tmp_path / "out", workers=1)
    xr.testing.assert_identical(before, xr.open_zarr(good.url).load())
    assert (tmp_path / "out" / ".out.zarr.partial").exists(), "the unfinished store is kept aside"


def test_published_store_has_no_staging_left(tmp_path, small_archive):
    result = bake(simple_recipe(small_archive), tmp_path / "out", workers=2)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        RUNS_FOLDER,
        ".out.zarr.arcoforge",
        "out.zarr",
    ]
    records = tmp_path / "out" / ".out.zarr.arcoforge"
    assert sorted(p.name for p in records.iterdir()) == ["lock", "manifest.json"]
    assert result.url == str(tmp_path / "out" / "out.zarr")
