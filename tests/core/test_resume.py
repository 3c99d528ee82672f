"""Interrupted bakes resume and end with the bytes of an uninterrupted one; finished bakes
are not redone; two bakes of one store do not run at once."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from arcoforge import OpenWithXarray, StoreToZarr, bake, pattern_from_file_sequence
from arcoforge.core.ledger import LockedError
from arcoforge.core.runs import RUNS_FOLDER
from arcoforge.errors import ArcoforgeError, TargetError
from arcoforge.testing.archives import write_oisst_archive
from arcoforge.testing.compare import assert_same_as_sources

SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys, time
    from pathlib import Path
    from arcoforge import OpenWithXarray, StoreToZarr, bake, pattern_from_file_sequence

    src, target, counter = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    kill_at, pause = int(sys.argv[4]), float(sys.argv[5])
    urls = sorted(str(p) for p in Path(src).glob("*.nc"))
    done = Path(target) / ".out.zarr.arcoforge" / "staging" / "done"

    def due(calls):
        # from call kill_at on: at once in the scan; in the write, once a task is done
        if not kill_at or calls < kill_at:
            return False
        return calls <= len(urls) or (done.exists() and any(done.iterdir()))

    def count_calls(ds):
        fd = os.open(counter, os.O_CREAT | os.O_APPEND | os.O_WRONLY)
        os.write(fd, b"x")
        calls = os.lseek(fd, 0, os.SEEK_CUR)
        os.close(fd)
        if due(calls):
            os.killpg(0, signal.SIGKILL)
        time.sleep(pause)
        return ds

    recipe = (
        pattern_from_file_sequence(urls, "time", nitems_per_file=1)
        | OpenWithXarray()
        | count_calls
        | StoreToZarr("out.zarr", target_chunks={"time": 2})
    )
    result = bake(recipe, target, workers=2)
    print(json.dumps(result.stats))
    """
)

DAYS = 12


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> list[Path]:
    return write_oisst_archive(tmp_path_factory.mktemp("src"), days=DAYS, ny=18, nx=36)


@pytest.fixture(scope="module")
def script(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("script") / "bake_it.py"
    path.write_text(SCRIPT)
    return path


def run(script, archive, target: Path, kill_at: int = 0, pause: float = 0.0):
    """Bake in a process group of its own; ``kill_at`` kills the whole group with SIGKILL
    on that call of the preprocessing step (scan calls come first, one per input)."""
    counter = target.parent / f"{target.name}.calls"
    counter.unlink(missing_ok=True)
    args = [sys.executable, str(script), str(archive[0].parent), str(target), str(counter)]
    return subprocess.run(
        [*args, str(kill_at), str(pause)],
        capture_output=True,
        text=True,
        timeout=120,
        start_new_session=True,
    )


def digest(store: Path) -> dict[str, str]:
    """sha256 of every file of a store."""
    return {
        str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(store.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def clean(script, archive, tmp_path_factory) -> dict[str, str]:
    target = tmp_path_factory.mktemp("clean")
    done = run(script, archive, target)
    assert done.returncode == 0, done.stderr
    assert_same_as_sources(str(target / "out.zarr"), archive)
    return digest(target / "out.zarr")


@pytest.mark.parametrize(
    "kill_at, where",
    [(4, "scan"), (DAYS + 6, "early write"), (DAYS + 12, "late write")],
)
def test_killed_bake_resumes_to_the_same_bytes(script, archive, clean, tmp_path, kill_at, where):
    target = tmp_path / "target"
    killed = run(script, archive, target, kill_at=kill_at)
    assert killed.returncode == -9, (where, killed.stderr)
    assert not (target / "out.zarr").exists(), "nothing published by the killed bake"
    again = run(script, archive, target)
    assert again.returncode == 0, again.stderr
    stats = json.loads(again.stdout.strip().splitlines()[-1])
    if where != "scan":
        assert stats["tasks_resumed"] > 0, "finished write tasks are not redone"
    assert digest(target / "out.zarr") == clean
    assert not (target / ".out.zarr.partial").exists()


def kill_worker_on_call(counter: Path, kill_at: int, driver: int):
    """A preprocessing step that SIGKILLs the worker process running its ``kill_at``-th
    call (never the driver)."""

    def step(ds):
        fd = os.open(counter, os.O_CREAT | os.O_APPEND | os.O_WRONLY)
        os.write(fd, b"x")
        calls = os.lseek(fd, 0, os.SEEK_CUR)
        os.close(fd)
        if calls == kill_at and os.getpid() != driver:
            os.kill(os.getpid(), signal.SIGKILL)
        return ds

    return step


@pytest.mark.parametrize("kill_at", [3, DAYS + 5], ids=["scan", "write"])
def test_bake_finishes_when_a_worker_process_dies(archive, clean, tmp_path, kill_at, caplog):
    counter = tmp_path / "calls"
    pattern = pattern_from_file_sequence([str(p) for p in archive], "time", nitems_per_file=1)
    recipe = (
        pattern
        | OpenWithXarray()
        | kill_worker_on_call(counter, kill_at, os.getpid())
        | StoreToZarr("out.zarr", target_chunks={"time": 2})
    )
    result = bake(recipe, tmp_path, workers=2)
    assert counter.stat().st_size > kill_at, "the worker was killed and its tasks ran again"
    assert "a worker process died; running its" in caplog.text
    assert result.stats["worker_losses"] == 1
    assert digest(Path(result.url)) == clean


def test_local_engine_recovers_from_a_worker_that_died_while_idle():
    from arcoforge.engines.local import LocalEngine

    with LocalEngine(workers=2) as engine:
        assert sorted(engine.map(abs, [-1, -2, -3])) == [1, 2, 3]
        for pid in engine.pool_pids:
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)  # the pool notices and refuses new tasks
        assert sorted(engine.map(abs, [-4, -5, -6])) == [4, 5, 6]
        assert engine.worker_losses == 1


def _pid_and(value):
    return os.getpid(), value


def _die_outside(driver: int):
    def step(value):
        if os.getpid() != driver:
            os.kill(os.getpid(), signal.SIGKILL)
        return -value

    return step


def _fail_outside(driver: int):
    def step(value):
        if os.getpid() != driver:
            raise ValueError(f"no {value} here")
        return value

    return step


def _reaped(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # a zombie (exited, not reaped) still answers
    except ProcessLookupError:
        return True
    return False


def test_local_engine_runs_a_few_items_here_and_one_child_each_for_the_others():
    from arcoforge.engines.local import LocalEngine

    with LocalEngine(workers=3) as engine:
        results = list(engine.map(_pid_and, ["a", "b", "c"]))
        assert engine.pool_pids is None, "no pool for no more items than workers"
    assert [v for _, v in results] == ["a", "b", "c"]
    pids = [pid for pid, _ in results]
    assert pids[0] == os.getpid() and len({*pids[1:]} - {os.getpid()}) == 2
    assert all(_reaped(pid) for pid in pids[1:]), "the children were reaped on close"


def test_local_engine_runs_here_the_item_of_a_child_that_died(caplog):
    from arcoforge.engines.local import LocalEngine

    with LocalEngine(workers=2) as engine:
        assert list(engine.map(_die_outside(os.getpid()), [1, 2])) == [-1, -2]
        assert engine.worker_losses == 1
    assert "a worker process died; running its task here" in caplog.text


def test_local_engine_raises_here_the_error_of_a_forked_child():
    from arcoforge.engines.local import LocalEngine

    with LocalEngine(workers=2) as engine, pytest.raises(ValueError, match=r"^no 2 here$"):
        list(engine.map(_fail_outside(os.getpid()), [1, 2]))


def _frozen_count(_):
    return gc.get_freeze_count()


def test_local_engine_freezes_the_collector_before_forking_and_thaws_it_on_close():
    """The driver's objects are frozen while children run (their collections do not walk
    them) and given back to the collector when the engine closes; a freeze made by
    someone else is left as it is."""
    from arcoforge.engines.local import LocalEngine

    assert gc.get_freeze_count() == 0
    with LocalEngine(workers=2) as engine:
        counts = list(engine.map(_frozen_count, [1, 2]))
        assert min(counts) > 0 and gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0, "thawed on close"
    gc.freeze()
    try:
        with LocalEngine(workers=2) as engine:
            list(engine.map(_frozen_count, [1, 2]))
            assert not engine.froze_collector, "another's freeze: not added to"
        assert gc.get_freeze_count() > 0, "another's freeze: not thawed"
    finally:
        gc.unfreeze()


def _unpicklable_outside(driver: int):
    def step(value):
        return value if os.getpid() == driver else (lambda: value)

    return step


def test_local_engine_raises_here_a_result_a_forked_child_cannot_send():
    from arcoforge.engines.local import LocalEngine

    with LocalEngine(workers=2) as engine, pytest.raises(Exception, match="pickle"):
        list(engine.map(_unpicklable_outside(os.getpid()), [1, 2]))
    assert engine.worker_losses == 0, "not taken for a worker that died"


def test_a_task_that_keeps_killing_its_worker_is_named(archive, tmp_path):
    def always_die(ds):
        if ds.time.dt.day.item() == 5:
            os.kill(os.getpid(), signal.SIGKILL)
        return ds

    pattern = pattern_from_file_sequence([str(p) for p in archive], "time", nitems_per_file=1)
    recipe = pattern | OpenWithXarray() | always_die | StoreToZarr("out.zarr")
    with pytest.raises(
        ArcoforgeError,
        match=r"scan of .*05\.nc: its worker process died each of the 3 times it ran alone",
    ):
        bake(recipe, tmp_path, workers=2)
    assert not (tmp_path / "out.zarr").exists()


def test_bake_killed_between_the_publishing_renames_is_finished_by_the_next(
    script, archive, clean, tmp_path, monkeypatch
):
    target = tmp_path / "target"
    assert run(script, archive, target).returncode == 0
    old = digest(target / "out.zarr")

    real_rename = os.rename

    class Killed(BaseException):
        pass

    def rename_then_die(src, dst):
        real_rename(src, dst)
        raise Killed

    recipe = _recipe(archive)
    monkeypatch.setattr(os, "rename", rename_then_die)
    with pytest.raises(Killed):
        bake(recipe, target, workers=1)
    monkeypatch.setattr(os, "rename", real_rename)
    assert not (target / "out.zarr").exists(), "the old store stepped aside"
    aside = target / ".out.zarr.arcoforge" / "replaced"  # in a folder of ours
    assert digest(aside) == old
    result = bake(recipe, target, workers=1)
    assert result.stats["tasks_resumed"] > 0
    assert_same_as_sources(result.url, archive)
    assert not aside.exists()
    assert sorted(p.name for p in target.iterdir()) == [
        RUNS_FOLDER,
        ".out.zarr.arcoforge",
        "out.zarr",
    ]


def _recipe(archive, chunks: int = 2, decode: bool = False):
    pattern = pattern_from_file_sequence([str(p) for p in archive], "time", nitems_per_file=1)
    writer = StoreToZarr("out.zarr", target_chunks={"time": chunks}, decode=decode)
    return pattern | OpenWithXarray() | writer


def test_finished_bake_is_not_redone_unless_forced(archive, tmp_path):
    first = bake(_recipe(archive), tmp_path, workers=1)
    stamp = (Path(first.url) / "zarr.json").stat().st_mtime_ns
    again = bake(_recipe(archive), tmp_path, workers=1)
    assert again.stats == {"up_to_date": True}
    assert again.dims == first.dims and again.chunks == first.chunks
    assert (Path(first.url) / "zarr.json").stat().st_mtime_ns == stamp
    forced = bake(_recipe(archive), tmp_path, workers=1, force=True)
    assert "up_to_date" not in forced.stats
    assert (Path(first.url) / "zarr.json").stat().st_mtime_ns != stamp
    assert_same_as_sources(forced.url, archive)


def test_a_changed_recipe_does_not_resume_a_stale_staging_store(script, archive, tmp_path):
    assert run(script, archive, tmp_path, kill_at=DAYS + 6).returncode == -9
    assert (tmp_path / ".out.zarr.partial").exists()
    result = bake(_recipe(archive, chunks=5), tmp_path, workers=1)
    assert result.stats["tasks_resumed"] == 0
    assert result.chunks["time"] == 5
    assert_same_as_sources(result.url, archive)


def test_a_second_bake_of_the_same_store_is_refused(script, archive, clean, tmp_path):
    target = tmp_path / "target"
    counter = tmp_path / "target.calls"
    args = [sys.executable, str(script), str(archive[0].parent), str(target), str(counter)]
    first = subprocess.Popen(
        [*args, "0", "0.15"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while not counter.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert counter.exists(), "the first bake started"
        with pytest.raises(LockedError, match=r"out\.zarr is being baked by another process"):
            bake(_recipe(archive), target, workers=1)
    finally:
        _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert digest(target / "out.zarr") == clean


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root can mount one; the test needs it to fill a real disk)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)])
    if made.returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_full_disk_fails_cleanly_and_resumes_once_there_is_room(small_disk, tmp_path):
    from arcoforge.testing.archives import write_oisst_archive

    files = write_oisst_archive(tmp_path / "src", days=12, ny=90, nx=180)
    recipe = _recipe(files, decode=True)  # decoded float32: more than the disk holds
    clean = bake(recipe, tmp_path / "clean", workers=2)
    with pytest.raises((OSError, TargetError), match=r"(?i)no space left on"):
        bake(recipe, small_disk, workers=2)  # a write names its path, others their own
    assert not (small_disk / "out.zarr").exists(), "nothing published"
    staged = json.loads((small_disk / ".out.zarr.arcoforge/staging/manifest.json").read_text())
    assert staged["status"] == "writing"
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    result = bake(recipe, small_disk, workers=2)
    assert result.stats["tasks_resumed"] > 0
    assert digest(small_disk / "out.zarr") == digest(Path(clean.url))
