"""The source encoding kept by default (int16 packing, fill values, time units), decoded
output with ``decode=True``, overrides on top of either, and stores made before the change
(decoded float32) that appends and retries keep as they are."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import xarray as xr
import zarr

from arcoforge import OpenWithXarray, StoreToZarr, bake, pattern_from_file_sequence
from arcoforge.core.compare import compare_stored
from arcoforge.core.ledger import fingerprint
from arcoforge.errors import ValidationError
from arcoforge.testing.archives import write_oisst_archive
from arcoforge.testing.compare import assert_same_as_sources, xarray_to_zarr


def _recipe(paths, store="out.zarr", **writer):
    pattern = pattern_from_file_sequence([str(p) for p in paths], "time", nitems_per_file=1)
    return pattern | OpenWithXarray() | StoreToZarr(store, target_chunks={"time": 3}, **writer)


@pytest.fixture
def archive(tmp_path):
    return write_oisst_archive(tmp_path / "src", days=6, ny=8, nx=16)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_default_keeps_the_source_packing_as_xarray_to_zarr_does(tmp_path, archive, zarr_format):
    result = bake(_recipe(archive, zarr_format=zarr_format), tmp_path / "out", workers=1)
    source = xr.open_dataset(archive[0], mask_and_scale=False)
    for name in ("sst", "anom", "err", "ice"):
        stored = zarr.open_array(f"{result.url}/{name}", mode="r")
        assert stored.dtype == source[name].dtype == np.int16, name
        assert stored.attrs["scale_factor"] == pytest.approx(float(source[name].scale_factor))
        np.testing.assert_array_equal(stored[0:1], source[name].values)
    theirs = xr.open_mfdataset(archive).load()
    theirs.to_zarr(tmp_path / "xarray.zarr", zarr_format=zarr_format, consolidated=False)
    ours = xr.open_zarr(result.url)
    xarray = xr.open_zarr(tmp_path / "xarray.zarr", consolidated=False)
    for name, var in xarray.variables.items():
        assert ours[name].dtype == var.dtype, name
        np.testing.assert_array_equal(ours[name].values, var.values, err_msg=name)
    assert ours.time.encoding["units"] == xarray.time.encoding["units"]
    assert ours.time.encoding["calendar"] == xarray.time.encoding["calendar"]
    assert ours.sst.dtype == np.float64 and theirs.sst.dtype == np.float32


def test_decode_and_overrides_on_top_of_either(tmp_path, archive):
    packed = {"ice": {"dtype": "int8", "scale_factor": 1.0, "_FillValue": -1}}
    recipe = _recipe(archive, decode=True, encoding=packed)
    decoded = bake(recipe, tmp_path / "decoded", workers=1)
    assert zarr.open_array(f"{decoded.url}/sst", mode="r").dtype == np.float32
    assert zarr.open_array(f"{decoded.url}/ice", mode="r").dtype == np.int8
    out = xr.open_zarr(decoded.url)
    src = xr.open_mfdataset(archive).load()
    np.testing.assert_array_equal(out.sst.values, src.sst.values)
    assert out.sst.dtype == np.float32
    np.testing.assert_array_equal(out.ice.values, np.round(src.ice.values))
    plain = {"sst": {"dtype": "float32"}}
    kept = bake(_recipe(archive, encoding=plain), tmp_path / "kept", workers=1)
    assert zarr.open_array(f"{kept.url}/sst", mode="r").dtype == np.float32
    assert zarr.open_array(f"{kept.url}/ice", mode="r").dtype == np.int16
    assert_same_as_sources(xr.open_zarr(kept.url).drop_vars("sst"), archive, drop_variables="sst")


def test_the_default_writer_keeps_the_fingerprint_it_had_before_decode_existed():
    fields = [
        (f.name, f.type, f)
        for f in dataclasses.fields(StoreToZarr)
        if f.name != "decode"  # the writer as it was
    ]
    before = dataclasses.make_dataclass("StoreToZarr", fields, frozen=True)
    assert fingerprint(StoreToZarr("o.zarr")) == fingerprint(before("o.zarr"))
    assert fingerprint(StoreToZarr("o.zarr", decode=True)) != fingerprint(before("o.zarr"))


def test_append_and_retry_follow_a_decoded_stores_encoding(tmp_path):
    archive = write_oisst_archive(tmp_path / "src", days=9, ny=8, nx=16)
    target = tmp_path / "out"
    bake(_recipe(archive[:6], decode=True), target, workers=1)
    grown = bake(_recipe(archive, decode=True), target, workers=1, append=True)
    stored = zarr.open_array(f"{grown.url}/sst", mode="r")
    assert stored.dtype == np.float32 and "scale_factor" not in stored.attrs
    assert_same_as_sources(grown.url, archive, decoded=True)
    (tmp_path / "held").mkdir()
    shutil.move(archive[7], tmp_path / "held" / archive[7].name)
    skipped = bake(_recipe(archive, "r.zarr", decode=True), target, workers=1, skip_failed=True)
    assert skipped.stats["missing_inputs"] == [str(archive[7])]
    shutil.move(tmp_path / "held" / archive[7].name, archive[7])
    retried = bake(_recipe(archive, "r.zarr", decode=True), target, workers=1, retry_failed=True)
    assert zarr.open_array(f"{retried.url}/sst", mode="r").dtype == np.float32
    assert_same_as_sources(retried.url, archive, decoded=True)


def test_append_of_the_default_continues_the_packing(tmp_path):
    archive = write_oisst_archive(tmp_path / "src", days=9, ny=8, nx=16)
    bake(_recipe(archive[:6]), tmp_path / "out", workers=1)
    grown = bake(_recipe(archive), tmp_path / "out", workers=1, append=True)
    stored = zarr.open_array(f"{grown.url}/sst", mode="r")
    raw = xr.open_dataset(archive[8], mask_and_scale=False)
    np.testing.assert_array_equal(stored[8:9], raw.sst.values)
    assert_same_as_sources(grown.url, archive)


def test_the_check_compares_packed_values_as_stored(tmp_path, archive):
    result = bake(_recipe(archive), tmp_path / "out", workers=1)
    stored = xr.open_dataset(
        result.url, engine="zarr", mask_and_scale=False, decode_times=False, consolidated=False
    ).isel(time=[0])
    source = xr.open_dataset(archive[0]).load()
    compare_stored(source[["sst"]], stored[["sst"]], "day 1")
    nudged = source[["sst"]].copy(deep=True)
    at = tuple(int(i) for i in np.argwhere(~np.isnan(nudged.sst.values))[0])
    nudged.sst.values[at] += np.float32(0.01)  # one step of the packing
    raw = int(stored.sst.values[at])
    with pytest.raises(ValidationError) as caught:
        compare_stored(nudged, stored[["sst"]], "day 1")
    where = dict(zip(("time", "lat", "lon"), at, strict=True))
    assert (
        str(caught.value)
        == f"day 1: 'sst' differs at {where}: store has {raw}, source has {raw + 1}"
    )


def test_xarray_to_zarr_helper_reads_back_float64(archive):
    """The reference the tests compare with is xarray's own to_zarr, float64 for packing."""
    assert xarray_to_zarr(xr.open_dataset(archive[0]).load()).sst.dtype == np.float64
