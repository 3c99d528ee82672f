"""Appending inputs to a published store: only the new data is written, a repeated append
changes nothing, a broken continuation is refused and leaves the store as it was."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import xarray as xr

from arcoforge import bake
from arcoforge.errors import AppendError
from arcoforge.testing.archives import oisst_dataset, write_files, write_oisst_archive
from arcoforge.testing.compare import assert_same_as_sources, file_digests
from arcoforge.testing.recipes import simple_recipe
from arcoforge.zarr import patch

GRID = {"ny": 18, "nx": 36}


@pytest.fixture
def archive(tmp_path) -> list[Path]:
    return write_oisst_archive(tmp_path / "src", days=12, **GRID)


def baked(files, target: Path, **kwargs):
    return bake(simple_recipe(files, chunks={"time": 3}), target, workers=2, **kwargs)


def test_append_adds_only_the_new_inputs(archive, tmp_path):
    first = baked(archive[:7], tmp_path / "out")
    grown = baked(archive, tmp_path / "out", append=True)
    assert grown.inputs == 5, "only the new inputs are scanned and read"
    assert grown.dims["time"] == 12
    out, _ = assert_same_as_sources(grown.url, archive)
    fresh = baked(archive, tmp_path / "fresh")
    xr.testing.assert_identical(out.load(), xr.open_zarr(fresh.url).load())
    assert first.url == grown.url


def test_append_keeps_the_chunks_it_does_not_touch(archive, tmp_path):
    store = Path(baked(archive[:7], tmp_path / "out").url)
    before = file_digests(store / "sst")
    baked(archive, tmp_path / "out", append=True)
    after = file_digests(store / "sst")
    untouched = {k: v for k, v in before.items() if k.startswith("c/0/") or k.startswith("c/1/")}
    assert untouched and all(after[k] == v for k, v in untouched.items())
    assert before["c/2/0/0"] != after["c/2/0/0"], "the partial last chunk was completed"


def test_repeating_an_append_changes_nothing(archive, tmp_path):
    baked(archive[:7], tmp_path / "out")
    baked(archive, tmp_path / "out", append=True)
    before = file_digests(tmp_path / "out")
    again = baked(archive, tmp_path / "out", append=True)
    assert again.stats == {"up_to_date": True}
    assert file_digests(tmp_path / "out") == before


def test_append_to_nothing_is_a_first_bake(archive, tmp_path):
    result = baked(archive[:4], tmp_path / "out", append=True)
    assert_same_as_sources(result.url, archive[:4])


def refused(files, target: Path, *needles: str) -> None:
    before = file_digests(target)
    with pytest.raises(AppendError) as info:
        baked(files, target, append=True)
    text = str(info.value)
    for needle in needles:
        assert needle in text, text
    assert "\n" not in text
    assert file_digests(target) == before, "a refused append leaves the store byte for byte"
    assert not any(p.name.endswith(".partial") for p in target.iterdir())


def test_gap_is_refused(archive, tmp_path):
    baked(archive[:5], tmp_path / "out")
    refused([*archive[:5], *archive[6:]], tmp_path / "out", archive[6].name, "gap", "1 day")


def test_overlap_is_refused(archive, tmp_path):
    baked(archive[:5], tmp_path / "out")
    copy = tmp_path / "src" / "oisst-copy-of-day-5.nc"
    shutil.copy(archive[4], copy)
    refused([*archive[:5], copy], tmp_path / "out", copy.name, "already in the store")


def test_out_of_order_is_refused(archive, tmp_path):
    baked(archive[3:6], tmp_path / "out")
    refused(archive[:6], tmp_path / "out", archive[0].name, "comes before", archive[5].name)


def test_different_grid_is_refused(archive, tmp_path):
    baked(archive[:5], tmp_path / "out")
    odd = oisst_dataset(days=1, ny=9, nx=36, start="1981-09-06")
    (wrong,) = write_files(odd, tmp_path / "odd", name="oisst-odd")
    refused([*archive[:5], wrong], tmp_path / "out", wrong.name, "'sst'", "the store's is")


def test_inputs_removed_from_the_recipe_are_refused(archive, tmp_path):
    baked(archive[:5], tmp_path / "out")
    refused(archive[1:8], tmp_path / "out", archive[0].name, "lacks")


def test_interrupted_append_is_finished_by_the_next(archive, tmp_path, monkeypatch):
    baked(archive[:7], tmp_path / "out")
    old = xr.open_zarr(tmp_path / "out" / "out.zarr").load()
    moves = []
    real_move = patch.move

    class Killed(BaseException):
        pass

    def move_then_die(fs, src, dst):
        if len(moves) == 3:
            raise Killed
        moves.append(dst)
        real_move(fs, src, dst)

    monkeypatch.setattr(patch, "move", move_then_die)
    with pytest.raises(Killed):
        baked(archive, tmp_path / "out", append=True)
    monkeypatch.setattr(patch, "move", real_move)
    assert all("zarr.json" not in m for m in moves), "chunks move before any metadata"
    xr.testing.assert_identical(xr.open_zarr(tmp_path / "out" / "out.zarr").load(), old)
    result = baked(archive, tmp_path / "out", append=True)
    assert result.stats["tasks_resumed"] > 0
    assert_same_as_sources(result.url, archive)
