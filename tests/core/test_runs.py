"""Run records: written at the start and the end of every bake, in both places, secrets
masked; listed and shown by ``arcoforge runs``."""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from contextlib import suppress
from importlib import metadata
from pathlib import Path

import pytest
import xarray as xr

from arcoforge import bake
from arcoforge.bake.run import stored_bytes
from arcoforge.core.progress import Reporter
from arcoforge.core.runs import (
    LIBRARIES,
    RUNS_FOLDER,
    RunContext,
    list_runs,
    runner,
    state_dir,
    versions,
)
from arcoforge.errors import SourceError
from arcoforge.testing.cli import NAME, arcoforge, error_line, ok
from arcoforge.testing.compare import assert_same_as_sources, files_containing
from arcoforge.testing.credentials import PASSWORD, TOKEN, USER
from arcoforge.testing.httpserver import Faults, FileServer, urls_on
from arcoforge.testing.recipes import simple_recipe

ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")


@pytest.fixture
def state(tmp_path, monkeypatch) -> Path:
    """A state folder of this test's own."""
    monkeypatch.setenv("ARCOFORGE_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state" / "runs"


def records(target: Path, state: Path) -> list[dict]:
    """The one record of a bake, read from beside its output and from the state folder."""
    beside = sorted((target / RUNS_FOLDER).glob("*.json"))
    local = sorted(state.glob("*.json"))
    assert [p.name for p in beside] == [p.name for p in local]
    assert [p.read_bytes() for p in beside] == [p.read_bytes() for p in local]
    return sorted((json.loads(p.read_text()) for p in local), key=lambda r: r["started"])


def test_state_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("ARCOFORGE_STATE_DIR")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert state_dir() == tmp_path / "xdg" / "arcoforge" / "runs"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert state_dir() == Path.home() / ".local/state/arcoforge/runs"
    monkeypatch.setenv("ARCOFORGE_STATE_DIR", str(tmp_path / "mine"))
    assert state_dir() == tmp_path / "mine" / "runs"


def test_successful_bake_is_recorded(small_archive, tmp_path, state):
    target = tmp_path / "out"
    context = RunContext("sst-daily", "/feedstocks/sst", ("arcoforge", "bake", "sst"))
    result = bake(simple_recipe(small_archive), target, workers=2, run=context)
    out, src = assert_same_as_sources(result.url, small_archive)
    [record] = records(target, state)
    assert ID.match(record["id"])
    assert record["status"] == "succeeded"
    assert record["recipe"] == "sst-daily" and record["feedstock"] == "/feedstocks/sst"
    assert record["args"] == ["arcoforge", "bake", "sst"]
    assert record["store"] == "out.zarr" and record["target"] == result.url
    assert record["inputs"] == {
        "count": len(small_archive),
        "bytes": sum(p.stat().st_size for p in small_archive),
        "first": str(small_archive[0]),
        "last": str(small_archive[-1]),
    }
    assert record["outputs"] == [
        {
            "url": result.url,
            "dims": dict(out.sizes),
            "chunks": {"time": 3, "lat": 18, "lon": 36},
            "bytes_stored": stored_bytes(result.url),
        }
    ]
    assert list(record["stage_seconds"]) == ["prepare", "scan", "write", "publish"]
    assert 0 < sum(record["stage_seconds"].values()) <= record["seconds"]
    assert record["retries"] == 0 and record["failures"] == []
    assert record["validation"]["inputs_compared"] == 2
    assert record["versions"]["xarray"] == xr.__version__
    assert {"python", "arcoforge", "zarr", "numpy", "numcodecs", "fsspec"} <= set(
        record["versions"]
    )
    assert record["started"] <= record["ended"]
    assert record["by"] == runner()  # None unless ARCOFORGE_RUN_BY or GitHub Actions
    assert set(src.data_vars) == {"sst", "anom", "err", "ice"}


def test_who_ran_a_bake_is_named_by_the_environment(monkeypatch):
    for name in ("ARCOFORGE_RUN_BY", "GITHUB_ACTIONS", "GITHUB_ACTOR"):
        monkeypatch.delenv(name, raising=False)
    assert runner() is None  # never the login or host name on its own
    monkeypatch.setenv("GITHUB_ACTOR", "octocat")
    assert runner() is None  # not in Actions
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    assert runner() == "octocat (GitHub Actions)"
    monkeypatch.setenv("ARCOFORGE_RUN_BY", "the example bakery")
    assert runner() == "the example bakery"


def test_versions_are_those_of_the_installed_distributions():
    """Read from the dist-info folders' names: the same as importlib.metadata's."""
    recorded = versions()
    for name in LIBRARIES:
        try:
            expected = metadata.version(name)
        except metadata.PackageNotFoundError:
            assert name not in recorded, name
        else:
            assert recorded.get(name) == expected, name
    assert recorded["python"] == platform.python_version()


def test_up_to_date_bake_is_recorded_too(small_archive, tmp_path, state):
    recipe = simple_recipe(small_archive)
    bake(recipe, tmp_path / "out", workers=1)
    again = bake(recipe, tmp_path / "out", workers=1)
    first, second = records(tmp_path / "out", state)
    assert first["started"] < second["started"] and first["id"] != second["id"]
    assert second["status"] == "succeeded" and second["stats"] == {"up_to_date": True}
    assert second["outputs"][0]["dims"] == again.dims


def test_failed_bake_is_recorded(small_archive, tmp_path, state):
    missing = tmp_path / "src" / "gone.nc"
    with pytest.raises(SourceError) as info:
        bake(simple_recipe([*small_archive, missing]), tmp_path / "out", workers=2)
    [record] = records(tmp_path / "out", state)
    assert record["status"] == "failed"
    assert record["failures"] == [f"during scan: {info.value}"]
    assert str(missing) in record["failures"][0] and "not found" in record["failures"][0]
    assert record["inputs"]["count"] == len(small_archive) + 1
    assert record["inputs"]["last"] == str(missing)
    assert record["outputs"] == [] and record["ended"] is not None
    assert "prepare" in record["stage_seconds"] and "scan" in record["stage_seconds"]


class InterruptDuring(Reporter):
    """Acts as a user pressing Ctrl-C once ``stage`` is under way."""

    def __init__(self, stage: str):
        self.stage = stage

    def advanced(self, name: str) -> None:
        if name == self.stage:
            raise KeyboardInterrupt


def test_interrupted_bake_is_recorded(small_archive, tmp_path, state):
    with pytest.raises(KeyboardInterrupt):
        bake(
            simple_recipe(small_archive),
            tmp_path / "out",
            workers=1,
            reporter=InterruptDuring("write"),
        )
    [record] = records(tmp_path / "out", state)
    assert record["status"] == "interrupted"
    assert record["failures"] == ["during write: interrupted (KeyboardInterrupt)"]
    assert list(record["stage_seconds"]) == ["prepare", "scan", "write"]
    # the next bake resumes, and is recorded on its own
    result = bake(simple_recipe(small_archive), tmp_path / "out", workers=1)
    assert_same_as_sources(result.url, small_archive)
    statuses = [r["status"] for r in records(tmp_path / "out", state)]
    assert statuses == ["interrupted", "succeeded"]


def test_running_bake_is_recorded_as_running(small_archive, tmp_path, state):
    seen = []

    class Peek(Reporter):
        def stage_started(self, name, total, description):
            if name == "write":
                seen.extend(records(tmp_path / "out", state))

    bake(simple_recipe(small_archive), tmp_path / "out", workers=1, reporter=Peek())
    [running] = seen
    assert running["status"] == "running" and running["ended"] is None
    [done] = records(tmp_path / "out", state)
    assert done["id"] == running["id"] and done["status"] == "succeeded"


def test_records_hold_no_secrets(small_archive, tmp_path, state):
    server = FileServer(small_archive[0].parent, token=TOKEN, auth=(USER, PASSWORD))
    with server:
        urls = urls_on(server, small_archive)
        missing = f"{server.url}/missing.nc"
        recipe = simple_recipe(
            urls,
            query_string_secrets={"token": TOKEN},
            fsspec_open_kwargs={"username": USER, "password": PASSWORD},
        )
        args = ("arcoforge", "bake", f"--token={TOKEN}", f"http://{USER}:{PASSWORD}@host/x.nc")
        result = bake(recipe, tmp_path / "out", workers=2, run=RunContext(args=args))
        # a failed bake: its error names the input URL, with the secrets in the request
        with pytest.raises(SourceError):
            bake(
                simple_recipe(
                    [*urls, missing],
                    "other.zarr",
                    query_string_secrets={"token": TOKEN},
                    fsspec_open_kwargs={"username": USER, "password": PASSWORD},
                ),
                tmp_path / "out",
                workers=1,
                run=RunContext(args=args),
            )
    assert_same_as_sources(result.url, small_archive)
    done, failed = records(tmp_path / "out", state)
    assert (done["status"], failed["status"]) == ("succeeded", "failed")
    assert done["args"][2:] == ["--token=***", f"http://{USER}:***@host/x.nc"]
    assert missing in failed["failures"][0]
    for folder in (tmp_path / "out", state):
        assert files_containing(folder, TOKEN.encode()) == []
        assert files_containing(folder, PASSWORD.encode()) == []


def test_download_retries_are_counted(small_archive, tmp_path, state):
    faults = Faults(error_rate=0.5, max_faults_per_path=2, seed=1)
    with FileServer(small_archive[0].parent, faults=faults) as server:
        result = bake(simple_recipe(urls_on(server, small_archive)), tmp_path / "out", workers=2)
        injected = sum(server.faults_by_path().values())
    assert_same_as_sources(result.url, small_archive)
    [record] = records(tmp_path / "out", state)
    # one retry per failed attempt; an attempt may meet two faults (fsspec asks for the size
    # with HEAD, then with GET)
    assert 0 < record["retries"] <= injected


def test_ctrl_c_of_the_command_is_recorded_as_interrupted(tmp_path, state):
    ok(arcoforge("init", NAME, cwd=tmp_path))
    feedstock = tmp_path / NAME
    # every request stalls for 5 s, so the bake is still scanning when Ctrl-C comes
    with FileServer(feedstock / "sample-data", faults=Faults(stall_seconds=5)) as server:
        recipe = feedstock / "recipe.py"
        local = '(HERE / "sample-data" / f"oisst-avhrr-v02r01.{time:%Y%m%d}.nc").as_uri()'
        remote = f'f"{server.url}/oisst-avhrr-v02r01.{{time:%Y%m%d}}.nc"'
        recipe.write_text(recipe.read_text().replace(local, remote))
        proc = subprocess.Popen(
            [sys.executable, "-m", "arcoforge.cli", "bake", NAME, "--target-root", "out"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # a process group of its own, as in a terminal
        )
        try:
            deadline = time.monotonic() + 60
            while not server.requests and time.monotonic() < deadline:  # scanning
                time.sleep(0.05)
            [running] = [json.loads(p.read_text()) for p in state.glob("*.json")]
            assert running["status"] == "running"
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the workers too
            _, stderr = proc.communicate(timeout=30)
        finally:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "interrupted"
    [record] = records(tmp_path / "out", state)
    assert record["id"] == running["id"] and record["status"] == "interrupted"
    assert record["failures"] == ["during scan: interrupted (KeyboardInterrupt)"]
    assert record["recipe"] == NAME and record["args"][:3] == ["arcoforge", "bake", NAME]


# -- the command ---------------------------------------------------------------------


def test_runs_command_lists_and_shows(small_archive, tmp_path, state):
    bake(simple_recipe(small_archive), tmp_path / "out", workers=1)
    with pytest.raises(SourceError):
        bake(simple_recipe([tmp_path / "nope.nc"], "bad.zarr"), tmp_path / "out", workers=1)
    newest, oldest = [r.id for r in list_runs()]

    listed = [
        json.loads(line)
        for line in ok(arcoforge("runs", "--json", cwd=tmp_path)).stdout.splitlines()
    ]
    assert [r["id"] for r in listed] == [newest, oldest]
    assert [r["status"] for r in listed] == ["failed", "succeeded"]
    limited = ok(arcoforge("runs", "--json", "--limit", "1", cwd=tmp_path)).stdout
    assert [json.loads(line)["id"] for line in limited.splitlines()] == [newest]

    table = ok(arcoforge("runs", cwd=tmp_path)).stdout
    assert table.index(newest) < table.index(oldest)
    assert "succeeded" in table and "failed" in table and str(len(small_archive)) in table

    shown = ok(arcoforge("runs", "show", oldest[:-3], "--json", cwd=tmp_path)).stdout
    assert json.loads(shown) == listed[1]
    text = ok(arcoforge("runs", "show", newest, cwd=tmp_path)).stdout
    assert "failed" in text and "nope.nc" in text and "bad.zarr" in text
    assert re.search(rf"\bby\s+\S*\s*{re.escape(runner() or '-')}", text), text

    line = error_line(arcoforge("runs", "show", "1999", cwd=tmp_path), rc=1)
    assert line == f"error: no run '1999' in {state}"
    line = error_line(arcoforge("runs", "show", "20", cwd=tmp_path), rc=1)
    assert "ambiguous" in line and "2 runs match" in line


def test_runs_command_with_no_runs(tmp_path, state):
    proc = ok(arcoforge("runs", "--json", cwd=tmp_path))
    assert proc.stdout == ""
