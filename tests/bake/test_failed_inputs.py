"""Inputs that fail after their retries: they stop the bake by default; with skip_failed
the bake finishes with their steps as fill values and records them; retry_failed later
fills them in, rewriting only the chunks they land in."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import xarray as xr

from arcoforge import bake
from arcoforge.errors import SchemaError, SourceError
from arcoforge.testing.compare import assert_same_as_sources, xarray_to_zarr
from arcoforge.testing.httpserver import FileServer
from arcoforge.testing.recipes import simple_recipe


@pytest.fixture
def half_served(small_archive, tmp_path):
    """The small archive on a loopback server that lacks day 6 (404)."""
    root = tmp_path / "served"
    shutil.copytree(small_archive[0].parent, root)
    (root / small_archive[5].name).unlink()
    with FileServer(root) as server:
        yield server, root, [f"{server.url}/{p.name}" for p in small_archive]


def manifest(target, store="out.zarr") -> dict:
    return json.loads((target / f".{store}.arcoforge" / "manifest.json").read_text())


def test_failed_input_stops_the_bake_by_default(half_served, tmp_path):
    _, _, urls = half_served
    with pytest.raises(SourceError, match=rf"{urls[5]}.*404"):
        bake(simple_recipe(urls), tmp_path / "out", workers=2)


def test_skipped_input_leaves_fill_values_and_is_recorded(half_served, small_archive, tmp_path):
    _, _, urls = half_served
    result = bake(simple_recipe(urls), tmp_path / "out", workers=2, skip_failed=True)
    assert result.stats["missing_inputs"] == [urls[5]]
    out = xr.open_zarr(result.url).load()
    src = xr.concat([xr.open_dataset(p).load() for p in small_archive], dim="time")
    src = xarray_to_zarr(src)  # the values xarray's to_zarr of the sources reads back
    np.testing.assert_array_equal(out.time.values, src.time.values)  # inferred for day 6
    for name in src.data_vars:
        assert np.isnan(out[name].isel(time=5).values).all(), name
        kept = [i for i in range(len(small_archive)) if i != 5]
        np.testing.assert_array_equal(
            out[name].isel(time=kept).values, src[name].isel(time=kept).values
        )
    missing = manifest(tmp_path / "out")["missing"]
    assert list(missing) == [urls[5]] and "404" in missing[urls[5]]


def test_retry_fills_in_what_was_skipped(half_served, small_archive, tmp_path):
    server, root, urls = half_served
    target = tmp_path / "out"
    bake(simple_recipe(urls), target, workers=2, skip_failed=True)
    store = target / "out.zarr"
    untouched = (store / "sst" / "c" / "0" / "0" / "0").read_bytes()
    shutil.copy(small_archive[5], root / small_archive[5].name)
    server.calls.clear()
    result = bake(simple_recipe(urls), target, workers=2, retry_failed=True)
    assert result.inputs == 1, "only day 6 is read: the other days of its chunk are kept"
    fetched = {path for method, path in server.calls if method == "GET"}
    assert fetched == {f"/{small_archive[5].name}"}  # the other inputs: looked up (HEAD) only
    assert_same_as_sources(result.url, small_archive)
    assert manifest(target)["missing"] == {}
    assert (store / "sst" / "c" / "0" / "0" / "0").read_bytes() == untouched
    again = bake(simple_recipe(urls), target, workers=2, retry_failed=True)
    assert again.stats == {"up_to_date": True}


def test_retry_that_fails_again_keeps_the_store(half_served, tmp_path):
    _, _, urls = half_served
    target = tmp_path / "out"
    bake(simple_recipe(urls), target, workers=2, skip_failed=True)
    before = xr.open_zarr(target / "out.zarr").load()
    with pytest.raises(SourceError, match="404"):
        bake(simple_recipe(urls), target, workers=2, retry_failed=True)
    xr.testing.assert_identical(xr.open_zarr(target / "out.zarr").load(), before)
    assert list(manifest(target)["missing"]) == [urls[5]]


def test_skipping_needs_the_length_of_each_input(half_served, tmp_path):
    from arcoforge import OpenURLWithFSSpec, OpenWithXarray, StoreToZarr
    from arcoforge.recipe.patterns import pattern_from_file_sequence

    _, _, urls = half_served
    recipe = (
        pattern_from_file_sequence(urls, "time")
        | OpenURLWithFSSpec(retry_delay=0.01)
        | OpenWithXarray()
        | StoreToZarr("out.zarr")
    )
    with pytest.raises(SchemaError, match=rf"cannot skip {urls[5]}.*nitems_per_file"):
        bake(recipe, tmp_path / "out", workers=2, skip_failed=True)


class FailsOnSecondOpen:
    """A preprocessing step that fails for one input from its second opening on (the scan
    opens it first, the write task second), as a file that goes bad mid-bake."""

    def __init__(self, name: str, marks):
        self.name, self.marks = name, marks
        self.__name__ = "fails_on_second_open"

    def __call__(self, ds):
        if ds.encoding.get("source", "").endswith(self.name):
            seen = self.marks / self.name
            if seen.exists():
                raise OSError("the file went bad")
            seen.touch()
        return ds


def test_input_failing_in_the_write_stage_is_skipped_and_recorded(small_archive, tmp_path):
    from arcoforge import OpenWithXarray, StoreToZarr
    from arcoforge.recipe.patterns import pattern_from_file_sequence

    marks = tmp_path / "marks"
    marks.mkdir()
    pattern = pattern_from_file_sequence([str(p) for p in small_archive], "time", 1)
    recipe = (
        pattern
        | OpenWithXarray()
        | FailsOnSecondOpen(small_archive[3].name, marks)
        | StoreToZarr("out.zarr", target_chunks={"time": 3})
    )
    result = bake(recipe, tmp_path / "out", workers=2, skip_failed=True)
    assert result.stats["missing_inputs"] == [str(small_archive[3])]
    missing = manifest(tmp_path / "out")["missing"]
    assert "the file went bad" in missing[str(small_archive[3])]
    out = xr.open_zarr(result.url).load()
    assert np.isnan(out.sst.isel(time=3).values).all()
    with xr.open_dataset(small_archive[4]) as src:
        want = xarray_to_zarr(src.load()).sst.values[0]
        np.testing.assert_array_equal(out.sst.isel(time=4).values, want)


def test_the_first_input_can_be_skipped(half_served, small_archive, tmp_path):
    _, root, urls = half_served
    (root / small_archive[0].name).unlink()
    result = bake(simple_recipe(urls), tmp_path / "out", workers=2, skip_failed=True)
    assert result.stats["missing_inputs"] == sorted([urls[0], urls[5]])
    out = xr.open_zarr(result.url).load()
    with xr.open_dataset(small_archive[1]) as src:
        np.testing.assert_array_equal(out.lat.values, src.lat.values)
        want = xarray_to_zarr(src.load()).sst.values[0]
        np.testing.assert_array_equal(out.sst.isel(time=1).values, want)
    assert np.isnan(out.sst.isel(time=0).values).all()
    assert str(out.time.values[0]).startswith("1981-09-01")


def test_a_retry_that_skips_again_reads_only_the_skipped_inputs(
    half_served, small_archive, tmp_path
):
    """Days 5 and 6 (one chunk) skipped; day 5 comes back: it is filled in, day 6 stays
    fill values and recorded. When no skipped input can be read, the retry stops."""
    server, root, urls = half_served
    target = tmp_path / "out"
    shutil.move(root / small_archive[4].name, tmp_path / "later.nc")
    bake(simple_recipe(urls), target, workers=2, skip_failed=True)
    assert list(manifest(target)["missing"]) == [urls[4], urls[5]]
    shutil.move(tmp_path / "later.nc", root / small_archive[4].name)
    server.calls.clear()
    result = bake(simple_recipe(urls), target, workers=2, skip_failed=True, retry_failed=True)
    assert {path for method, path in server.calls if method == "GET"} == {
        f"/{small_archive[4].name}",
        f"/{small_archive[5].name}",
    }
    assert result.stats["missing_inputs"] == [urls[5]]
    out = xr.open_zarr(result.url).load()
    src = xr.concat([xr.open_dataset(p).load() for p in small_archive], dim="time")
    src = xarray_to_zarr(src)
    kept = [i for i in range(len(small_archive)) if i != 5]
    for name in src.data_vars:
        assert np.isnan(out[name].isel(time=5).values).all(), name
        np.testing.assert_array_equal(
            out[name].isel(time=kept).values, src[name].isel(time=kept).values
        )
    assert list(manifest(target)["missing"]) == [urls[5]]
    before = (target / "out.zarr" / "sst" / "c" / "1" / "0" / "0").read_bytes()
    with pytest.raises(SourceError) as info:
        bake(simple_recipe(urls), target, workers=2, skip_failed=True, retry_failed=True)
    assert str(info.value) == (
        f"{urls[5]}: HTTP 404 Not Found; no input to write was read, the published store is "
        "left as it was"
    )
    assert (target / "out.zarr" / "sst" / "c" / "1" / "0" / "0").read_bytes() == before
