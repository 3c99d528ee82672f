"""Bad inputs: each gives one clear error naming the file and the cause, and no store that
looks complete (published with consolidated metadata) is left behind.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from arcoforge import (
    OpenURLWithFSSpec,
    OpenWithXarray,
    StoreToZarr,
    bake,
    pattern_from_file_sequence,
)
from arcoforge.errors import RecipeError, SchemaError, SourceError
from arcoforge.testing.archives import (
    oisst_dataset,
    write_corrupt_file,
    write_files,
    write_oisst_archive,
)
from arcoforge.testing.compare import (
    assert_same_as_sources,
    bake_fails,
    looks_complete,
    nothing_baked,
    xarray_to_zarr,
)
from arcoforge.testing.recipes import simple_recipe

GRID = {"ny": 18, "nx": 36}


@pytest.fixture
def archive(tmp_path: Path) -> list[Path]:
    """Four daily OISST-like files, 1981-09-01 to 1981-09-04."""
    return write_oisst_archive(tmp_path / "src", days=4, **GRID)


def preprocessed_recipe(paths, func, store="out.zarr", zarr_format=3):
    pattern = pattern_from_file_sequence([str(p) for p in paths], "time", nitems_per_file=1)
    return (
        pattern
        | OpenURLWithFSSpec()
        | OpenWithXarray()
        | func
        | StoreToZarr(store, target_chunks={"time": 2}, zarr_format=zarr_format)
    )


def test_looks_complete_tells_published_stores_apart(archive, tmp_path):
    """The helper itself: a baked store is complete, a template written without consolidation is not."""
    result = bake(simple_recipe(archive), tmp_path / "good", workers=1)
    assert looks_complete(Path(result.url))
    oisst_dataset(days=1, **GRID).to_zarr(tmp_path / "bare.zarr", consolidated=False)
    assert not looks_complete(tmp_path / "bare.zarr")
    assert not looks_complete(tmp_path / "absent.zarr")


def test_http_404(served, small_archive, tmp_path):
    urls = [f"{served.url}/{p.name}" for p in small_archive]
    urls[5] = f"{served.url}/oisst-avhrr-v02r01.19810999.nc"
    text = bake_fails(simple_recipe(urls), tmp_path / "out", SourceError, urls[5], "404")
    assert "not found" in text.lower()
    assert nothing_baked(tmp_path / "out")


def test_missing_local_file(archive, tmp_path):
    missing = archive[0].parent / "oisst-avhrr-v02r01.19810905.nc"
    recipe = simple_recipe([*archive, missing])
    bake_fails(recipe, tmp_path / "out", SourceError, str(missing), "not found", workers=2)
    assert nothing_baked(tmp_path / "out")


def truncated_copy(path: Path, folder: Path, keep: float = 0.6) -> Path:
    """A copy of ``path`` cut off after ``keep`` of its bytes, as an interrupted download."""
    folder.mkdir(parents=True, exist_ok=True)
    cut = folder / path.name
    cut.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])
    return cut


def test_truncated_file(archive, tmp_path):
    cut = truncated_copy(archive[2], tmp_path / "cut")
    files = [*archive[:2], cut, archive[3]]
    bake_fails(simple_recipe(files), tmp_path / "out", SourceError, str(cut), workers=2)
    assert nothing_baked(tmp_path / "out")


def test_truncated_file_is_skipped_with_skip_failed(archive, tmp_path):
    cut = truncated_copy(archive[2], tmp_path / "cut")
    files = [*archive[:2], cut, archive[3]]
    result = bake(simple_recipe(files), tmp_path / "out", workers=2, skip_failed=True)
    assert result.stats["missing_inputs"] == [str(cut)]
    out = xr.open_zarr(result.url).load()
    assert np.isnan(out.sst.isel(time=2).values).all()
    for i in (0, 1, 3):
        with xr.open_dataset(archive[i]) as src:
            want = xarray_to_zarr(src.load()).sst.values[0]
            np.testing.assert_array_equal(out.sst.isel(time=i).values, want)


def test_corrupt_file(archive, tmp_path):
    corrupt = write_corrupt_file(tmp_path / "bad" / "oisst-avhrr-v02r01.19810905.nc")
    text = bake_fails(
        simple_recipe([*archive, corrupt]),
        tmp_path / "out",
        SourceError,
        str(corrupt),
        "cannot open",
        workers=2,
    )
    assert "netcdf4" in text.lower()
    assert nothing_baked(tmp_path / "out")


def test_different_grid(archive, tmp_path):
    coarse = write_files(oisst_dataset(days=1, start="1981-09-05", ny=9, nx=18), tmp_path / "c")
    text = bake_fails(
        simple_recipe([*archive, *coarse]),
        tmp_path / "out",
        SchemaError,
        str(coarse[0]),
        str(archive[0]),
        "different grid",
        workers=2,
    )
    assert "'lat' has 9 points, not 18" in text
    assert nothing_baked(tmp_path / "out")


def test_missing_variable(archive, tmp_path):
    odd = write_files(
        oisst_dataset(days=1, start="1981-09-05", variables=("sst", "ice"), **GRID),
        tmp_path / "odd",
    )
    text = bake_fails(
        simple_recipe([*archive, *odd]), tmp_path / "out", SchemaError, str(odd[0]), "missing"
    )
    assert "'anom'" in text and "'err'" in text and "'sst'" not in text
    assert nothing_baked(tmp_path / "out")


def test_duplicate_times(archive, tmp_path):
    twin = write_files(
        oisst_dataset(days=1, start="1981-09-04", **GRID), tmp_path / "twin", name="oisst-copy"
    )
    text = bake_fails(
        simple_recipe([*archive, *twin]),
        tmp_path / "out",
        SchemaError,
        str(twin[0]),
        str(archive[3]),
        "repeats",
        workers=2,
    )
    assert "1981-09-04" in text and "duplicates" in text
    assert nothing_baked(tmp_path / "out")


def test_same_file_listed_twice(archive, tmp_path):
    files = [archive[0], archive[1], archive[1], archive[2]]
    text = bake_fails(
        simple_recipe(files), tmp_path / "out", SchemaError, str(archive[1]), "repeats"
    )
    assert "1981-09-02" in text


def test_unsorted_times(archive, tmp_path):
    files = [archive[0], archive[2], archive[1], archive[3]]
    text = bake_fails(
        simple_recipe(files),
        tmp_path / "out",
        SchemaError,
        str(archive[1]),
        str(archive[2]),
        "comes before",
        "sorted",
    )
    assert "1981-09-02" in text and "1981-09-03" in text
    assert nothing_baked(tmp_path / "out")


def test_more_steps_per_file_than_the_pattern_says(tmp_path):
    files = write_oisst_archive(tmp_path / "src", days=6, steps_per_file=3, **GRID)
    text = bake_fails(
        simple_recipe(files), tmp_path / "out", SchemaError, "nitems_per_file=1", "3 steps"
    )
    assert any(str(f) in text for f in files)
    assert nothing_baked(tmp_path / "out")


def test_fewer_steps_per_file_than_the_pattern_says(archive, tmp_path):
    pattern = pattern_from_file_sequence([str(p) for p in archive], "time", nitems_per_file=2)
    recipe = pattern | OpenURLWithFSSpec() | OpenWithXarray() | StoreToZarr("out.zarr")
    text = bake_fails(recipe, tmp_path / "out", SchemaError, "nitems_per_file=2", "1 steps")
    assert any(str(f) in text for f in archive)


def test_target_chunks_naming_an_unknown_dim(archive, tmp_path):
    recipe = simple_recipe(archive, chunks={"time": 2, "depth": 3})
    bake_fails(recipe, tmp_path / "out", RecipeError, "target_chunks", "'depth'", "time, lat, lon")
    assert nothing_baked(tmp_path / "out")


def test_preprocessing_function_that_raises(archive, tmp_path):
    def add_depth(ds: xr.Dataset) -> xr.Dataset:
        if "1981-09-03" in str(ds.time.values[0]):
            raise ValueError("depth levels are unknown for this day")
        return ds

    text = bake_fails(
        preprocessed_recipe(archive, add_depth),
        tmp_path / "out",
        SourceError,
        str(archive[2]),
        "add_depth",
        "ValueError: depth levels are unknown for this day",
        workers=2,
    )
    assert "preprocessing" in text
    assert nothing_baked(tmp_path / "out")


def test_preprocessing_that_returns_no_dataset(archive, tmp_path):
    def to_array(ds):
        return ds.sst

    bake_fails(
        preprocessed_recipe(archive, to_array),
        tmp_path / "out",
        SourceError,
        str(archive[0]),
        "to_array",
        "DataArray",
    )


def failing_after(n: int):
    """A preprocessing function that fails from its ``n+1``-th call on (a flaky disk)."""
    calls = []

    def flaky(ds: xr.Dataset) -> xr.Dataset:
        calls.append(str(ds.time.values[0]))
        if len(calls) > n:
            raise OSError("connection to the disk array lost")
        return ds

    return flaky, calls


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_failure_while_writing_leaves_no_complete_store(archive, tmp_path, zarr_format):
    """An input fails only when read for writing, after the store's template exists."""
    target = tmp_path / "out"
    # scan opens each input once and the template the first one: fail after that
    flaky, calls = failing_after(len(archive) + 1)
    text = bake_fails(
        preprocessed_recipe(archive, flaky, zarr_format=zarr_format),
        target,
        SourceError,
        "flaky",
        "OSError: connection to the disk array lost",
    )
    assert any(str(p) in text for p in archive)
    assert len(calls) == len(archive) + 2
    assert not (target / "out.zarr").exists()
    # the template was written (to a staging store), but nothing was published
    leftovers = list(target.iterdir())
    assert leftovers and not any(looks_complete(p) for p in leftovers)


def test_failed_rebake_keeps_the_published_store(tmp_path):
    """Re-baking an extended archive fails midway: the store baked before stays as it was."""
    paths = write_oisst_archive(tmp_path / "src", days=6, **GRID)
    target = tmp_path / "out"
    earlier = bake(preprocessed_recipe(paths[:4], lambda ds: ds), target, workers=2)
    assert looks_complete(Path(earlier.url))

    flaky, _ = failing_after(len(paths) + 1)
    bake_fails(
        preprocessed_recipe(paths, flaky),
        target,
        SourceError,
        "connection to the disk array lost",
        published=("out.zarr",),
    )
    out, _ = assert_same_as_sources(earlier.url, paths[:4])
    assert out.sizes["time"] == 4
