"""What is kept beside a store is data that runs no code when read (JSON, and arrays as raw
buffers), a state file that is not ours is one line naming it, and the lock on an object
store is taken atomically, beats while its bake runs, and is taken over once it is silent."""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cftime
import cloudpickle
import numpy as np
import pytest
import s3fs
import xarray as xr

from arcoforge import OpenWithXarray, StoreToZarr, bake, pattern_from_file_sequence
from arcoforge.cli.templates import write_feedstock
from arcoforge.core.ledger import Ledger, LockedError
from arcoforge.core.locks import BEAT_ENV, STALE_ENV, Owner
from arcoforge.core.plan import BakeState
from arcoforge.core.progress import Reporter
from arcoforge.core.statefile import (
    StateFileError,
    dumps_binary,
    dumps_json,
    loads_binary,
    loads_json,
)
from arcoforge.core.tasks import Failed
from arcoforge.engines import beam as beam_engine
from arcoforge.errors import AppendError, ArcoforgeError, SourceError, TargetError
from arcoforge.products import make_plan
from arcoforge.references.plan import HELD
from arcoforge.testing.archives import write_oisst_archive
from arcoforge.testing.compare import assert_matches_sources, assert_same_as_sources
from arcoforge.testing.recipes import FORMATS, ref_recipe, simple_recipe
from arcoforge.zarr.plan import STATE_TYPES, ZarrState
from arcoforge.zarr.scan import ScanTask, SchemaCombiner, scan_input

PICKLE_STARTS = [b"\x80" + bytes([protocol]) for protocol in range(2, 6)]
PICKLE_FRAMES = (b"\x80\x04\x95", b"\x80\x05\x95")


class RunsCode:
    """Unpickled, it creates the file at ``path``: what a tampered state file could do."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class Stages(Reporter):
    """The number of tasks of each stage a bake ran."""

    def __init__(self):
        self.totals: dict[str, int] = {}

    def stage_started(self, name, total, description):
        self.totals[name] = total


def assert_no_pickle(root: Path) -> list[Path]:
    """No file under ``root`` is a pickle, nor holds one of arcoforge's objects; arcoforge's
    own files (beside the stores, the run records) hold no pickle frame anywhere."""
    files = [p for p in root.rglob("*") if p.is_file()]
    for path in files:
        data = path.read_bytes()
        assert data[:2] not in PICKLE_STARTS, path
        assert b"\x8c\x0farcoforge.plan" not in data and b"cloudpickle" not in data, path
        if ".arcoforge" in str(path):
            assert not any(frame in data for frame in PICKLE_FRAMES), path
    return files


def arcoforge_lines(caplog) -> list[str]:
    """The lines arcoforge logged (not the warnings of the libraries it uses)."""
    return [r.getMessage() for r in caplog.records if r.name == "arcoforge"]


def scanned_schema(paths, **open_kwargs):
    recipe = (
        pattern_from_file_sequence([str(p) for p in paths], "time", nitems_per_file=1)
        | OpenWithXarray(xarray_open_kwargs=open_kwargs)
        | StoreToZarr("x.zarr")
    )
    plan = make_plan(recipe, "/unused", cache=None, workers=1)
    combiner = SchemaCombiner(recipe.pattern)
    for item in plan.inputs:
        combiner.add(scan_input(ScanTask(item, plan.open)))
    return combiner.result()


def same(a, b) -> None:
    """``a`` and ``b`` are equal, of the same types all the way down (arrays: dtype too)."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert [type(x) for x in a.ravel()] == [type(x) for x in b.ravel()]
        np.testing.assert_array_equal(a, b)
    elif dataclasses.is_dataclass(a):
        for field in dataclasses.fields(a):
            same(getattr(a, field.name), getattr(b, field.name))
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            same(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            same(x, y)
    elif isinstance(a, float | np.floating) and np.isnan(a):
        assert np.isnan(b)
    else:
        assert a == b and repr(a) == repr(b)


# -- round trips ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("calendar", "open_kwargs"),
    [("noleap", {}), ("standard", {"mask_and_scale": False}), ("360_day", {})],
    ids=["cftime-noleap", "int16-packed", "cftime-360-day"],
)
def test_a_scanned_schema_round_trips_through_json(tmp_path, calendar, open_kwargs):
    paths = write_oisst_archive(tmp_path, days=3, ny=4, nx=8, calendar=calendar)
    schema = scanned_schema(paths, **open_kwargs)
    kept = {"schema": schema, "chunks": {"time": 2}, "promoted": (), "missing": {"a.nc": "gone"}}
    data = dumps_json(kept, "staging state", STATE_TYPES)
    assert json.loads(data)["format"] == "arcoforge-state"
    back = loads_json(data, "state.json", "staging state", STATE_TYPES)
    same(back, kept)
    times = back["schema"].concat_values["time"]
    if calendar != "standard":
        assert type(times[0]) is type(schema.concat_values["time"][0])
        assert times[0].calendar == calendar
    else:
        sst = back["schema"].variables["sst"]
        assert sst.dtype == "int16" and sst.attrs["scale_factor"] == np.float32(0.01)
        assert type(sst.attrs["scale_factor"]) is np.float32
    assert times.flags.writeable, "a resumed bake may change what it read back"


ODD_VALUES = [
    {"nan": float("nan"), "inf": float("-inf"), "big": 2**70, "flag": True, "none": None},
    {1: "int key", ("a", 2): "tuple key", "~": "tilde key"},
    (b"\x00\x80\x04\x95bytes", [1, (2, 3)], ()),
    [np.int16(-999), np.float32(0.01), np.uint64(2**63), np.bool_(True), np.float64("nan")],
    [np.datetime64("2020-01-01T00:00:00.5", "ms"), np.timedelta64(3, "h"), np.str_("é")],
    [np.longdouble(1) / 3, np.complex64(1 + 2j), np.bytes_(b"abc")],
    np.arange(12, dtype=">i4").reshape(3, 4)[:, ::2],
    np.array(["1981-09-01", "NaT"], dtype="M8[ns]"),
    np.array([[b"chunk", None]], dtype=object),
    np.array(3.5),
    np.zeros((0, 2), dtype="f4"),
    [datetime.datetime(2020, 1, 2, 3, 4, 5, 6, tzinfo=datetime.UTC), datetime.date(1, 1, 1)],
    [datetime.timedelta(days=-1, microseconds=5)],
    [cftime.DatetimeNoLeap(2001, 2, 28, 23, 59, 59, 999999, has_year_zero=True)],
    [cftime.datetime(1, 1, 1, calendar="julian"), cftime.Datetime360Day(2000, 2, 30)],
    np.array([cftime.DatetimeAllLeap(2000, 2, 29), cftime.DatetimeNoLeap(2000, 3, 1)]),
]


@pytest.mark.parametrize("value", ODD_VALUES, ids=range(len(ODD_VALUES)))
@pytest.mark.parametrize("dumps,loads", [(dumps_json, loads_json), (dumps_binary, loads_binary)])
def test_values_round_trip_with_their_types(value, dumps, loads):
    same(loads(dumps(value, "k"), "f", "k"), value)


def test_errors_round_trip_as_arcoforge_or_python_errors():
    value = [SourceError("http://x/a.nc: 404"), KeyError("k"), OSError(28, "no space")]
    back = loads_binary(dumps_binary(value, "k"), "f", "k")
    assert [type(e) for e in back] == [SourceError, KeyError, OSError]
    assert [str(e) for e in back] == [str(e) for e in value]


def test_errors_of_modules_that_moved_are_read_back_as_their_class():
    data = dumps_json([AppendError("cannot append b.nc")], "k")
    old = data.replace(b'"arcoforge.errors.AppendError"', b'"arcoforge.updates.AppendError"')
    assert old != data  # as arcoforge 0.1 named it
    (back,) = loads_json(old, "f", "k")
    assert type(back) is AppendError and str(back) == "cannot append b.nc"


def test_a_value_of_another_type_is_not_kept():
    with pytest.raises(TypeError, match=r"^a value of type pathlib\.PosixPath$"):
        dumps_json({"a": Path("/x")}, "k")
    with pytest.raises(TypeError, match=r"^a value of type arcoforge\.core\.plan\.BakeState$"):
        dumps_json(BakeState(), "k")  # a dataclass, but not among the types allowed


HOSTILE = {
    '{"~": "array", "dtype": "O", "shape": [1], "b64": "AAAAAAAAAAA="}': (
        "a bad 'array' value: ValueError: dtype 'O' is not kept in state files"
    ),
    '{"~": "Popen", "fields": {"args": ["touch", "x"]}}': "unknown type 'Popen'",
    '{"~": "cftime", "class": "Popen", "fields": [], "calendar": "", "has_year_zero": 1}': (
        "unknown date class 'Popen'"
    ),
    '{"~": "array", "dtype": "<f8", "shape": [4], "b64": "AAAAAAAAAAA="}': (
        "an array of 8 bytes, not (4,) of float64"
    ),
    '{"~": "VarInfo", "fields": {"dims": []}}': (
        "a bad 'VarInfo' value: TypeError: VarInfo.__init__() missing 5 required positional "
        "arguments: 'shape', 'dtype', 'attrs', 'encoding', and 'is_coord'"
    ),
    "[" * 3000 + "]" * 3000: (
        "not JSON: maximum recursion depth exceeded while decoding a JSON array from a unicode "
        "string"
    ),
    '{"~": "tuple", "items": [' * 400 + "]}" * 400: "nested too deeply",
}


@pytest.mark.parametrize("body", HOSTILE, ids=range(len(HOSTILE)))
def test_a_hostile_document_is_one_line_and_makes_nothing(body):
    data = f'{{"format": "arcoforge-state", "version": 1, "kind": "k", "value": {body}}}'
    with pytest.raises(StateFileError) as info:
        loads_json(data.encode(), "/x/state.json", "k", STATE_TYPES)
    why = HOSTILE[body]
    assert str(info.value) == f"/x/state.json: not a state file of this arcoforge version ({why})"


def test_the_beam_engine_keeps_its_final_state_as_data(tmp_path):
    """What the last step of the pipeline writes beside the store, and the driver reads."""
    paths = write_oisst_archive(tmp_path / "src", days=2, ny=4, nx=8, calendar="noleap")
    plan = make_plan(simple_recipe(paths), str(tmp_path / "out"), cache=None, workers=1)
    state = ZarrState(schema=scanned_schema(paths), chunks={"time": 1}, open=plan.open)
    state.stats = {"store_check": "healthy", "dims": {"time": 2}, "steps": {"time": {0: 1, 1: 1}}}
    lines = [(logging.WARNING, "scan of a.nc: slow")]
    url = str(tmp_path / "outcome")
    types = beam_engine.outcome_types(plan)
    for final in (state, Failed(SourceError("a.nc: gone"))):
        carried = cloudpickle.dumps((final, {"scan": 1.5}, {"scan": 2}, 0.0, lines))
        beam_engine.save_outcome(carried, url, None, types)
        data = Path(url).read_bytes()
        assert data[:2] not in PICKLE_STARTS and b"cloudpickle" not in data
        back, timings, totals, got_lines = loads_binary(data, url, beam_engine.OUTCOME, types)
        assert (timings, totals, got_lines) == ({"scan": 1.5}, {"scan": 2}, lines)
        if isinstance(final, Failed):
            assert type(back.error) is SourceError and str(back.error) == "a.nc: gone"
        else:
            assert back.open is None and back.encoding == {}, "the recipe's functions stay out"
            same(dataclasses.replace(back, open=None), dataclasses.replace(state, open=None))


# -- no pickle under a target root ---------------------------------------------------


def test_no_pickle_after_a_resumed_zarr_bake_and_an_append(tmp_path, small_archive, caplog):
    out = tmp_path / "out"
    recipe = simple_recipe(small_archive[:5])
    plan = make_plan(recipe, str(out), cache=None, workers=1)
    state = plan.new_state()
    with plan.ledger.lock():  # a bake interrupted once its scan is kept
        for stage in plan.stages[:2]:
            stage.reduce(state, map(stage.func, stage.items(state)) if stage.func else [])
    kept = Path(plan.ledger.state_url)
    assert json.loads(kept.read_bytes())["kind"] == "staging state"
    assert_no_pickle(out)

    stages = Stages()
    result = bake(recipe, out, workers=2, reporter=stages)
    assert stages.totals["scan"] == 0, "the resumed bake did not scan again"
    assert not arcoforge_lines(caplog)
    assert_same_as_sources(result.url, small_archive[:5])
    bake(simple_recipe(small_archive), out, workers=2, append=True)
    assert_same_as_sources(result.url, small_archive)
    files = assert_no_pickle(out)
    assert any(p.name == "manifest.json" for p in files)


@pytest.mark.parametrize("name", FORMATS)
def test_no_pickle_beside_references_baked_and_appended(tmp_path, name):
    paths = write_oisst_archive(tmp_path / "src", days=6, ny=6, nx=12)
    out = tmp_path / "out"
    bake(ref_recipe(paths[:3], name), out, workers=2)
    for end in (4, 5, 6):  # the appends keep segments of the manifest
        url = bake(ref_recipe(paths[:end], name), out, workers=2, append=True).url
    assert_matches_sources(url, paths)
    folder = Path(make_plan(ref_recipe(paths, name), str(out), cache=None, workers=1).ledger.folder)
    kept = sorted(p.name for p in folder.glob("references*"))
    assert kept == ["references.1.held", "references.2.held", "references.3.held", HELD]
    assert_no_pickle(tmp_path / "out")


def test_no_pickle_in_an_icechunk_repository_and_beside_it(tmp_path):
    pytest.importorskip("icechunk")
    paths = write_oisst_archive(tmp_path / "src", days=4, ny=6, nx=12)
    root = f"icechunk://{tmp_path / 'ic'}"
    bake(ref_recipe(paths[:2]), root, workers=2)
    url = bake(ref_recipe(paths), root, workers=2, append=True).url
    assert_matches_sources(url, paths)
    assert len(assert_no_pickle(tmp_path / "ic")) > 5


# -- state files that are not ours ---------------------------------------------------


def interrupted_after_scan(recipe, out: Path) -> Path:
    """Run a bake's prepare and scan only; the path of the state it kept."""
    plan = make_plan(recipe, str(out), cache=None, workers=1)
    state = plan.new_state()
    for stage in plan.stages[:2]:
        stage.reduce(state, map(stage.func, stage.items(state)) if stage.func else [])
    return Path(plan.ledger.state_url)


def tampered(path: Path, how: str, marker: Path) -> str:
    """Change the state file at ``path``; what the warning says of it."""
    data = path.read_bytes()
    if how == "pickle":
        path.write_bytes(pickle.dumps(RunsCode(marker), protocol=5))
        return "a pickle, which arcoforge no longer reads"
    if how == "truncated":
        path.write_bytes(data[:10])
        return "not JSON: Expecting value: line 1 column 11 (char 10)"
    if how == "other version":
        path.write_bytes(data.replace(b'"version":1', b'"version":2', 1))
        return "format version 2; this arcoforge reads 1"
    if how == "other fields":
        path.write_bytes(data.replace(b'"fingerprint":', b'"fingerprints":', 1))
        return "VarInfo has no field 'fingerprints'"
    head, _, tail = data.rpartition(b'"promoted"')  # the last: the kept dict's own
    path.write_bytes(head + b'"promote"' + tail)
    return "no 'promoted' of type tuple"


@pytest.mark.parametrize("how", ["pickle", "truncated", "other version", "other fields", "keys"])
def test_a_kept_scan_that_is_not_ours_is_one_warning_and_a_new_scan(
    tmp_path, small_archive, caplog, how
):
    out, marker = tmp_path / "out", tmp_path / "ran"
    recipe = simple_recipe(small_archive)
    path = interrupted_after_scan(recipe, out)
    why = tampered(path, how, marker)
    stages = Stages()
    with caplog.at_level(logging.WARNING, "arcoforge"):
        result = bake(recipe, out, workers=1, reporter=stages)
    assert arcoforge_lines(caplog) == [
        f"{path}: not a state file of this arcoforge version ({why}); scanning the inputs again"
    ]
    assert stages.totals["scan"] == len(small_archive)
    assert not marker.exists(), "nothing in the state file ran"
    assert_same_as_sources(result.url, small_archive)
    assert_no_pickle(out)


@pytest.mark.parametrize("how", ["pickle", "truncated", "other version", "kept by 0.1"])
def test_a_held_manifest_that_is_not_ours_stops_an_append_in_one_line(tmp_path, how):
    paths = write_oisst_archive(tmp_path / "src", days=4, ny=6, nx=12)
    out, marker = tmp_path / "out", tmp_path / "ran"
    first = bake(ref_recipe(paths[:2]), out, workers=1)
    folder = Path(first.url).parent / f".{Path(first.url).name}.arcoforge"
    path = folder / HELD
    data = path.read_bytes()
    if how == "pickle":
        path.write_bytes(pickle.dumps(RunsCode(marker), protocol=5))
        why = "a pickle, which arcoforge no longer reads"
    elif how == "truncated":
        path.write_bytes(data[: len(data) - 100])
        why = f"truncated: {len(data) - 100} bytes, its arrays need "
    elif how == "other version":
        path.write_bytes(data.replace(b'"version":1', b'"version":7', 1))
        why = "format version 7; this arcoforge reads 1"
    else:  # a store baked by arcoforge 0.1, whose manifest names its pickle
        path = folder / "references.pkl"
        path.write_bytes(b"arcoforge-held-1" + pickle.dumps(RunsCode(marker), protocol=5))
        manifest = json.loads((folder / "manifest.json").read_text())
        (folder / "manifest.json").write_text(json.dumps({**manifest, "held": [path.name]}))
        why = "a pickle, which arcoforge no longer reads"
    with pytest.raises(StateFileError) as info:
        bake(ref_recipe(paths), out, workers=1, append=True)
    line = str(info.value)
    assert line.startswith(f"{path}: not a state file of this arcoforge version ({why}")
    assert line.endswith("); bake the store again with --force") and "\n" not in line
    assert not marker.exists(), "nothing in the state file ran"
    again = bake(ref_recipe(paths), out, workers=1, force=True)
    assert_matches_sources(again.url, paths)
    assert sorted(p.name for p in folder.glob("references*")) == [HELD]
    assert_no_pickle(out)


def test_a_bad_held_manifest_is_one_error_line_of_the_cli(tmp_path):
    feedstock = tmp_path / "feed"
    write_feedstock(feedstock)
    recipe_py = feedstock / "recipe.py"
    text = recipe_py.read_text().replace("    | OpenURLWithFSSpec()\n    | OpenWithXarray()\n", "")
    text = text.replace(
        'StoreToZarr(store_name="feed.zarr", target_chunks={"time": 2})',
        'OpenWithKerchunk()\n    | WriteCombinedReference("ref", output_file_name="refs.json")',
    )
    text = text.replace(
        "OpenURLWithFSSpec, OpenWithXarray, StoreToZarr", "OpenWithKerchunk, WriteCombinedReference"
    )
    recipe_py.write_text(text.replace("periods=4", "periods=2"))
    command = [sys.executable, "-m", "arcoforge.cli", "bake", str(feedstock)]
    command += ["--target-root", str(tmp_path / "out")]
    first = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    held = tmp_path / "out" / "ref" / ".refs.json.arcoforge" / HELD
    held.write_bytes(held.read_bytes()[:50])
    recipe_py.write_text(text)
    done = subprocess.run([*command, "--append"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    size = int.from_bytes(held.read_bytes()[16:24], "little")
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: {held}: not a state file of this arcoforge version (truncated: 50 bytes, its "
        f"header alone needs {24 + size}); bake the store again with --force"
    )


# -- the lock on an object store -----------------------------------------------------


@pytest.fixture
def quick_locks(monkeypatch):
    """Locks silent for 2 s are stale; heartbeats every 0.25 s."""
    monkeypatch.setenv(STALE_ENV, "2")
    monkeypatch.setenv(BEAT_ENV, "0.25")


def lock_body(beat_ago: float, pid: int = 4242, run: str | None = "20261207T070000Z-abcdef"):
    now = time.time()
    owner = Owner("elsewhere", pid, run, now - 3600, now - beat_ago, "t0ken")
    return owner, owner.body()


def test_two_bakes_racing_for_the_lock_one_wins(s3, bucket, quick_locks):
    for round_ in range(4):
        ledger = Ledger(f"{bucket}/r{round_}/out.zarr", s3)
        start, tried = threading.Barrier(2), threading.Barrier(2)
        outcomes = []

        def take(ledger=ledger, start=start, tried=tried, outcomes=outcomes):
            start.wait()
            try:
                with ledger.lock():
                    outcomes.append("won")
                    tried.wait(timeout=30)
            except LockedError as exc:
                outcomes.append(str(exc))
                tried.wait(timeout=30)

        threads = [threading.Thread(target=take) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert sorted(outcomes)[1] == "won", outcomes
        assert sorted(outcomes)[0].startswith(f"{ledger.store} is being baked by another process")
        assert f"remove the lock file {ledger.folder}/lock if" in sorted(outcomes)[0]
        assert not s3fs.S3FileSystem(**s3).exists(f"{ledger.folder}/lock")


def test_a_live_lock_refuses_a_bake_naming_the_lock_file(small_archive, s3, bucket, quick_locks):
    fs = s3fs.S3FileSystem(**s3)
    lock = f"{bucket}/.out.zarr.arcoforge/lock"
    owner, body = lock_body(beat_ago=0.5)
    fs.pipe_file(lock, body)
    with pytest.raises(LockedError) as info:
        bake(simple_recipe(small_archive), bucket, workers=1, storage_options=s3)
    assert str(info.value) == (
        f"{bucket}/out.zarr is being baked by another process ({owner.describe()}, last beat "
        f"{str(info.value).split('last beat ')[1].split(' ')[0]} s ago); wait for it to finish, "
        f"or remove the lock file {lock} if that process is gone (a lock silent for 2 s is "
        "taken over)"
    )
    assert owner.describe() == (
        f"pid 4242 on elsewhere, run 20261207T070000Z-abcdef, since "
        f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(owner.started))}"
    )
    assert fs.cat_file(lock) == body, "the other bake's lock is left as it was"


def test_a_stale_lock_is_taken_over_with_a_warning(small_archive, s3, bucket, quick_locks, caplog):
    fs = s3fs.S3FileSystem(**s3)
    lock = f"{bucket}/.out.zarr.arcoforge/lock"
    owner, body = lock_body(beat_ago=30)
    fs.pipe_file(lock, body)
    with caplog.at_level(logging.WARNING, "arcoforge"):
        result = bake(simple_recipe(small_archive), bucket, workers=1, storage_options=s3)
    [line] = arcoforge_lines(caplog)
    took = f"{bucket}/out.zarr: took over the lock {lock} from {owner.describe()}"
    assert re.fullmatch(re.escape(took) + r", which had not beaten for 3\d s", line), line
    assert_same_as_sources(xr.open_zarr(result.url, storage_options=s3), small_archive)
    assert not fs.exists(lock), "the lock is removed when the bake ends"


def test_a_lock_beats_while_held_and_is_removed_after(s3, bucket, quick_locks):
    fs = s3fs.S3FileSystem(**s3)
    ledger = Ledger(f"{bucket}/out.zarr", s3)
    lock = f"{ledger.folder}/lock"
    with ledger.lock(run="20261207T080000Z-123456"):
        first = Owner.parse(fs.cat_file(lock))
        time.sleep(1.2)
        later = Owner.parse(fs.cat_file(lock))
        assert (first.pid, first.host, first.run) == (
            os.getpid(),
            socket.gethostname(),
            "20261207T080000Z-123456",
        )
        assert later.token == first.token and later.started == first.started
        assert later.beat - first.beat >= 0.5, "the heartbeat rewrote it"
        with (
            pytest.raises(LockedError, match="is being baked by another process"),
            Ledger(ledger.store, s3).lock(),
        ):
            pass
    assert not fs.exists(lock)
    assert not [t for t in threading.enumerate() if t.name == "lock-beat"], "the heartbeat stopped"


def test_a_lock_taken_over_is_not_removed_by_its_old_holder(s3, bucket, quick_locks, caplog):
    fs = s3fs.S3FileSystem(**s3)
    ledger = Ledger(f"{bucket}/out.zarr", s3)
    lock = f"{ledger.folder}/lock"
    with caplog.at_level(logging.WARNING, "arcoforge"), ledger.lock():
        _, body = lock_body(beat_ago=0)
        fs.pipe_file(lock, body)  # another bake took it over, thinking this one gone
        time.sleep(0.8)
    assert fs.cat_file(lock) == body
    assert arcoforge_lines(caplog) == [
        f"{ledger.store}: the lock {lock} was taken over by another bake; this one no longer holds it"
    ]


def test_lock_settings_that_are_not_seconds_are_one_line(s3, bucket, monkeypatch):
    ledger = Ledger(f"{bucket}/out.zarr", s3)
    monkeypatch.setenv(STALE_ENV, "ten minutes")
    with (
        pytest.raises(
            ArcoforgeError, match=f"^{STALE_ENV}='ten minutes': not a number of seconds above 0$"
        ),
        ledger.lock(),
    ):
        pass
    monkeypatch.setenv(STALE_ENV, "10")
    monkeypatch.setenv(BEAT_ENV, "10")
    with pytest.raises(ArcoforgeError) as info, ledger.lock():
        pass
    assert str(info.value) == (
        f"{BEAT_ENV}=10 must be less than {STALE_ENV}=10: a live bake would look stale between "
        "two heartbeats"
    )


def test_a_lock_in_a_missing_bucket_is_one_line(s3):
    ledger = Ledger("s3://no-such-bucket/x/out.zarr", s3)
    with pytest.raises(TargetError) as info, ledger.lock():
        pass
    assert str(info.value) == (
        "s3://no-such-bucket/x/.out.zarr.arcoforge/lock: cannot take the lock: "
        "FileNotFoundError: The specified bucket does not exist"
    )


def test_a_local_lock_names_its_file(tmp_path):
    ledger = Ledger(str(tmp_path / "out.zarr"))
    with (
        ledger.lock(run="20261207T090000Z-aaaaaa"),
        pytest.raises(LockedError) as info,
        Ledger(ledger.store).lock(),
    ):
        pass
    owner = f"pid {os.getpid()} on {socket.gethostname()}, run 20261207T090000Z-aaaaaa, since "
    assert str(info.value).startswith(f"{ledger.store} is being baked by another process ({owner}")
    assert str(info.value).endswith(
        f"); wait for it to finish (its lock {ledger.folder}/lock is released when it ends)"
    )


def test_a_killed_bake_s_lock_is_taken_over_once_stale(tmp_path, s3, bucket, monkeypatch, caplog):
    feedstock = tmp_path / "feed"
    write_feedstock(feedstock)
    recipe_py = feedstock / "recipe.py"
    text = recipe_py.read_text().replace(
        "    | OpenWithXarray()\n", "    | OpenWithXarray()\n    | slow\n"
    )
    text = text.replace(
        "\npattern = ", "\ndef slow(ds):\n    time.sleep(60)\n    return ds\n\n\npattern = "
    )
    recipe_py.write_text(f"import time\n{text}")
    settings = {STALE_ENV: "6", BEAT_ENV: "0.5"}
    env = {**os.environ, **settings, **aws_env(s3)}
    command = [sys.executable, "-m", "arcoforge.cli", "bake", str(feedstock)]
    command += ["--target-root", bucket, "--workers", "1"]
    baker = subprocess.Popen(
        command, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    fs = s3fs.S3FileSystem(**s3)
    lock = f"{bucket}/.feed.zarr.arcoforge/lock"
    try:
        deadline = time.monotonic() + 120
        while not fs.exists(lock) and time.monotonic() < deadline and baker.poll() is None:
            time.sleep(0.2)
        assert baker.poll() is None, baker.communicate()[1]
        time.sleep(1.0)  # a heartbeat or two
        owner = Owner.parse(fs.cat_file(lock))
    finally:
        if baker.poll() is None:
            os.killpg(baker.pid, signal.SIGKILL)
        baker.wait(timeout=30)
    killed = time.time()
    assert owner.pid == baker.pid and owner.run and owner.beat > owner.started
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    recipe = simple_recipe(recipe_paths(feedstock), store="feed.zarr")
    with pytest.raises(LockedError) as info:
        bake(recipe, bucket, workers=1, storage_options=s3)
    assert f"({owner.describe()}, last beat " in str(info.value)
    assert f"remove the lock file {lock} if that process is gone" in str(info.value)
    time.sleep(max(0.0, killed + 6.5 - time.time()))
    with caplog.at_level(logging.WARNING, "arcoforge"):
        result = bake(recipe, bucket, workers=1, storage_options=s3)
    [line] = arcoforge_lines(caplog)
    assert line.startswith(
        f"{bucket}/feed.zarr: took over the lock {lock} from {owner.describe()}, which had not "
        "beaten for "
    )
    assert_same_as_sources(xr.open_zarr(result.url, storage_options=s3), recipe_paths(feedstock))
    assert not fs.exists(lock)


def aws_env(s3: dict) -> dict[str, str]:
    """The environment that points a subprocess's s3fs at the moto server."""
    return {
        "AWS_ACCESS_KEY_ID": s3["key"],
        "AWS_SECRET_ACCESS_KEY": s3["secret"],
        "AWS_ENDPOINT_URL": s3["client_kwargs"]["endpoint_url"],
        "AWS_DEFAULT_REGION": s3["client_kwargs"]["region_name"],
    }


def recipe_paths(feedstock: Path) -> list[Path]:
    return sorted((feedstock / "sample-data").glob("*.nc"))
