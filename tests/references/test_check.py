"""The check of a reference bake: sample inputs read through the staged references, as
stored, against the inputs read by the netCDF library. Every way a reference can be wrong
is refused, as the comparison through xarray refuses it; appends of a corrupted input are
refused before anything is published."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from arcoforge import bake
from arcoforge.errors import AppendError, ValidationError
from arcoforge.references import check, held
from arcoforge.references.check import CheckTask, check_decoded, check_input
from arcoforge.references.formats import json as kerchunk_json
from arcoforge.references.formats import parquet as kerchunk
from arcoforge.references.manifest import Manifest, inline_array
from arcoforge.references.plan import HELD, make_reference_plan
from arcoforge.testing.archives import write_oisst_archive
from arcoforge.testing.compare import assert_matches_sources, digest
from arcoforge.testing.recipes import FORMATS, ref_recipe


def swap_days(m: Manifest) -> None:
    """Day 0 of sst points to the chunk of day 1, and day 1 to day 0's."""
    sst = m.arrays["sst"]
    for refs in (sst.files, sst.offsets, sst.lengths):
        refs[[0, 1]] = refs[[1, 0]]


def shift_offset(m: Manifest) -> None:
    m.arrays["sst"].offsets[0] += 1


def double_scale(m: Manifest) -> None:
    m.arrays["sst"].attrs["scale_factor"] = 0.02


def other_fill(m: Manifest) -> None:
    m.arrays["sst"].meta["fill_value"] = -998


def later_time(m: Manifest) -> None:
    time = m.arrays["time"]
    m.arrays["time"] = inline_array(time.inline_values + 1, time.attrs)


def drop_anom(m: Manifest) -> None:
    del m.arrays["anom"]


def lose_file(m: Manifest) -> None:
    m.paths[0] += ".gone"


TAMPERED = {
    swap_days: r"'sst' differs at \{'time': 0, ",
    shift_offset: r"chunk sst/0\.0\.0 does not decode",
    double_scale: r"'sst' has scale_factor 0\.02 in the store, the input 0\.0099",
    other_fill: r"'sst \(missing\)' differs at",
    later_time: r"'time' differs at \{'time': 0\}",
    drop_anom: r"variable 'anom' is missing from the store",
    lose_file: r"chunk \w+/0\.0\.0 cannot be read: .*\.nc\.gone",
}


def staged_check(tmp_path: Path, paths, name: str, tamper=None) -> CheckTask:
    """A check of the first and last of ``paths`` against references baked from them
    and written again after ``tamper(manifest)``."""
    recipe = ref_recipe(paths, name)
    bake(recipe, tmp_path / "out")
    plan = make_reference_plan(recipe, str(tmp_path / "out"), cache=None, workers=1)
    _, manifest = held.loads(bytearray(Path(plan.ledger.folder, HELD).read_bytes()))
    if tamper is not None:
        tamper(manifest)
    staged = tmp_path / f"staged-{name}"
    if name.endswith(".json"):
        kerchunk_json.write_json(manifest, staged)
    else:
        kerchunk.write_parquet(manifest, staged, record_size=3)
    n = len(paths)
    samples = ((plan.inputs[0], {"time": (0, 1)}), (plan.inputs[-1], {"time": (n - 1, n)}))
    store = type(plan.store)(str(staged), str(staged))
    return CheckTask(store, plan.open, samples, "time", "file", plan.scan)


@pytest.fixture
def days(tmp_path):
    return write_oisst_archive(tmp_path / "src", days=4, ny=12, nx=24)


@pytest.mark.parametrize("name", FORMATS)
def test_check_passes_references_that_hold_the_inputs(tmp_path, days, name):
    task = staged_check(tmp_path, days, name)
    assert check_input(task) == [str(days[0]), str(days[-1])]
    check_decoded(task)


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("tamper", TAMPERED, ids=lambda f: f.__name__)
def test_check_refuses_wrong_references_as_xarray_does(tmp_path, days, name, tamper):
    task = staged_check(tmp_path, days, name, tamper)
    with pytest.raises(ValidationError, match=TAMPERED[tamper]) as info:
        check_input(task)
    assert str(days[0]) in str(info.value)
    with pytest.raises(Exception):  # noqa: B017 - xarray's errors vary with the fault
        check_decoded(task)


def quartered_files(root: Path, days: int = 3) -> list[Path]:
    """Files of one day each, whose variable is stored in four chunks (zlib and shuffle)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    paths = []
    for day in pd.date_range("2024-01-01", periods=days):
        ds = xr.Dataset(
            {"t2m": (("time", "y", "x"), rng.normal(280, 5, (1, 40, 60)).astype("f4"))},
            coords={"time": [day], "y": np.arange(40.0), "x": np.arange(60.0)},
        )
        path = root / f"t2m_{day:%Y%m%d}.nc"
        encoding = {"t2m": {"zlib": True, "shuffle": True, "chunksizes": (1, 20, 30)}}
        ds.to_netcdf(path, encoding=encoding)
        paths.append(path)
    return paths


def swap_inner_chunks(m: Manifest) -> None:
    """Day 0's two chunks after its first one trade places."""
    t2m = m.arrays["t2m"]
    for refs in (t2m.files, t2m.offsets, t2m.lengths):
        refs[0, 0, 1], refs[0, 1, 0] = refs[0, 1, 0].copy(), refs[0, 0, 1].copy()


def drop_shuffle(m: Manifest) -> None:
    m.arrays["t2m"].meta["filters"] = None


def swap_files(m: Manifest) -> None:
    """The first two days' references name each other's file: the same byte ranges, as
    files written alike have them, of the other day."""
    m.paths[0], m.paths[1] = m.paths[1], m.paths[0]


@pytest.mark.parametrize("name", FORMATS)
def test_chunks_where_hdf5_finds_the_inputs_are_decoded_once(tmp_path, name, monkeypatch):
    paths = quartered_files(tmp_path / "src")
    task = staged_check(tmp_path, paths, name)
    decoded = []

    def counted(data, codecs, zarray, dtype, what):
        decoded.append(what)
        return real(data, codecs, zarray, dtype, what)

    real = check.decode_chunk
    monkeypatch.setattr(check, "decode_chunk", counted)
    assert check_input(task) == [str(paths[0]), str(paths[-1])]
    chunks = [w.split(": ")[-1] for w in decoded]
    assert [c for c in chunks if c.startswith("chunk t2m/")] == [
        "chunk t2m/0.0.0",
        "chunk t2m/2.0.0",
    ]


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize(
    ("tamper", "error"),
    [
        (swap_inner_chunks, r"'t2m' differs at \{'time': 0, 'y': 0, 'x': 30\}"),
        (drop_shuffle, r"'t2m' differs at \{'time': 0, 'y': 0, 'x': 0\}"),
        (swap_files, r"t2m_20240101\.nc: ('t2m' differs|chunk t2m/[\d.]+ does not decode)"),
    ],
    ids=["swapped inner chunks", "filter dropped", "another file's ranges"],
)
def test_chunks_compared_by_place_still_find_wrong_references(tmp_path, name, tamper, error):
    """A chunk that is not the input's is decoded and compared; metadata that does not
    decode the input's chunks fails on the one chunk decoded."""
    paths = quartered_files(tmp_path / "src")
    with pytest.raises(ValidationError, match=error):
        check_input(staged_check(tmp_path, paths, name, tamper))


@pytest.mark.parametrize("name", FORMATS)
def test_append_of_a_corrupted_input_is_refused_and_changes_nothing(tmp_path, days, name):
    url = Path(bake(ref_recipe(days[:2], name), tmp_path / "out").url)
    before = digest(url)
    with h5py.File(days[-1]) as f:
        info = f["sst"].id.get_chunk_info(0)
    data = bytearray(days[-1].read_bytes())
    data[info.byte_offset : info.byte_offset + 8] = bytes(8)
    days[-1].write_bytes(bytes(data))
    with pytest.raises(ValidationError, match=rf"{days[-1]}: chunk sst/3\.0\.0 does not decode"):
        bake(ref_recipe(days, name), tmp_path / "out", append=True)
    assert digest(url) == before


def hourly_files(root: Path, hours: pd.DatetimeIndex, units: str) -> list[Path]:
    """One file an hour of a small float field, time as float64 ``units``."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for time in hours:
        ds = xr.Dataset(
            {"t2m": (("time", "y", "x"), rng.normal(280, 5, (1, 6, 8)).astype("f4"))},
            coords={"time": [time], "y": np.arange(6.0), "x": np.arange(8.0)},
        )
        path = root / f"t2m_{time:%Y%m%d%H}.nc"
        encoding = {"time": {"units": units, "dtype": "f8"}, "t2m": {"zlib": True}}
        ds.to_netcdf(path, encoding=encoding)
        paths.append(path)
    return paths


@pytest.mark.parametrize("name", FORMATS)
def test_append_checks_steps_as_times(tmp_path, name):
    """Hours as fractions of days are not evenly spaced as numbers, and new inputs may
    count time in other units: appends compare times, and refuse a gap."""
    hours = pd.date_range("1981-09-01", periods=8, freq="h")
    days = "days since 1900-01-01"
    old = hourly_files(tmp_path / "old", hours[:4], days)
    same = hourly_files(tmp_path / "same", hours[4:6], days)
    other = hourly_files(tmp_path / "other", hours[6:], "hours since 1981-09-01 06:00")
    raw = []
    for path in [*old, *same]:
        with xr.open_dataset(path, decode_times=False) as ds:
            raw.append(ds.time.values)
    assert np.unique(np.diff(np.concatenate(raw))).size > 1  # as numbers, steps differ
    out = tmp_path / "out"
    bake(ref_recipe(old, name), out)
    with pytest.raises(AppendError, match="leaves a gap"):  # in the store's units
        bake(ref_recipe([*old, same[1]], name), out, append=True)
    bake(ref_recipe([*old, *same], name), out, append=True)
    with pytest.raises(AppendError, match="leaves a gap"):  # in other units
        bake(ref_recipe([*old, *same, other[1]], name), out, append=True)
    result = bake(ref_recipe([*old, *same, *other], name), out, append=True)
    assert result.inputs == 2 and result.stats["validated_inputs"] == 2
    ds = assert_matches_sources(result.url, [*old, *same, *other])
    assert (ds.time.values == hours.values).all()


def test_an_append_imports_no_dask(tmp_path, days):
    """Importing dask (xarray does, as soon as it makes a variable) would cost an append
    of a few files more than the rest of it."""
    bake(ref_recipe(days[:2]), tmp_path / "out")
    code = (
        "import sys; from arcoforge.testing.recipes import ref_recipe; "
        "from arcoforge import bake; "
        f"bake(ref_recipe({[str(p) for p in days]!r}), {str(tmp_path / 'out')!r}, append=True); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'dask'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=True,
    )
    assert done.stdout.strip() == "[]"
