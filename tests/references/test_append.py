"""Appending to reference stores: new inputs only, nothing twice, refusals leave the store
byte for byte as it was."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from arcoforge import ConcatDim, FilePattern, MergeDim, bake
from arcoforge.errors import AppendError
from arcoforge.products import make_plan
from arcoforge.recipe.steps import OpenWithKerchunk, WriteCombinedReference
from arcoforge.references import plan as references_plan
from arcoforge.references.formats import json as kerchunk_json
from arcoforge.references.formats.json import read_overlapping, write_json
from arcoforge.references.manifest import NO_FILE, ArrayRefs, Manifest, zarray
from arcoforge.references.store import open_references
from arcoforge.testing.archives import (
    oisst_dataset,
    write_coords_archive,
    write_files,
    write_merge_archive,
    write_oisst_archive,
)
from arcoforge.testing.compare import assert_matches_sources, digest
from arcoforge.testing.recipes import FORMATS, ref_recipe


@pytest.fixture
def days(tmp_path):
    return write_oisst_archive(tmp_path / "src", days=8, ny=12, nx=24)


@pytest.mark.parametrize("name", FORMATS)
def test_append_adds_new_inputs_only_and_twice_is_nothing(tmp_path, days, name):
    out = tmp_path / "out"
    first = bake(ref_recipe(days[:5], name), out, workers=2)
    result = bake(ref_recipe(days, name), out, append=True, workers=2)
    assert result.inputs == 3
    assert result.dims["time"] == 8
    assert_matches_sources(result.url, days)
    before = digest(Path(first.url))
    again = bake(ref_recipe(days, name), out, append=True)
    assert again.stats.get("up_to_date")
    assert digest(Path(first.url)) == before


@pytest.mark.parametrize("exchange", [True, False], ids=["files swapped", "file renamed over"])
def test_json_appends_write_over_the_version_before_the_last(tmp_path, days, exchange, monkeypatch):
    """A JSON append keeps the version it replaces beside the store, and the next append
    writes its references over that file (its blocks, not new ones); where the system
    cannot swap two files, the new one is renamed over the published one."""
    if not exchange:
        monkeypatch.setattr(kerchunk_json, "exchange", lambda a, b: False)
    out = tmp_path / "out"
    url = Path(bake(ref_recipe(days[:4], FORMATS[0]), out).url)
    spare = url.parent / f".{url.name}.arcoforge" / "previous.json"
    versions = [url.read_bytes()]
    inodes = [url.stat().st_ino]
    for n in (6, 8):
        bake(ref_recipe(days[:n], FORMATS[0]), out, append=True)
        assert spare.read_bytes() == versions[-1]  # the version it replaced
        versions.append(url.read_bytes())
        inodes.append(url.stat().st_ino)
    assert inodes[2] == inodes[0]  # the second append wrote over the first version's file
    assert spare.stat().st_ino == inodes[1]
    assert_matches_sources(url, days)


def test_a_spare_that_is_the_published_file_is_not_written_over(tmp_path, days):
    """A publish that stopped between keeping the published file as the spare and moving
    the new one into place leaves both names on one file: the next append writes anew."""
    out = tmp_path / "out"
    url = Path(bake(ref_recipe(days[:4], FORMATS[0]), out).url)
    spare = url.parent / f".{url.name}.arcoforge" / "previous.json"
    kept = tmp_path / "kept.json"
    before = url.read_bytes()
    spare.hardlink_to(url)
    kept.hardlink_to(url)
    bake(ref_recipe(days, FORMATS[0]), out, append=True)
    assert kept.read_bytes() == before
    assert spare.read_bytes() == before
    assert_matches_sources(url, days)


@pytest.mark.parametrize("name", [*FORMATS, "icechunk"])
def test_appends_keep_their_own_manifests_until_there_are_too_many(
    tmp_path, days, name, monkeypatch
):
    """Each append writes its own inputs' manifest beside the store, not the store's
    whole one again, up to ``SEGMENTS`` of them; the next one writes it whole (and
    removes the segments)."""
    monkeypatch.setattr(references_plan, "SEGMENTS", 2)
    target = f"icechunk://{tmp_path / 'out'}" if name == "icechunk" else tmp_path / "out"
    name = FORMATS[0] if name == "icechunk" else name
    folder = Path(
        make_plan(ref_recipe(days, name), str(target), cache=None, workers=1).ledger.folder
    )
    held = []
    for n in (4, 5, 6, 7, 8):
        result = bake(ref_recipe(days[:n], name), target, append=True)
        assert_matches_sources(result.url, days[:n])
        held.append(json.loads((folder / "manifest.json").read_text())["held"])
        assert sorted(p.name for p in folder.glob("references*")) == sorted(held[-1])
    one, two, three = "references.held", "references.1.held", "references.2.held"
    assert held == [[one], [one, two], [one, two, three], [one], [one, two]]


@pytest.mark.parametrize("name", FORMATS)
def test_refused_appends_leave_the_store_unchanged(tmp_path, days, name):
    out = tmp_path / "out"
    url = Path(bake(ref_recipe(days[:4], name), out).url)
    before = digest(url)
    copy = write_files(oisst_dataset(days=8, ny=12, nx=24).isel(time=[3]), tmp_path / "dup")
    cases = {
        "leaves a gap after": [*days[:4], days[5]],
        "is already in the store": [*days[:4], *copy],
        "not sorted": [*days[:4], days[5], days[4]],
    }
    for why, paths in cases.items():
        with pytest.raises(AppendError, match=why) as info:
            bake(ref_recipe(paths, name), out, append=True)
        assert str(paths[4]) in str(info.value) or str(paths[5]) in str(info.value)
        assert digest(url) == before, why
    assert_matches_sources(url, days[:4])


def test_parquet_append_links_the_records_it_keeps(tmp_path, days):
    out = tmp_path / "out"
    recipe = ref_recipe(days[:4], "reference.parquet", record_size=2)
    url = Path(bake(recipe, out).url)
    first = (url / "sst" / "refs.0.parq").stat().st_ino
    last = (url / "sst" / "refs.1.parq").stat().st_ino
    bake(ref_recipe(days, "reference.parquet", record_size=2), out, append=True)
    assert (url / "sst" / "refs.0.parq").stat().st_ino == first
    assert (url / "sst" / "refs.1.parq").stat().st_ino == last
    assert (url / "sst" / "refs.3.parq").exists()
    assert_matches_sources(url, days)


def test_parquet_append_links_the_records_of_arrays_it_leaves_unchanged(tmp_path):
    """Referenced arrays keep their records that an append leaves unchanged: all of a land
    mask above the inline threshold, the full first record of t2m (dimension coordinates
    are inline: time is rewritten)."""
    days = write_coords_archive(tmp_path / "src", days=6, ny=80, nx=100)
    out = tmp_path / "out"
    url = Path(bake(ref_recipe(days[:2], "reference.parquet", record_size=4), out).url)
    kept = {n: (url / n / "refs.0.parq").stat().st_ino for n in ("mask", "time", "t2m")}
    bake(ref_recipe(days, "reference.parquet", record_size=4), out, append=True)
    now = {n: (url / n / "refs.0.parq").stat().st_ino for n in kept}
    assert {n for n in kept if now[n] == kept[n]} == {"mask", "t2m"}
    assert_matches_sources(url, days)


def test_json_append_keeps_the_bytes_of_the_references_it_keeps(tmp_path, days):
    """An appended JSON file starts with the chunk references of the one it extends and
    holds the same references as a bake of all the inputs at once."""
    url = Path(bake(ref_recipe(days[:5], "reference.json"), tmp_path / "out").url)
    body = url.read_bytes()
    body = body[: body.rindex(b',".zgroup":')]
    bake(ref_recipe(days, "reference.json"), tmp_path / "out", append=True)
    whole = Path(bake(ref_recipe(days, "reference.json"), tmp_path / "whole").url)
    assert url.read_bytes().startswith(body)
    assert json.loads(url.read_text()) == json.loads(whole.read_text())


@pytest.mark.parametrize("spans", [[(0, 1)], [(0, 1), (7, 8)], [(2, 6)]])
def test_json_check_reads_the_references_it_needs(tmp_path, days, spans):
    """The in-bake check of a JSON file reads the metadata, the inline chunks and the
    chunks along time that meet its spans, and no others."""
    url = Path(bake(ref_recipe(days[:5], "reference.json"), tmp_path / "out").url)
    bake(ref_recipe(days, "reference.json"), tmp_path / "out", append=True)
    refs = json.loads(url.read_text())["refs"]
    meta = json.loads(refs[".zmetadata"])["metadata"]
    steps = {t for a, b in spans for t in range(a, b)}

    def wanted(key: str) -> bool:
        name, chunk = key.rsplit("/", 1) if "/" in key else ("", ".")
        if chunk.startswith("."):
            return True
        along = meta[f"{name}/.zattrs"]["_ARRAY_DIMENSIONS"][:1] == ["time"]
        step = meta[f"{name}/.zarray"]["chunks"][0] if along else 0
        row = int(chunk.split(".")[0])
        return not along or bool(steps & set(range(row * step, (row + 1) * step)))

    got = read_overlapping(url, "time", spans)
    assert {k for k in refs if wanted(k)} == set(got)
    assert all(got[k] == refs[k] for k in got)


def test_json_append_writes_whole_an_array_that_gained_inline_chunks(tmp_path):
    """An array whose new chunks are inline moves to the end of the file: its earlier
    references are not copied too (every key once), beside an array that only grows."""

    def manifest(steps: int, inline_last: bool) -> Manifest:
        grid = (steps, 2)
        files, raw = np.zeros(grid, np.int32), None
        if inline_last:
            raw = np.full(grid, None, dtype=object)
            raw[-1, 0], files[-1, 0] = b"\0" * 8, NO_FILE
        refs = ArrayRefs(
            zarray((steps, 4), (1, 2), np.dtype("f4")),
            {"_ARRAY_DIMENSIONS": ["time", "x"]},
            files,
            np.arange(files.size, dtype=np.uint64).reshape(grid) * 8,
            np.full(grid, 8, dtype=np.uint64),
            raw,
        )
        kept = replace(refs, files=np.zeros(grid, np.int32), raw=None)
        return Manifest(["file:///a.nc"], {"v": refs, "w": kept})

    first, path = tmp_path / "first.json", tmp_path / "next.json"
    write_json(manifest(2, False), first)
    write_json(manifest(3, True), path, previous=first, shared={"v": 4, "w": 4})
    pairs = json.loads(path.read_text(), object_pairs_hook=list)[1][1]
    assert len(pairs) == len(dict(pairs))
    write_json(manifest(3, True), tmp_path / "whole.json")
    assert json.loads(path.read_text()) == json.loads((tmp_path / "whole.json").read_text())


@pytest.mark.parametrize("name", [*FORMATS, "icechunk"])
def test_append_with_a_merge_dim(tmp_path, name):
    """Files of one variable and day each: the days the store lacks are appended, every
    variable of them; a gap is refused and leaves the store as it was."""
    by_var = write_merge_archive(tmp_path / "src", days=5, ny=18, nx=36)
    target = f"icechunk://{tmp_path / 'out'}" if name == "icechunk" else tmp_path / "out"
    name = FORMATS[0] if name == "icechunk" else name

    def recipe(days):
        pattern = FilePattern(
            lambda variable, time: str(tmp_path / "src" / f"{variable}_{time:%Y%m%d}.nc"),
            MergeDim("variable", ["sst", "ice"]),
            ConcatDim("time", [pd.Timestamp("1981-09-01") + pd.Timedelta(days=d) for d in days]),
        )
        return pattern | OpenWithKerchunk() | WriteCombinedReference("ref", output_file_name=name)

    url = Path(bake(recipe(range(3)), target).url)
    before = digest(url)
    with pytest.raises(AppendError, match="leaves a gap after"):
        bake(recipe([0, 1, 2, 4]), target, append=True)
    assert digest(url) == before
    result = bake(recipe(range(5)), target, append=True)
    assert result.inputs == 4 and result.dims["time"] == 5
    src = xr.merge(
        [xr.open_mfdataset(p, combine="nested", concat_dim="time") for p in by_var.values()]
    )
    with open_references(result.url) as out:
        assert set(out.data_vars) == {"sst", "ice"}
        for var_name, var in src.load().variables.items():
            np.testing.assert_array_equal(out[var_name].values.astype(var.dtype), var.values)
    assert bake(recipe(range(5)), target, append=True).stats.get("up_to_date")


@pytest.mark.parametrize(
    ("n", "sizes"),
    [(10, [5, 5]), (9, [5, 4]), (5, [4, 1]), (3, [3]), (40, [2] * 20), (1000, [16] * 62 + [8])],
)
def test_a_few_inputs_are_scanned_as_one_task_per_worker(tmp_path, n, sizes):
    """An append's inputs as one task per worker (of 4 at least), which the local engine
    runs in the driver and in a process forked for each other one; more, in batches."""
    paths = [str(tmp_path / f"day{i:04d}.nc") for i in range(n)]
    plan = make_plan(ref_recipe(paths), str(tmp_path / "out"), cache=None, workers=2)
    tasks = plan.scan_tasks(None)
    assert [len(t.inputs) for t in tasks] == sizes
    assert [i.url for t in tasks for i in t.inputs] == [i.url for i in plan.inputs]
