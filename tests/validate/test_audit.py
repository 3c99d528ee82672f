"""Audits of baked stores: healthy ones pass, and each kind of damage is found and named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import zarr

from arcoforge import OpenURLWithFSSpec, OpenWithXarray, StoreToZarr, bake
from arcoforge.core.report import StoreReport
from arcoforge.errors import ValidationError
from arcoforge.recipe.patterns import pattern_from_file_sequence
from arcoforge.testing.cli import NAME, arcoforge, error_line, ok, sample_sources
from arcoforge.testing.compare import assert_same_as_sources
from arcoforge.testing.recipes import simple_recipe
from arcoforge.validate import checker_for, validate_references, validate_store
from arcoforge.zarr.check import check_before_publish

CHECKS = ["opens", "cf-time", "coordinates", "chunks-present", "chunks-decode"]


def recipe_for(paths, zarr_format=3, consolidated=True, encoding=None):
    pattern = pattern_from_file_sequence([str(p) for p in paths], "time", nitems_per_file=1)
    return (
        pattern
        | OpenURLWithFSSpec()
        | OpenWithXarray()
        | StoreToZarr(
            "out.zarr",
            target_chunks={"time": 3},
            zarr_format=zarr_format,
            consolidated=consolidated,
            encoding=encoding or {},
        )
    )


@pytest.fixture
def store(small_archive, tmp_path) -> Path:
    """The small archive baked into a Zarr v3 store."""
    result = bake(simple_recipe(small_archive), tmp_path / "out", workers=1)
    assert_same_as_sources(result.url, small_archive)
    return Path(result.url)


def names(report: StoreReport) -> dict[str, bool]:
    return {c.name: c.ok for c in report.checks}


def only_finding(report: StoreReport) -> str:
    assert not report.ok
    assert len(report.findings) == 1, report.findings
    return report.findings[0]


@pytest.mark.filterwarnings("ignore:Failed to open Zarr store with consolidated metadata")
@pytest.mark.parametrize(
    ("zarr_format", "consolidated", "encoding"),
    [
        (3, True, None),
        (2, True, None),
        (3, False, None),
        (3, True, {"sst": {"chunks": (1, 18, 36), "shards": (3, 18, 36)}}),
    ],
    ids=["v3", "v2", "v3-unconsolidated", "v3-sharded"],
)
def test_healthy_store_passes_every_check(
    small_archive, tmp_path, zarr_format, consolidated, encoding
):
    recipe = recipe_for(small_archive, zarr_format, consolidated, encoding)
    result = bake(recipe, tmp_path / "out", workers=2)
    assert_same_as_sources(result.url, small_archive)
    report = validate_store(result.url, against=recipe, full=True)
    assert report.ok, report.findings
    assert names(report) == dict.fromkeys([*CHECKS, "sources"], True)
    detail = {c.name: c.detail for c in report.checks}
    assert (
        detail["sources"] == f"{len(small_archive)} of {len(small_archive)} inputs equal the store"
    )
    assert detail["coordinates"] == "time, lat, lon: complete, sorted, unique"
    # one stored object per chunk, or per shard when sharded
    group = zarr.open_group(result.url, mode="r", use_consolidated=False)
    arrays = dict(group.arrays())
    expected = sum(
        int(np.prod([-(-n // c) for n, c in zip(a.shape, a.shards or a.chunks, strict=True)]))
        for a in arrays.values()
    )
    assert detail["chunks-present"] == f"{expected} chunks of {len(arrays)} arrays"
    assert detail["chunks-decode"] == f"{expected} of {expected} chunks decoded"
    assert json.loads(json.dumps(report.to_dict())) == report.to_dict()


def test_default_audit_decodes_a_bounded_sample(store):
    report = validate_store(str(store), sample=2)
    assert report.ok, report.findings
    # two chunks of each of the four data variables, every chunk of the small arrays
    assert {c.name: c.detail for c in report.checks}["chunks-decode"] == "11 of 15 chunks decoded"


def test_all_nan_chunks_are_written_and_count_as_present(tmp_path):
    from arcoforge.testing.archives import write_oisst_archive

    paths = write_oisst_archive(tmp_path / "src", days=4, ny=18, nx=36)
    for path in paths[:2]:  # two days of nothing but missing values
        with netCDF4.Dataset(path, "a") as nc:
            nc["sst"][:] = np.ma.masked
    result = bake(simple_recipe(paths, chunks={"time": 2}), tmp_path / "out", workers=1)
    assert_same_as_sources(result.url, paths)
    assert (Path(result.url) / "sst/c/0/0/0").is_file()
    assert validate_store(result.url, full=True).ok


@pytest.mark.parametrize(("zarr_format", "key"), [(3, "c/1/0/0"), (2, "1.0.0")])
def test_deleted_chunk_is_found_and_named(small_archive, tmp_path, zarr_format, key):
    result = bake(recipe_for(small_archive, zarr_format), tmp_path / "out", workers=1)
    (Path(result.url) / "anom" / key).unlink()
    report = validate_store(result.url)
    assert only_finding(report) == f"anom: chunk {key} is missing"
    assert names(report) == {**dict.fromkeys(CHECKS, True), "chunks-present": False}


def test_corrupted_chunk_is_found_as_not_decodable(store):
    chunk = store / "sst/c/0/0/0"
    data = bytearray(chunk.read_bytes())
    data[:16] = bytes(16)  # the codec's header
    chunk.write_bytes(bytes(data))
    report = validate_store(str(store))  # the first chunk is always in the sample
    finding = only_finding(report)
    assert finding.startswith("sst: chunk c/0/0/0 does not decode: ")
    assert "blosc" in finding.lower()
    assert names(report)["chunks-decode"] is False


def test_garbled_chunk_that_still_decodes_is_found_against_the_sources(store, small_archive):
    chunk = store / "sst/c/1/0/0"
    data = bytearray(chunk.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = b"\xff" * 16
    chunk.write_bytes(bytes(data))
    report = validate_store(str(store), against=simple_recipe(small_archive), full=True)
    assert names(report)["sources"] is False
    assert any("'sst' differs at" in f for f in report.findings), report.findings


def _edit_time(store: Path, edit) -> None:
    array = zarr.open_array(store / "time", mode="r+")
    values = array[:]
    edit(values)
    array[:] = values


def test_duplicate_time_is_found(store):
    _edit_time(store, lambda v: v.__setitem__(3, v[2]))
    report = validate_store(str(store))
    finding = only_finding(report)
    assert finding.startswith("time: duplicate value 1981-09-03")
    assert finding.endswith("at indices 2 and 3")
    assert names(report)["coordinates"] is False


def test_unsorted_time_is_found(store):
    _edit_time(store, lambda v: v.__setitem__(slice(4, 6), v[4:6][::-1]))
    finding = only_finding(validate_store(str(store)))
    assert finding.startswith("time: not sorted: 1981-09-06")
    assert "at index 4 is followed by 1981-09-05" in finding


def test_missing_coordinate_value_is_found(store):
    lat = zarr.open_array(store / "lat", mode="r+")
    lat[5] = np.nan
    assert only_finding(validate_store(str(store))) == ("lat: 1 missing value(s), first at index 5")


def test_undecodable_cf_time_is_found(store):
    array = zarr.open_array(store / "time", mode="r+")
    array.attrs["units"] = "fortnights since the flood"
    report = validate_store(str(store))
    finding = only_finding(report)
    assert finding.startswith("time: units 'fortnights since the flood' do not decode: ")
    assert names(report)["cf-time"] is False
    assert names(report)["coordinates"] is True  # checked on the raw numbers


def test_changed_input_value_is_found_and_names_the_input(store, small_archive):
    changed = small_archive[3]
    with netCDF4.Dataset(changed, "a") as nc:
        nc["sst"][0, 5, 7] = nc["sst"][0, 5, 7] + 2.5
    recipe = simple_recipe(small_archive)
    report = validate_store(str(store), against=recipe, full=True)
    finding = only_finding(report)
    assert finding.startswith(f"{changed}: 'sst' differs at ")
    assert "'lat': 5, 'lon': 7" in finding
    # the default sample holds the first and the last input
    with netCDF4.Dataset(small_archive[-1], "a") as nc:
        nc["ice"][0, 0, 0] = 0.5
    sampled = validate_store(str(store), against=recipe)
    assert any(f.startswith(f"{small_archive[-1]}: 'ice' differs") for f in sampled.findings)


def test_input_missing_from_the_store_is_named(store, small_archive, tmp_path):
    from arcoforge.testing.archives import write_oisst_archive

    later = write_oisst_archive(tmp_path / "later", days=9, ny=18, nx=36)[-1]
    report = validate_store(str(store), against=simple_recipe([*small_archive, later]), full=True)
    assert (
        only_finding(report)
        == f"{later}: time value 1981-09-09T12:00:00.000000000 is not in the store"
    )


def test_check_before_publish(store):
    report = check_before_publish(str(store))
    assert report.ok and "sources" not in names(report)
    # at most two chunks per array, the smallest first, within 16 MiB
    assert report.checks[-1].detail == "11 of 15 chunks decoded (budget 16 MiB)"
    (store / "err/c/2/0/0").unlink()
    with pytest.raises(ValidationError) as info:
        check_before_publish(str(store))
    text = str(info.value)
    assert "\n" not in text
    assert text == f"{store}: 1 of 5 checks failed; first: err: chunk c/2/0/0 is missing"


def test_what_is_not_a_store_is_refused(tmp_path):
    with pytest.raises(ValidationError, match="no such store"):
        validate_store(str(tmp_path / "nothing.zarr"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValidationError, match="not a Zarr store"):
        validate_store(str(tmp_path / "folder"))


def test_checkers_are_chosen_by_url(store, tmp_path):
    refs = tmp_path / "out.json"
    refs.write_text('{"version": 1, "refs": {}}')
    assert checker_for(str(store)) is validate_store
    assert checker_for(str(refs)) is validate_references
    assert checker_for(str(tmp_path / "absent.json")) is validate_store


# -- the command ---------------------------------------------------------------------


@pytest.fixture
def baked_feedstock(tmp_path) -> tuple[Path, Path]:
    """A feedstock from ``arcoforge init``, baked by the command into ``out/``."""
    ok(arcoforge("init", NAME, cwd=tmp_path))
    ok(arcoforge("bake", NAME, "--target-root", "out", "--workers", "1", cwd=tmp_path))
    return tmp_path / NAME, tmp_path / "out" / f"{NAME}.zarr"


def test_validate_command_on_a_healthy_store(baked_feedstock, tmp_path):
    feedstock, store = baked_feedstock
    assert_same_as_sources(str(store), sample_sources(feedstock))
    table = ok(arcoforge("validate", store, "--against", NAME, cwd=tmp_path)).stdout
    for check in [*CHECKS, "sources"]:
        assert f"│ {check}" in table
    assert "FAILED" not in table and "4 of 4 inputs equal the store" in table
    proc = ok(arcoforge("validate", store, "--against", NAME, "--json", cwd=tmp_path))
    from arcoforge.recipe.feedstock import load_recipes

    recipe = load_recipes(feedstock)[NAME]
    assert json.loads(proc.stdout) == validate_store(str(store), against=recipe).to_dict()
    assert proc.stderr == ""


def test_validate_command_on_a_damaged_store(baked_feedstock, tmp_path):
    feedstock, store = baked_feedstock
    (store / "sst/c/1/0/0").unlink()
    with netCDF4.Dataset(sample_sources(feedstock)[0], "a") as nc:
        values = nc["anom"][0]
        j, i = np.argwhere(~np.ma.getmaskarray(values))[0]  # the first ocean point
        nc["anom"][0, j, i] = values[j, i] - 1.0
    proc = arcoforge("validate", store, "--against", NAME, "--json", cwd=tmp_path)
    line = error_line(proc, rc=1)
    assert line == f"error: {store}: 2 of 6 checks failed; first: sst: chunk c/1/0/0 is missing"
    # the lost chunk is also seen from the inputs that it held
    for path in sample_sources(feedstock)[2:]:
        assert f"file://{path}: 'sst' differs at " in proc.stdout
    report = json.loads(proc.stdout)
    assert report["ok"] is False
    assert report["findings"][0] == "sst: chunk c/1/0/0 is missing"
    changed = f"file://{sample_sources(feedstock)[0]}: 'anom' differs at "
    assert any(f.startswith(changed) for f in report["findings"]), report["findings"]
    table = arcoforge("validate", store, cwd=tmp_path)
    assert table.returncode == 1 and "FAILED" in table.stdout
    assert "sst: chunk c/1/0/0 is missing" in table.stdout


def test_validate_command_refuses_what_is_not_a_store(tmp_path):
    line = error_line(arcoforge("validate", "nowhere.zarr", cwd=tmp_path), rc=1)
    assert line == f"error: {tmp_path / 'nowhere.zarr'}: no such store"
    (tmp_path / "plain").mkdir()
    line = error_line(arcoforge("validate", "plain", cwd=tmp_path), rc=1)
    assert "not a Zarr store" in line
    shutil.rmtree(tmp_path / "plain")
