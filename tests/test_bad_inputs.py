"""Every kind of bad input, run through the real ``arcoforge`` command: one line on stderr
naming what is wrong, the right exit code, no traceback.

The table ``CASES`` is also the table of docs/bad-inputs.md (a test keeps them in sync).
Each case builds its own small feedstock (or config file, or target) with the helpers
below, runs ``python -m arcoforge.cli`` and compares the first line of stderr exactly;
``{tmp}``, ``{src}`` and ``{url}`` in the expected line stand for the case's folder, the
shared archive's folder and the loopback HTTP server's base URL.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from arcoforge.testing.archives import (
    oisst_dataset,
    write_corrupt_file,
    write_files,
    write_oisst_archive,
)
from arcoforge.testing.httpserver import Faults, FileServer

GRID = {"ny": 18, "nx": 36}
DOCS = Path(__file__).resolve().parents[1] / "docs" / "bad-inputs.md"
TIMEOUT = 120

META = """\
title: Sea surface temperature
description: Daily OISST-like files.
recipes:
  - id: sst
    object: "recipe:recipe"
provenance:
  providers:
    - name: A producer
      roles: [producer, licensor]
  license: CC-BY-4.0
maintainers:
  - name: A Maintainer
    github: a-maintainer
"""

RECIPE = """\
import pandas as pd

from arcoforge import ConcatDim, FilePattern, OpenURLWithFSSpec, OpenWithXarray, StoreToZarr

DATES = pd.date_range("1981-09-01", periods=4, freq="D")


def make_url(time):
    return f"BASE/oisst-avhrr-v02r01.{time:%Y%m%d}.nc"


pattern = FilePattern(make_url, ConcatDim("time", DATES, nitems_per_file=1), file_type="netcdf4")
recipe = (
    pattern
    | OpenURLWithFSSpec(retries=1, retry_delay=0.01)
    | OpenWithXarray()
    | StoreToZarr(store_name="sst.zarr", target_chunks={"time": 2})
)
"""


@dataclass
class World:
    """What a case sets up in: its own folder, the shared archive and its HTTP server."""

    tmp: Path
    src: Path
    url: str  # serves the archive
    private: str  # the same, behind basic auth
    slow: str  # the same, answering each request after a few seconds
    env: dict[str, str]

    def feedstock(
        self, base: str | None = None, edits: dict[str, str] | None = None, meta: str = META
    ) -> str:
        """Write the feedstock ``tmp/feed`` over ``base`` (the archive's folder by default),
        with each ``old: new`` of ``edits`` replaced in recipe.py; return its name."""
        folder = self.tmp / "feed"
        folder.mkdir(exist_ok=True)
        text = RECIPE.replace("BASE", base or str(self.src))
        for old, new in (edits or {}).items():
            assert old in text, old
            text = text.replace(old, new)
        (folder / "recipe.py").write_text(text)
        if meta is not None:
            (folder / "meta.yaml").write_text(meta)
        return "feed"

    def folder_of(self, paths: list[Path], name: str = "files") -> str:
        """Copy ``paths`` into ``tmp/NAME`` (named as they are) and return the folder."""
        folder = self.tmp / name
        folder.mkdir(exist_ok=True)
        for path in paths:
            shutil.copy(path, folder / path.name)
        return str(folder)

    def config(self, text: str) -> str:
        (self.tmp / "bake.yaml").write_text(text)
        return "bake.yaml"

    def bake(self, *args: str, feed: str | None = None) -> list[str]:
        return ["bake", feed or self.feedstock(), "--target-root", "out", "--workers", "1", *args]


def arcoforge(
    args: list[str], cwd: Path, env: dict[str, str], interrupt_after: float | None = None
) -> subprocess.CompletedProcess:
    """Run ``python -m arcoforge.cli ARGS`` in ``cwd``; with ``interrupt_after``, send it
    SIGINT after that many seconds, as Ctrl-C does."""
    command = [sys.executable, "-m", "arcoforge.cli", *args]
    if interrupt_after is None:
        return subprocess.run(
            command, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT
        )
    with subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        time.sleep(interrupt_after)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=TIMEOUT)
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


@dataclass(frozen=True)
class Case:
    """A kind of bad input: how to make it, the exit code and the first line of stderr."""

    kind: str
    category: str
    setup: Callable[[World], list[str]]
    rc: int
    first: str
    interrupt_after: float | None = None


# -- setups that need more than a line -------------------------------------------------


def meta_edit(old: str, new: str) -> Callable[[World], list[str]]:
    def setup(w: World) -> list[str]:
        assert old in META
        return ["lint", w.feedstock(meta=META.replace(old, new))]

    return setup


def recipe_edit(command: str, edits: dict[str, str]) -> Callable[[World], list[str]]:
    def setup(w: World) -> list[str]:
        feed = w.feedstock(edits=edits)
        return ["lint", feed] if command == "lint" else w.bake(feed=feed)

    return setup


def sources_with(w: World, extra: list[Path], keep: int = 4) -> str:
    """A folder with the first ``keep`` archive files and ``extra``; return it."""
    return w.folder_of(sorted(w.src.glob("*.nc"))[:keep] + extra)


def five_days(w: World, fifth: list[Path]) -> list[str]:
    """A bake of four archive days and ``fifth`` (named as day five)."""
    folder = sources_with(w, fifth)
    edits = {"periods=4": "periods=5"}
    return w.bake(feed=w.feedstock(base=folder, edits=edits))


def corrupt_day(w: World) -> list[str]:
    path = w.tmp / "bad" / "oisst-avhrr-v02r01.19810905.nc"
    return five_days(w, [write_corrupt_file(path)])


def other_grid(w: World) -> list[str]:
    ds = oisst_dataset(days=1, start="1981-09-05", ny=9, nx=18)
    return five_days(w, write_files(ds, w.tmp / "odd"))


def missing_variable(w: World) -> list[str]:
    ds = oisst_dataset(days=1, start="1981-09-05", variables=("sst", "ice"), **GRID)
    return five_days(w, write_files(ds, w.tmp / "odd"))


def other_dtype(w: World) -> list[str]:
    ds = oisst_dataset(days=1, start="1981-09-05", **GRID)
    ds["sst"] = ds.sst.astype("float64")
    ds["sst"].encoding = {}
    return five_days(w, write_files(ds, w.tmp / "odd"))


def overlapping_time(w: World) -> list[str]:
    ds = oisst_dataset(days=1, start="1981-09-04", **GRID)
    (path,) = write_files(ds, w.tmp / "odd")
    renamed = path.with_name("oisst-avhrr-v02r01.19810905.nc")
    path.rename(renamed)
    return five_days(w, [renamed])


def wrong_file_type(w: World) -> list[str]:
    edits = {'file_type="netcdf4"': 'file_type="grib"'}
    return w.bake(feed=w.feedstock(edits=edits))


def target_file(w: World) -> list[str]:
    (w.tmp / "out").write_text("a file, not a folder\n")
    return w.bake()


def served(w: World, path: str = "") -> str:
    return f"{w.url}{path}"


def baked_then(second: list[str]) -> Callable[[World], list[str]]:
    """Bake the first four days, then run ``second`` (with {feed} as the feedstock)."""

    def setup(w: World) -> list[str]:
        feed = w.feedstock()
        first = arcoforge(w.bake(feed=feed), w.tmp, w.env)
        assert first.returncode == 0, first.stderr
        return [a.replace("{feed}", feed) for a in second]

    return setup


def append_with(days: list[int]) -> Callable[[World], list[str]]:
    """Bake days 1-4, then append a feedstock of the given days (1-based)."""

    def setup(w: World) -> list[str]:
        feed = w.feedstock()
        assert arcoforge(w.bake(feed=feed), w.tmp, w.env).returncode == 0
        later = write_oisst_archive(w.tmp / "more", days=8, **GRID)
        folder = w.folder_of([later[d - 1] for d in days], "append")
        listing = ", ".join(repr(f"{folder}/{later[d - 1].name}") for d in days)
        text = RECIPE.replace("BASE", folder).replace(
            'FilePattern(make_url, ConcatDim("time", DATES, nitems_per_file=1), '
            'file_type="netcdf4")',
            f"pattern_from_file_sequence([{listing}], 'time', nitems_per_file=1)",
        )
        text = text.replace("ConcatDim, FilePattern,", "pattern_from_file_sequence,")
        (w.tmp / feed / "recipe.py").write_text(text)
        return w.bake("--append", feed=feed)

    return setup


def no_recipe_py(w: World) -> list[str]:
    (w.tmp / "feed").mkdir()
    (w.tmp / "feed" / "meta.yaml").write_text(META)
    return ["lint", "feed"]


CASES = [
    # meta.yaml
    Case(
        "meta.yaml missing",
        "meta.yaml",
        lambda w: ["lint", w.feedstock(meta=None)],
        1,
        "error: feed/meta.yaml: missing (a feedstock needs meta.yaml and recipe.py)",
    ),
    Case(
        "required field missing",
        "meta.yaml",
        meta_edit("  license: CC-BY-4.0\n", ""),
        1,
        "error: feed/meta.yaml: provenance.license: Field required",
    ),
    Case(
        "not valid YAML",
        "meta.yaml",
        meta_edit("    object:", "   object:"),
        1,
        "error: feed/meta.yaml line 5: not valid YAML: mapping values are not allowed here",
    ),
    Case(
        "unknown field",
        "meta.yaml",
        meta_edit("title:", "titel: x\ntitle:"),
        1,
        "error: feed/meta.yaml: titel: Extra inputs are not permitted",
    ),
    Case(
        "recipe id used twice",
        "meta.yaml",
        meta_edit(
            '    object: "recipe:recipe"\n',
            '    object: "recipe:recipe"\n  - id: sst\n    object: "recipe:recipe"\n',
        ),
        1,
        "error: feed/meta.yaml: recipes: Value error, recipe id 'sst' is used twice",
    ),
    Case(
        "object names nothing in recipe.py",
        "meta.yaml",
        meta_edit('"recipe:recipe"', '"recipe:no_such"'),
        1,
        "error: feed/recipe.py: no object 'no_such' (named by recipe 'sst')",
    ),
    Case(
        "--recipe names no recipe",
        "meta.yaml",
        lambda w: w.bake("--recipe", "ice"),
        1,
        "error: feed: no recipe 'ice' in meta.yaml (ids: sst)",
    ),
    # recipe.py
    Case(
        "recipe.py missing",
        "recipe.py",
        no_recipe_py,
        1,
        "error: feed/recipe.py: missing",
    ),
    Case(
        "syntax error",
        "recipe.py",
        recipe_edit("lint", {"def make_url(time):": "def make_url(time:"}),
        1,
        "error: feed/recipe.py line 8: SyntaxError: '(' was never closed (recipe.py, line 8)",
    ),
    Case(
        "module that is not installed",
        "recipe.py",
        recipe_edit("lint", {"import pandas as pd": "import pandas as pd\nimport no_such_module"}),
        1,
        "error: feed/recipe.py line 2: ModuleNotFoundError: No module named 'no_such_module'",
    ),
    Case(
        "object is not a recipe",
        "recipe.py",
        recipe_edit("lint", {"recipe = (\n    pattern": "recipe = 3\nrecipe2 = (\n    pattern"}),
        1,
        "error: feed/recipe.py: recipe is a int, not a recipe (pattern | OpenURLWithFSSpec() "
        "| OpenWithXarray() | StoreToZarr(...))",
    ),
    Case(
        "no writer step",
        "recipe.py",
        recipe_edit(
            "lint", {'    | StoreToZarr(store_name="sst.zarr", target_chunks={"time": 2})\n': ""}
        ),
        1,
        "error: feed/recipe.py: recipe 'sst': the recipe has no StoreToZarr step; end it with "
        "| StoreToZarr(...)",
    ),
    Case(
        "step after the writer",
        "recipe.py",
        recipe_edit("lint", {'{"time": 2})\n': '{"time": 2})\n    | OpenWithXarray()\n'}),
        1,
        "error: feed/recipe.py line 13: StoreToZarr must be the last step of a recipe",
    ),
    Case(
        "store_name is a path",
        "recipe.py",
        recipe_edit("lint", {'store_name="sst.zarr"': 'store_name="a/sst.zarr"'}),
        1,
        "error: feed/recipe.py line 17: StoreToZarr: store_name 'a/sst.zarr' must be one name",
    ),
    # patterns
    Case(
        "format function raises (lint)",
        "patterns",
        recipe_edit("lint", {"return f": "return foo + f"}),
        1,
        "error: {tmp}/feed/recipe.py:9: make_url(time=Timestamp('1981-09-01 00:00:00')) "
        "raised NameError: name 'foo' is not defined",
    ),
    Case(
        "format function raises (bake)",
        "patterns",
        recipe_edit("bake", {"return f": "return foo + f"}),
        1,
        "error: {tmp}/feed/recipe.py:9: make_url(time=Timestamp('1981-09-01 00:00:00')) "
        "raised NameError: name 'foo' is not defined",
    ),
    Case(
        "format function returns no URL",
        "patterns",
        recipe_edit("lint", {"return f": "f"}),
        1,
        "error: {tmp}/feed/recipe.py:8: make_url(time=Timestamp('1981-09-01 00:00:00')) "
        "returned None, not a URL",
    ),
    Case(
        "concat dim without keys",
        "patterns",
        recipe_edit("lint", {"periods=4": "periods=0"}),
        1,
        "error: feed/recipe.py line 12: ValueError: ConcatDim 'time' has no keys",
    ),
    Case(
        "unknown file_type",
        "patterns",
        recipe_edit("lint", {'file_type="netcdf4"': 'file_type="netcdf"'}),
        1,
        "error: feed/recipe.py line 12: ValueError: file_type 'netcdf' is not one of netcdf3, "
        "netcdf4, hdf5, zarr, grib, unknown",
    ),
    # sources
    Case(
        "local file missing",
        "sources",
        recipe_edit("bake", {"periods=4": "periods=5"}),
        1,
        "error: {src}/oisst-avhrr-v02r01.19810905.nc: not found",
    ),
    Case(
        "HTTP 404",
        "sources",
        lambda w: w.bake(feed=w.feedstock(base=w.url + "/nowhere")),
        1,
        "error: {url}/nowhere/oisst-avhrr-v02r01.19810901.nc: not found (HTTP 404)",
    ),
    Case(
        "HTTP 401",
        "sources",
        lambda w: w.bake(feed=w.feedstock(base=w.private)),
        1,
        "error: {private}/oisst-avhrr-v02r01.19810901.nc: HTTP 401",
    ),
    Case(
        "unknown host (DNS)",
        "sources",
        lambda w: w.bake(feed=w.feedstock(base="http://no-such-host.invalid/data")),
        1,
        "error: http://no-such-host.invalid/data/oisst-avhrr-v02r01.19810901.nc: x",
    ),
    # formats
    Case("corrupt netCDF", "formats", corrupt_day, 1, "error: x"),
    Case("wrong file_type", "formats", wrong_file_type, 1, "error: x"),
    # schema mismatches
    Case("other grid", "schema", other_grid, 1, "error: x"),
    Case("missing variable", "schema", missing_variable, 1, "error: x"),
    Case("other dtype", "schema", other_dtype, 1, "error: x"),
    Case("overlapping time", "schema", overlapping_time, 1, "error: x"),
    Case(
        "more steps per file than nitems_per_file",
        "schema",
        recipe_edit("bake", {"nitems_per_file=1": "nitems_per_file=2"}),
        1,
        "error: x",
    ),
    # chunking
    Case(
        "target_chunks names an unknown dim",
        "chunking",
        recipe_edit("bake", {'{"time": 2}': '{"time": 2, "depth": 3}'}),
        1,
        "error: x",
    ),
    Case(
        "target_chunks of zero",
        "chunking",
        recipe_edit("bake", {'{"time": 2}': '{"time": 0}'}),
        1,
        "error: x",
    ),
    Case(
        "target_chunks size not understood",
        "chunking",
        recipe_edit("bake", {'{"time": 2}': '"lots"'}),
        1,
        "error: x",
    ),
    # targets
    Case("target root is a file", "targets", target_file, 1, "error: x"),
    Case(
        "unknown protocol in --target-root",
        "targets",
        lambda w: ["bake", w.feedstock(), "--target-root", "foo://x"],
        2,
        "error: x",
    ),
    Case(
        "--storage-option on a local target",
        "targets",
        lambda w: w.bake("--storage-option", "anon=true"),
        2,
        "error: x",
    ),
    # flags
    Case("--append with --force", "flags", lambda w: w.bake("--append", "--force"), 2, "error: x"),
    Case(
        "--append with --retry-failed",
        "flags",
        lambda w: w.bake("--append", "--retry-failed"),
        2,
        "error: x",
    ),
    Case(
        "--force with --retry-failed",
        "flags",
        lambda w: w.bake("--force", "--retry-failed"),
        2,
        "error: x",
    ),
    Case(
        "--dask-scheduler without --engine dask",
        "flags",
        lambda w: w.bake("--dask-scheduler", "tcp://127.0.0.1:1"),
        2,
        "error: x",
    ),
    Case("no --target-root", "flags", lambda w: ["bake", w.feedstock()], 2, "error: x"),
    Case("--workers 0", "flags", lambda w: w.bake("--workers", "0"), 2, "error: x"),
    Case(
        "--storage-option without =",
        "flags",
        lambda w: w.bake("--storage-option", "anon"),
        2,
        "error: x",
    ),
    Case("unknown --engine", "flags", lambda w: w.bake("--engine", "ray"), 2, "error: x"),
    # config
    Case(
        "unknown key",
        "config",
        lambda w: w.bake("--config", w.config("wrokers: 2\n")),
        1,
        "error: x",
    ),
    Case(
        "not valid YAML",
        "config",
        lambda w: w.bake("--config", w.config("workers: [2\n")),
        1,
        "error: x",
    ),
    Case(
        "wrong type",
        "config",
        lambda w: w.bake("--config", w.config("workers: many\n")),
        1,
        "error: x",
    ),
    Case(
        "wrong type in an engine section",
        "config",
        lambda w: w.bake("--config", w.config("dask:\n  threads_per_worker: 0\n")),
        1,
        "error: x",
    ),
    Case(
        "not a mapping",
        "config",
        lambda w: w.bake("--config", w.config("- workers\n")),
        1,
        "error: x",
    ),
    Case(
        "config file missing",
        "config",
        lambda w: w.bake("--config", "nowhere.yaml"),
        1,
        "error: x",
    ),
    # append
    Case("gap", "append", append_with([6]), 1, "error: x"),
    Case("overlap", "append", append_with([4, 5]), 1, "error: x"),
    Case("out of order", "append", append_with([6, 5]), 1, "error: x"),
    # validate
    Case(
        "not a store",
        "validate",
        lambda w: ["validate", str(w.src)],
        1,
        "error: x",
    ),
    Case(
        "store missing",
        "validate",
        lambda w: ["validate", "nowhere.zarr"],
        1,
        "error: x",
    ),
    # interrupts
    Case(
        "Ctrl-C during a bake",
        "interrupts",
        lambda w: w.bake(feed=w.feedstock(base=w.slow)),
        130,
        "interrupted",
        interrupt_after=4.0,
    ),
]


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("src")
    write_oisst_archive(folder, days=4, **GRID)
    return folder


@pytest.fixture(scope="module")
def servers(archive):
    """The archive served plainly, behind basic auth and slowly."""
    with (
        FileServer(archive) as plain,
        FileServer(archive, auth=("reader", "s3cret")) as private,
        FileServer(archive, faults=Faults(stall_seconds=5)) as slow,
    ):
        yield plain, private, slow


def world(tmp_path: Path, archive: Path, servers) -> World:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    urls = [server.url for server in servers]
    return World(tmp_path, archive, *urls, env)


def error_line(stderr: str) -> str:
    """The line of ``stderr`` that says what went wrong, checked to be the only one and
    the last: ``error: ...`` (or ``interrupted``). Lines before it are progress, cleared
    bars or ``warning:`` lines of retries on the way."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ") or line == "interrupted"]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    return errors[0]


def expected(case: Case, w: World) -> str:
    """The case's first line with its placeholders filled in."""
    line = case.first
    for name in ("tmp", "src", "url", "private"):
        line = line.replace("{" + name + "}", str(getattr(w, name)))
    return line


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.category}: {c.kind}")
def test_bad_input_gives_its_line(case, tmp_path, archive, servers):
    w = world(tmp_path, archive, servers)
    args = case.setup(w)
    proc = arcoforge(args, tmp_path, w.env, case.interrupt_after)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert (proc.returncode, error_line(proc.stderr)) == (case.rc, expected(case, w))
