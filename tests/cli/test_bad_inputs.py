"""Every kind of bad input, run through the real ``arcoforge`` command: one line on stderr
naming what is wrong, the right exit code, no traceback.

The table ``CASES`` is also the table of docs/bad-inputs.md (a test keeps them in sync).
Each case builds its own small feedstock (or config file, or target) with the helpers
below, runs ``python -m arcoforge.cli`` and compares its exit code and its error line
exactly: the one ``error:`` line (``interrupted`` for Ctrl-C), which must be the last line
of stderr; lines before it can only be progress and ``warning:`` lines. ``{tmp}``,
``{src}``, ``{url}`` and ``{private}`` in the expected line stand for the case's folder,
the shared archive's folder and the base URLs of the loopback HTTP servers.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import xarray as xr

from arcoforge.testing.archives import (
    oisst_dataset,
    write_corrupt_file,
    write_files,
    write_oisst_archive,
)
from arcoforge.testing.httpserver import Faults, FileServer

GRID = {"ny": 18, "nx": 36}
DOCS = Path(__file__).resolve().parents[2] / "docs" / "bad-inputs.md"
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
    slow_requests: list[str]  # the requests the slow server has had
    env: dict[str, str]
    cleanups: list[Callable[[], object]] = field(default_factory=list)

    def feedstock(
        self,
        base: str | None = None,
        edits: dict[str, str] | None = None,
        meta: str | None = META,
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
    args: list[str],
    cwd: Path,
    env: dict[str, str],
    interrupt_when: Callable[[], bool] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``python -m arcoforge.cli ARGS`` in ``cwd``; with ``interrupt_when``, send it
    SIGINT, as Ctrl-C does, once that says the run is under way."""
    command = [sys.executable, "-m", "arcoforge.cli", *args]
    if interrupt_when is None:
        return subprocess.run(
            command, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT
        )
    with subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        deadline = time.monotonic() + TIMEOUT
        while not interrupt_when() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=TIMEOUT)
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


@dataclass(frozen=True)
class Case:
    """A kind of bad input: how to make it (``setup`` returns the command's arguments),
    the exit code and the error line."""

    kind: str
    category: str
    setup: Callable[[World], list[str]]
    rc: int
    first: str
    interrupted: bool = False  # Ctrl-C once the slow server has a request
    without: str | None = None  # modules made unimportable, as if not installed


# -- setups --------------------------------------------------------------------------


def meta_edit(old: str, new: str) -> Callable[[World], list[str]]:
    """``lint`` of a feedstock whose meta.yaml has ``old`` replaced by ``new``."""

    def setup(w: World) -> list[str]:
        assert old in META
        return ["lint", w.feedstock(meta=META.replace(old, new))]

    return setup


def recipe_edit(command: str, edits: dict[str, str]) -> Callable[[World], list[str]]:
    """``lint`` or ``bake`` of a feedstock whose recipe.py has ``edits``."""

    def setup(w: World) -> list[str]:
        feed = w.feedstock(edits=edits)
        return ["lint", feed] if command == "lint" else w.bake(feed=feed)

    return setup


def no_recipe_py(w: World) -> list[str]:
    (w.tmp / "feed").mkdir()
    (w.tmp / "feed" / "meta.yaml").write_text(META)
    return ["lint", "feed"]


def five_days(w: World, fifth: Path) -> list[str]:
    """A bake of the four archive days and ``fifth``, copied into ``tmp/files`` as the
    file of day five."""
    folder = w.folder_of(sorted(w.src.glob("*.nc")))
    shutil.copy(fifth, Path(folder) / "oisst-avhrr-v02r01.19810905.nc")
    return w.bake(feed=w.feedstock(base=folder, edits={"periods=4": "periods=5"}))


def fifth_day(w: World, **kwargs) -> Path:
    """Day five written as ``oisst_dataset(**kwargs)`` (the archive's grid by default)."""
    ds = oisst_dataset(days=1, **{"start": "1981-09-05", **GRID, **kwargs})
    return write_files(ds, w.tmp / "odd")[0]


def other_dtype(w: World) -> list[str]:
    """Day five with ``sst`` stored as plain int32, not as packed floats."""
    with xr.open_dataset(fifth_day(w)) as ds:
        odd = ds.load()
    odd["sst"] = odd.sst.astype("int32")
    odd["sst"].encoding = {}
    path = w.tmp / "odd" / "int.nc"
    odd.to_netcdf(path)
    return five_days(w, path)


def two_steps(w: World) -> Path:
    """Days five and six in one file."""
    (path,) = write_oisst_archive(
        w.tmp / "two", days=2, start="1981-09-05", steps_per_file=2, **GRID
    )
    return path


def target_file(w: World) -> list[str]:
    (w.tmp / "out").write_text("a file, not a folder\n")
    return w.bake()


def reference_feedstock(w: World) -> str:
    """The feedstock writing Parquet references instead of a Zarr store."""
    return w.feedstock(
        edits={
            "OpenWithXarray, StoreToZarr": "OpenWithKerchunk, WriteCombinedReference",
            "| OpenWithXarray()": "| OpenWithKerchunk()",
            'StoreToZarr(store_name="sst.zarr", target_chunks={"time": 2})': (
                'WriteCombinedReference(store_name="sst", output_file_name="ref.parquet")'
            ),
        }
    )


def full_disk(w: World) -> list[str]:
    """A decoded bake onto a 1 MB tmpfs: the template fits, the chunks do not."""
    disk = w.tmp / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    w.cleanups.append(lambda: subprocess.run(["umount", str(disk)], check=True))
    big = write_oisst_archive(w.tmp / "big", days=4, ny=180, nx=360)
    writer = 'StoreToZarr(store_name="sst.zarr", target_chunks={"time": 2})'
    decoded = writer.replace(")", ", decode=True)")  # float32: more than the disk holds
    feed = w.feedstock(base=str(big[0].parent), edits={writer: decoded})
    return ["bake", feed, "--target-root", str(disk / "out"), "--workers", "1"]


def baked(w: World) -> str:
    """Bake the four archive days into ``tmp/out``; return the feedstock."""
    feed = w.feedstock()
    first = arcoforge(w.bake(feed=feed), w.tmp, w.env)
    assert first.returncode == 0, first.stderr
    return feed


def append_of(more: Callable[[World], list[str]]) -> Callable[[World], list[str]]:
    """Bake the four archive days, then append the files ``more`` lists after them."""

    def setup(w: World) -> list[str]:
        feed = baked(w)
        files = [str(p) for p in sorted(w.src.glob("*.nc"))] + more(w)
        text = RECIPE.replace(
            'FilePattern(make_url, ConcatDim("time", DATES, nitems_per_file=1), '
            'file_type="netcdf4")',
            f"pattern_from_file_sequence({files!r}, 'time', nitems_per_file=1)",
        ).replace("ConcatDim, FilePattern,", "pattern_from_file_sequence,")
        (w.tmp / feed / "recipe.py").write_text(text)
        return w.bake("--append", feed=feed)

    return setup


def later_days(*days: int) -> Callable[[World], list[str]]:
    """Files of the given days (1-based) of a longer run of the same archive."""

    def files(w: World) -> list[str]:
        later = write_oisst_archive(w.tmp / "more", days=max(days), **GRID)
        return [str(later[d - 1]) for d in days]

    return files


def dropping_the_first(w: World) -> list[str]:
    """A recipe that lists days 2-6: the store's day 1 is not among them."""
    feed = baked(w)
    later = write_oisst_archive(w.tmp / "more", days=6, **GRID)
    files = [str(p) for p in later[1:]]
    text = RECIPE.replace(
        'FilePattern(make_url, ConcatDim("time", DATES, nitems_per_file=1), file_type="netcdf4")',
        f"pattern_from_file_sequence({files!r}, 'time', nitems_per_file=1)",
    ).replace("ConcatDim, FilePattern,", "pattern_from_file_sequence,")
    (w.tmp / feed / "recipe.py").write_text(text)
    return w.bake("--append", feed=feed)


def validate_bad_chunk(w: World) -> list[str]:
    """A baked store one chunk of which was overwritten with garbage."""
    baked(w)
    chunk = w.tmp / "out" / "sst.zarr" / "sst" / "c" / "1" / "0" / "0"
    chunk.write_bytes(b"not a compressed chunk")
    return ["validate", "out/sst.zarr"]


def served_bake(base: Callable[[World], str], retries: int = 1) -> Callable[[World], list[str]]:
    """A bake of the archive under the URL ``base(w)``, with ``retries`` retries."""

    def setup(w: World) -> list[str]:
        edits = {"retries=1": f"retries={retries}"}
        return w.bake(feed=w.feedstock(base=base(w), edits=edits))

    return setup


def config(text: str) -> Callable[[World], list[str]]:
    return lambda w: w.bake("--config", w.config(text))


LOCATION = "{tmp}/feed/recipe.py"
CALL = "make_url(time=Timestamp('1981-09-01 00:00:00'))"
FILES = "{tmp}/files/oisst-avhrr-v02r01.1981090"

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
        "error: feed/meta.yaml line 5: not valid YAML: expected <block end>, but found "
        "'<block mapping start>'",
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
    Case("recipe.py missing", "recipe.py", no_recipe_py, 1, "error: feed/recipe.py: missing"),
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
        "error: feed/recipe.py line 14: StoreToZarr must be the last step of a recipe",
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
        f"error: {LOCATION} line 9: {CALL} raised NameError: name 'foo' is not defined",
    ),
    Case(
        "format function raises (bake)",
        "patterns",
        recipe_edit("bake", {"return f": "return foo + f"}),
        1,
        f"error: {LOCATION} line 9: {CALL} raised NameError: name 'foo' is not defined",
    ),
    Case(
        "format function returns no URL",
        "patterns",
        recipe_edit("lint", {"return f": "f"}),
        1,
        f"error: {LOCATION} line 8: {CALL} returned None, not a URL",
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
        "error: {src}/oisst-avhrr-v02r01.19810905.nc: file not found",
    ),
    Case(
        "HTTP 404",
        "sources",
        served_bake(lambda w: w.url + "/nowhere"),
        1,
        "error: {url}/nowhere/oisst-avhrr-v02r01.19810901.nc: HTTP 404 Not Found",
    ),
    Case(
        "HTTP 401",
        "sources",
        served_bake(lambda w: w.private),
        1,
        "error: {private}/oisst-avhrr-v02r01.19810901.nc: HTTP 401 Unauthorized "
        "(check credentials)",
    ),
    Case(
        "unknown host (DNS)",
        "sources",
        served_bake(lambda w: "http://no-such-host.invalid/data", retries=0),
        1,
        "error: http://no-such-host.invalid/data/oisst-avhrr-v02r01.19810901.nc: "
        "host no-such-host.invalid does not resolve {resolver}",
    ),
    # formats
    Case(
        "corrupt netCDF",
        "formats",
        lambda w: five_days(w, write_corrupt_file(w.tmp / "bad.nc")),
        1,
        f"error: {FILES}5.nc: cannot open as netcdf4: OSError: [Errno -101] NetCDF: HDF error: "
        f"'{FILES}5.nc'",
    ),
    Case(
        "netCDF read as GRIB (wrong file_type)",
        "formats",
        recipe_edit("bake", {'file_type="netcdf4"': 'file_type="grib"'}),
        1,
        "error: {src}/oisst-avhrr-v02r01.19810901.nc: cannot open as grib: EOFError: No valid "
        "message found: '{src}/oisst-avhrr-v02r01.19810901.nc'",
    ),
    # schema mismatches
    Case(
        "other grid",
        "schema",
        lambda w: five_days(w, fifth_day(w, ny=9, nx=18)),
        1,
        f"error: {FILES}5.nc does not match {FILES}1.nc: different grid: 'lat' has 9 points, "
        "not 18",
    ),
    Case(
        "missing variable",
        "schema",
        lambda w: five_days(w, fifth_day(w, variables=("sst", "ice"))),
        1,
        f"error: {FILES}5.nc does not match {FILES}1.nc: variable 'anom', 'err' is missing",
    ),
    Case(
        "other dtype",
        "schema",
        other_dtype,
        1,
        f"error: {FILES}5.nc does not match {FILES}1.nc: 'sst' has dtype int32, not float32",
    ),
    Case(
        "overlapping time",
        "schema",
        lambda w: five_days(w, fifth_day(w, start="1981-09-04")),
        1,
        f"error: time 1981-09-04T12:00:00.000000000 in {FILES}5.nc repeats time "
        f"1981-09-04T12:00:00.000000000 in {FILES}4.nc: inputs must be sorted along 'time' "
        "without duplicates or overlaps",
    ),
    Case(
        "more steps in a file than nitems_per_file",
        "schema",
        lambda w: five_days(w, two_steps(w)),
        1,
        f"error: {FILES}5.nc has 2 steps along 'time', the pattern says nitems_per_file=1",
    ),
    # chunking
    Case(
        "target_chunks names an unknown dim",
        "chunking",
        recipe_edit("bake", {'{"time": 2}': '{"time": 2, "depth": 3}'}),
        1,
        "error: target_chunks: dim 'depth' is not in the dataset (dims: time, lat, lon)",
    ),
    Case(
        "target_chunks of zero",
        "chunking",
        recipe_edit("bake", {'{"time": 2}': '{"time": 0}'}),
        1,
        "error: target_chunks: time=0 must be a positive integer",
    ),
    Case(
        "target_chunks size not understood",
        "chunking",
        recipe_edit("bake", {'{"time": 2}': '"lots"'}),
        1,
        "error: target_chunks: 'lots' is not a size such as '100MB'",
    ),
    # targets
    Case(
        "target root is a file",
        "targets",
        target_file,
        1,
        "error: target root {tmp}/out: a file, not a folder",
    ),
    Case(
        "unknown protocol in --target-root",
        "targets",
        lambda w: ["bake", w.feedstock(), "--target-root", "foo://x"],
        2,
        "error: --target-root foo://x: unknown protocol 'foo' (a folder, or a URL such as "
        "s3://bucket/prefix or icechunk://PATH)",
    ),
    Case(
        "--storage-option on a local target",
        "targets",
        lambda w: w.bake("--storage-option", "anon=true"),
        2,
        "error: --storage-option anon=true: unused, the target root out is local",
    ),
    Case(
        "Icechunk target of a Zarr recipe",
        "targets",
        lambda w: ["bake", w.feedstock(), "--target-root", "icechunk://repo"],
        2,
        "error: --target-root icechunk://repo: Icechunk targets take references "
        "(WriteCombinedReference); recipe 'sst' writes a Zarr store",
    ),
    Case(
        "full disk",
        "targets",
        full_disk,
        1,
        "error: write of anom at time[2:4], lat[0:180], lon[0:360]: no space left on "
        "{tmp}/disk/out/.sst.zarr.partial/anom",
    ),
    # optional dependencies
    Case(
        "s3fs missing for an s3:// target",
        "dependencies",
        lambda w: ["bake", w.feedstock(), "--target-root", "s3://bucket/x"],
        1,
        'error: --target-root s3://bucket/x: Install s3fs to access S3 (pip install "arcoforge[s3]")',
        without="s3fs",
    ),
    Case(
        "cfgrib missing for GRIB inputs",
        "dependencies",
        recipe_edit("bake", {'file_type="netcdf4"': 'file_type="grib"'}),
        1,
        'error: GRIB inputs need cfgrib: pip install "arcoforge[grib]"',
        without="cfgrib",
    ),
    Case(
        "eccodes missing for GRIB inputs",
        "dependencies",
        recipe_edit("bake", {'file_type="netcdf4"': 'file_type="grib"'}),
        1,
        'error: GRIB inputs need eccodes: pip install "arcoforge[grib]"',
        without="eccodes,gribapi",
    ),
    Case(
        "pyarrow missing for Parquet references",
        "dependencies",
        lambda w: w.bake(feed=reference_feedstock(w)),
        1,
        'error: Parquet references need pyarrow: pip install "arcoforge[virtual]"',
        without="pyarrow",
    ),
    Case(
        "icechunk missing for an icechunk:// target",
        "dependencies",
        lambda w: ["bake", reference_feedstock(w), "--target-root", "icechunk://repo"],
        1,
        'error: Icechunk targets need icechunk: pip install "arcoforge[icechunk]"',
        without="icechunk",
    ),
    Case(
        "dask missing for --engine dask",
        "dependencies",
        lambda w: w.bake("--engine", "dask"),
        1,
        "error: engine 'dask' is not installed: pip install \"arcoforge[dask]\"",
        without="dask,distributed",
    ),
    Case(
        "pyspark missing for --engine spark",
        "dependencies",
        lambda w: w.bake("--engine", "spark"),
        1,
        "error: engine 'spark' is not installed: pip install \"arcoforge[spark]\"",
        without="pyspark",
    ),
    Case(
        "apache_beam missing for --engine beam",
        "dependencies",
        lambda w: w.bake("--engine", "beam"),
        1,
        "error: engine 'beam' is not installed: pip install \"arcoforge[beam]\"",
        without="apache_beam",
    ),
    Case(
        "s3fs missing for s3:// inputs",
        "dependencies",
        lambda w: w.bake(feed=w.feedstock(base="s3://bucket/data")),
        1,
        "error: s3://bucket/data/oisst-avhrr-v02r01.19810901.nc: ImportError: Install s3fs to "
        'access S3 (pip install "arcoforge[s3]")',
        without="s3fs",
    ),
    # flags
    Case(
        "--append with --force",
        "flags",
        lambda w: w.bake("--append", "--force"),
        2,
        "error: --append and --force cannot be given together",
    ),
    Case(
        "--append with --retry-failed",
        "flags",
        lambda w: w.bake("--append", "--retry-failed"),
        2,
        "error: --append and --retry-failed cannot be given together",
    ),
    Case(
        "--force with --retry-failed",
        "flags",
        lambda w: w.bake("--force", "--retry-failed"),
        2,
        "error: --force and --retry-failed cannot be given together",
    ),
    Case(
        "--dask-scheduler without --engine dask",
        "flags",
        lambda w: w.bake("--dask-scheduler", "tcp://127.0.0.1:1"),
        2,
        "error: --dask-scheduler needs --engine dask",
    ),
    Case(
        "no --target-root",
        "flags",
        lambda w: ["bake", w.feedstock()],
        2,
        "error: give --target-root (or target_root in the config file)",
    ),
    Case(
        "--workers 0",
        "flags",
        lambda w: w.bake("--workers", "0"),
        2,
        "error: Invalid value for '--workers': 0 is not in the range x>=1.",
    ),
    Case(
        "--storage-option without =",
        "flags",
        lambda w: w.bake("--storage-option", "anon"),
        2,
        "error: Invalid value for --storage-option: 'anon' is not KEY=VALUE",
    ),
    Case(
        "unknown --engine",
        "flags",
        lambda w: w.bake("--engine", "ray"),
        2,
        "error: Invalid value for '--engine': 'ray' is not one of 'local', 'dask', 'spark', "
        "'beam'.",
    ),
    Case(
        "unknown flag",
        "flags",
        lambda w: w.bake("--wrokers", "2"),
        2,
        "error: No such option '--wrokers'. Did you mean '--workers'?",
    ),
    Case(
        "unknown command",
        "flags",
        lambda w: ["bkae", "feed"],
        2,
        "error: No such command 'bkae'. Did you mean 'bake'?",
    ),
    # config
    Case(
        "unknown key",
        "config",
        config("wrokers: 2\n"),
        1,
        "error: bake.yaml: wrokers: Extra inputs are not permitted",
    ),
    Case(
        "not valid YAML",
        "config",
        config("workers: [2\n"),
        1,
        "error: bake.yaml line 2: not valid YAML: expected ',' or ']', but got '<stream end>'",
    ),
    Case(
        "wrong type",
        "config",
        config("workers: many\n"),
        1,
        "error: bake.yaml: workers: Input should be a valid integer, unable to parse string as "
        "an integer",
    ),
    Case(
        "value out of range in an engine section",
        "config",
        config("dask:\n  threads_per_worker: 0\n"),
        1,
        "error: bake.yaml: dask.threads_per_worker: Input should be greater than or equal to 1",
    ),
    Case(
        "not a mapping",
        "config",
        config("- workers\n"),
        1,
        "error: bake.yaml: must be a mapping of fields",
    ),
    Case(
        "config file missing",
        "config",
        lambda w: w.bake("--config", "nowhere.yaml"),
        1,
        "error: nowhere.yaml: cannot read: No such file or directory",
    ),
    Case(
        "storage_options for a local target",
        "config",
        config("storage_options:\n  anon: true\n"),
        1,
        "error: bake.yaml: storage_options: unused, the target root out is local",
    ),
    # append
    Case(
        "gap",
        "append",
        append_of(later_days(6)),
        1,
        "error: cannot append {tmp}/more/oisst-avhrr-v02r01.19810906.nc: time 1981-09-06 "
        "12:00:00 leaves a gap after time 1981-09-04 12:00:00 (the store's steps are 1 day)",
    ),
    Case(
        "overlap",
        "append",
        append_of(later_days(4)),
        1,
        "error: cannot append {tmp}/more/oisst-avhrr-v02r01.19810904.nc: time 1981-09-04 "
        "12:00:00 is already in the store, whose last time is 1981-09-04 12:00:00",
    ),
    Case(
        "inputs the store holds left out of the recipe",
        "append",
        dropping_the_first,
        1,
        "error: cannot append: {tmp}/out/sst.zarr holds {src}/oisst-avhrr-v02r01.19810901.nc, "
        "which the recipe lacks",
    ),
    Case(
        "--retry-failed without a store",
        "append",
        lambda w: w.bake("--retry-failed"),
        1,
        "error: cannot retry failed inputs: there is no store at {tmp}/out/sst.zarr",
    ),
    # validate
    Case(
        "not a store",
        "validate",
        lambda w: ["validate", str(w.src)],
        1,
        "error: {src}: not a Zarr store (no group metadata: GroupNotFoundError)",
    ),
    Case(
        "store missing",
        "validate",
        lambda w: ["validate", "nowhere.zarr"],
        1,
        "error: {tmp}/nowhere.zarr: no such store",
    ),
    Case(
        "a chunk that does not decode",
        "validate",
        validate_bad_chunk,
        1,
        "error: {tmp}/out/sst.zarr: 1 of 5 checks failed; first: sst: chunk c/1/0/0 does not "
        "decode: RuntimeError: error during blosc decompression: -1",
    ),
    # interrupts
    Case(
        "Ctrl-C during a bake",
        "interrupts",
        lambda w: w.bake(feed=w.feedstock(base=w.slow)),
        130,
        "interrupted",
        interrupted=True,
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


WITHOUT = """\
import importlib.machinery
import os
import sys

MISSING = set(os.environ["ARCOFORGE_TEST_WITHOUT"].split(","))


class Without(importlib.machinery.PathFinder):
    \"\"\"Python's path finder, but finding none of MISSING: as if not installed.\"\"\"

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.partition(".")[0] in MISSING:
            return None
        return super().find_spec(name, path, target)


sys.meta_path[:] = [Without if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
"""


@pytest.fixture(scope="module")
def without(tmp_path_factory) -> Path:
    """A folder whose sitecustomize.py hides the modules $ARCOFORGE_TEST_WITHOUT names."""
    folder = tmp_path_factory.mktemp("without")
    (folder / "sitecustomize.py").write_text(WITHOUT)
    return folder


def world(tmp_path: Path, archive: Path, servers, case: Case, without: Path) -> World:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    paths = [str(Path(__file__).resolve().parents[2])]
    if case.without:
        paths.append(str(without))
        env["ARCOFORGE_TEST_WITHOUT"] = case.without
    env["PYTHONPATH"] = os.pathsep.join(paths)
    urls = [server.url for server in servers]
    return World(tmp_path, archive, *urls, servers[2].requests, env)


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
    return line.replace("{resolver}", resolver_says()) if "{resolver}" in line else line


def resolver_says(host: str = "no-such-host.invalid") -> str:
    """What the line quotes of this machine's resolver refusing ``host``: its reason, and
    the second attempt made when the resolver did not answer (no network)."""
    try:
        socket.getaddrinfo(host, 80)
    except socket.gaierror as exc:
        again = " (after 2 attempts)" if exc.errno == socket.EAI_AGAIN else ""
        return f"({exc.strerror}){again}"
    raise AssertionError(f"{host} resolved")


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.category}: {c.kind}")
def test_bad_input_gives_its_line(case, tmp_path, archive, servers, without):
    w = world(tmp_path, archive, servers, case, without)
    try:
        args = case.setup(w)
        started = (lambda: bool(w.slow_requests)) if case.interrupted else None
        proc = arcoforge(args, tmp_path, w.env, started)
    finally:
        for cleanup in w.cleanups:
            cleanup()
    assert "Traceback" not in proc.stderr, proc.stderr
    assert (proc.returncode, error_line(proc.stderr)) == (case.rc, expected(case, w))


# -- what used to go wrong around the errors -------------------------------------------


def plain_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb", **extra}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    return env


def test_dry_run_of_remote_inputs_needs_no_cache(tmp_path, archive, servers, without):
    """The plan reads the first input through a temporary cache, removed afterwards."""
    case = Case("dry run", "flags", lambda w: [], 0, "")
    w = world(tmp_path, archive, servers, case, without)
    (tmp_path / "tmp").mkdir()
    env = {**w.env, "TMPDIR": str(tmp_path / "tmp")}
    feed = w.feedstock(base=w.url)
    proc = arcoforge(["bake", feed, "--target-root", "out", "--dry-run", "--json"], tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    (plan,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert plan["event"] == "plan" and plan["inputs"] == 4
    assert plan["dims"] == {"time": 4, "lat": 18, "lon": 36}
    assert not (tmp_path / "out").exists()
    assert not list((tmp_path / "tmp").glob("arcoforge-cache-*"))


def test_runs_json_piped_into_head_exits_0(tmp_path, archive, servers, without):
    """More records than a pipe holds: ``head -1`` goes away while they are written."""
    case = Case("runs", "flags", lambda w: [], 0, "")
    w = world(tmp_path, archive, servers, case, without)
    w.env["ARCOFORGE_STATE_DIR"] = str(tmp_path / "state")
    baked(w)
    (record,) = (tmp_path / "state").rglob("*.json")
    data = json.loads(record.read_text())
    for i in range(400):
        copy = {**data, "id": f"{data['id'][:-4]}{i:04d}"}
        record.with_name(f"{copy['id']}.json").write_text(json.dumps(copy))
    command = f"set -o pipefail; {shlex.quote(sys.executable)} -m arcoforge.cli runs --json "
    proc = subprocess.run(
        ["bash", "-c", command + "--limit 400 | head -1"],
        cwd=tmp_path,
        env=w.env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert (proc.returncode, proc.stderr) == (0, "")
    assert json.loads(proc.stdout)["recipe"] == "sst"


@pytest.mark.parametrize("name", ["yes", "123", "my data"])
def test_init_prints_commands_that_work_when_pasted(tmp_path, name):
    env = plain_env(tmp_path)
    proc = arcoforge(["init", name], tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    commands = [line.strip() for line in proc.stdout.splitlines() if line.startswith("  ")]
    quoted = shlex.quote(name)
    assert commands == [
        f"arcoforge lint {quoted}",
        f"arcoforge bake {quoted} --target-root ./output --prune 2",
    ]
    # pasted into a shell where `arcoforge` is the command under test
    script = f'arcoforge() {{ {shlex.quote(sys.executable)} -m arcoforge.cli "$@"; }}\n'
    pasted = subprocess.run(
        ["bash", "-e", "-c", script + "\n".join(commands)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert pasted.returncode == 0, pasted.stderr
    ident = {"my data": "my-data"}.get(name, name)
    assert f"ok  recipe {ident}: 4 inputs -> {ident}.zarr" in pasted.stdout
    assert (tmp_path / "output" / f"{ident}.zarr" / "zarr.json").is_file()


# -- the table in the docs -------------------------------------------------------------


def doc_rows() -> list[tuple[str, str, str]]:
    """The rows ``| category | kind | first line |`` of docs/bad-inputs.md."""
    rows = []
    for line in DOCS.read_text().splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        if len(cells) == 3 and cells[2].startswith("`"):
            rows.append((cells[0], cells[1], cells[2].strip("`")))
    return rows


def test_the_docs_table_lists_every_case():
    """docs/bad-inputs.md holds the table, row for row (a cell's ``|`` written ``\\|``)."""
    rows = [(c.category, c.kind, c.first.replace("|", "\\|")) for c in CASES]
    assert doc_rows() == rows
    assert len({(c.category, c.kind) for c in CASES}) == len(CASES) >= 45


def test_the_cases_tested_elsewhere_name_tests_that_exist():
    """The second table of docs/bad-inputs.md names, for each case, the test that asserts
    its line; every name points at a test function that exists."""
    named = re.findall(r"`(tests/[\w/]+\.py)::(test_\w+)` \|$", DOCS.read_text(), re.M)
    assert len(named) >= 40
    for path, test in named:
        source = (Path(__file__).parents[2] / path).read_text()
        assert re.search(rf"^def {test}\(", source, re.M), f"{path}::{test}"
