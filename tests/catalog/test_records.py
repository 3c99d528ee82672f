"""Catalog records, quick-looks and STAC, from feedstocks baked here by the real command:
a Zarr feedstock (one recipe baked, one never baked, one that fails), a references feedstock
whose inputs are served over HTTP (baked to JSON and to Icechunk), a real file of the corpus,
stores behind HTTP Basic auth and on an S3 server."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import fsspec
import numpy as np
import pystac
import pytest
import xarray as xr
import xpystac.core

import arcoforge
from arcoforge import ArcoforgeError
from arcoforge.catalog import stac
from arcoforge.catalog.describe import (
    LICENSES,
    describe_feedstock,
    license_url,
    snippets,
    time_coverage,
)
from arcoforge.catalog.quicklook import write_quicklook
from arcoforge.catalog.record import DatasetRecord
from arcoforge.core.runs import RUNS_FOLDER, Inputs, RunRecord, runner
from arcoforge.sources.secrets import secret_values
from arcoforge.testing.archives import write_oisst_archive
from arcoforge.testing.cli import HIDE_MODULES, ok
from arcoforge.testing.cli import arcoforge as arcoforge_cli
from arcoforge.testing.corpus import iris
from arcoforge.testing.httpserver import FileServer

TIMEOUT = 180
START, END = "1981-09-01T12:00:00", "1981-09-04T12:00:00"
SIZES = {"time": 4, "lat": 18, "lon": 36}

META = """\
title: {title}
description: {description}
recipes:
{recipes}
provenance:
  providers:
    - name: NOAA NCEI
      roles: [producer, licensor]
      url: https://www.ncei.noaa.gov
    - name: arcoforge tests
      roles: [processor, host]
  license: {license}
maintainers:
  - name: Ada Lovelace
    github: ada
tags: [ocean, sst]
"""

ZARR_RECIPES = """\
from arcoforge import *

URLS = {urls!r}
MISSING = {missing!r}


def pattern(urls):
    return pattern_from_file_sequence(urls, "time", nitems_per_file=1)


fetch = OpenURLWithFSSpec(retries=0)
sharded = {{"sst": {{"chunks": [1, 9, 36], "shards": [2, 18, 36]}}}}
daily = (
    pattern(URLS)
    | fetch
    | OpenWithXarray()
    | StoreToZarr("daily.zarr", target_chunks={{"time": 2}}, encoding=sharded)
)
monthly = pattern(URLS) | fetch | OpenWithXarray() | StoreToZarr("monthly.zarr")
broken = pattern([*URLS, MISSING]) | fetch | OpenWithXarray() | StoreToZarr("broken.zarr")
"""

REFERENCE_RECIPE = """\
from arcoforge import *

URLS = {urls!r}
refs = (
    pattern_from_file_sequence(URLS, "time", nitems_per_file=1)
    | OpenURLWithFSSpec()
    | OpenWithKerchunk()
    | WriteCombinedReference("refs", output_file_name={output!r})
)
"""

CORPUS_RECIPE = """\
from arcoforge import *

a1b = (
    pattern_from_file_sequence([{url!r}], "time", nitems_per_file=240)
    | OpenURLWithFSSpec()
    | OpenWithXarray()
    | StoreToZarr("a1b.zarr", target_chunks={{"time": 60}})
)
"""


def write_feedstock(folder: Path, recipe: str, ids: list[str], **meta: str) -> Path:
    folder.mkdir(parents=True)
    recipes = "\n".join(f'  - id: {i}\n    object: "recipe:{i}"' for i in ids)
    (folder / "meta.yaml").write_text(META.format(recipes=recipes, **meta))
    (folder / "recipe.py").write_text(recipe)
    return folder


class Baked:
    """What the module's fixture baked, and where."""

    def __init__(self, root: Path, server: FileServer):
        self.root, self.server = root, server
        self.sources = write_oisst_archive(root / "src", days=4, ny=18, nx=36)
        self.out, self.ice = root / "out", root / "ice"
        urls = [p.as_uri() for p in self.sources]
        self.zarr = write_feedstock(
            root / "sst-zarr",
            ZARR_RECIPES.format(urls=urls, missing=(root / "src" / "gone.nc").as_uri()),
            ["daily", "monthly", "broken"],
            title='"Daily SST"',
            description='"OISST-like daily sea surface temperature <b>on a coarse grid</b>."',
            license="CC-BY-4.0",
        )
        served = [f"{server.url}/{p.name}" for p in self.sources]
        self.refs = write_feedstock(
            root / "sst-refs",
            REFERENCE_RECIPE.format(urls=served, output="reference.json"),
            ["refs"],
            title='"Daily SST references"',
            description='"The same files, as kerchunk references."',
            license="Custom-Terms",
        )

        self.icechunk = write_feedstock(
            root / "sst-ice",
            REFERENCE_RECIPE.format(urls=urls, output="reference.json"),
            ["refs"],
            title='"Daily SST in Icechunk"',
            description='"The local files, as virtual chunks of an Icechunk repository."',
            license="CC0-1.0",
        )

        self.parquet = write_feedstock(
            root / "sst-parquet",
            REFERENCE_RECIPE.format(urls=urls, output="refs.parquet"),
            ["refs"],
            title='"Daily SST as Parquet references"',
            description='"The local files, as kerchunk references in Parquet."',
            license="ODbL-1.0",
        )

    def bake(self) -> None:
        ok(self.cli("bake", self.zarr, "--target-root", self.out, "--recipe", "daily"))
        failed = self.cli("bake", self.zarr, "--target-root", self.out, "--recipe", "broken")
        assert failed.returncode == 1, failed.stderr
        ok(self.cli("bake", self.refs, "--target-root", self.out))
        ok(self.cli("bake", self.parquet, "--target-root", self.out))
        ok(self.cli("bake", self.icechunk, "--target-root", f"icechunk://{self.ice}"))

    def cli(self, *args) -> subprocess.CompletedProcess:
        return arcoforge_cli(*args, cwd=self.root)

    def files_under(self, path: Path) -> list[Path]:
        return [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]


@pytest.fixture(scope="module")
def baked(tmp_path_factory) -> Baked:
    root = tmp_path_factory.mktemp("catalog")
    (root / "src").mkdir()
    with FileServer(root / "src") as server:
        found = Baked(root, server)
        found.bake()
        yield found


@pytest.fixture(scope="module")
def zarr_records(baked) -> dict[str, DatasetRecord]:
    records = describe_feedstock(baked.zarr, baked.out, quicklook_dir=baked.root / "looks")
    return {r.recipe: r for r in records}


@pytest.fixture(scope="module")
def ref_record(baked) -> DatasetRecord:
    baked.server.requests.clear()
    (record,) = describe_feedstock(baked.refs, baked.out, quicklook_dir=baked.root / "looks")
    baked.requests = list(baked.server.requests)
    return record


@pytest.fixture(scope="module")
def parquet_record(baked) -> DatasetRecord:
    (record,) = describe_feedstock(baked.parquet, baked.out)
    return record


@pytest.fixture(scope="module")
def ice_record(baked) -> DatasetRecord:
    (record,) = describe_feedstock(baked.icechunk, f"icechunk://{baked.ice}")
    return record


# -- what a record says -----------------------------------------------------------------


def test_zarr_record_holds_meta_dims_variables_and_size(baked, zarr_records):
    record = zarr_records["daily"]
    assert (record.id, record.slug, record.feedstock) == (
        "sst-zarr/daily",
        "sst-zarr--daily",
        "sst-zarr",
    )
    assert record.title == "Daily SST (daily)"  # meta.yaml holds three recipes
    assert record.description == "OISST-like daily sea surface temperature <b>on a coarse grid</b>."
    assert (record.license, record.license_url) == (
        "CC-BY-4.0",
        "https://creativecommons.org/licenses/by/4.0/",
    )
    assert [(p.name, p.roles, p.url) for p in record.providers] == [
        ("NOAA NCEI", ["producer", "licensor"], "https://www.ncei.noaa.gov"),
        ("arcoforge tests", ["processor", "host"], None),
    ]
    assert [(m.name, m.github) for m in record.maintainers] == [("Ada Lovelace", "ada")]
    assert record.tags == ["ocean", "sst"]
    assert (record.status, record.error) == ("ok", None)

    store = baked.out / "daily.zarr"
    files = baked.files_under(store)
    assert record.store.url == str(store) and record.store.type == "zarr"
    assert record.store.size_bytes == sum(p.stat().st_size for p in files) > 0
    assert record.store.objects == len(files) > 0

    assert (record.time_coverage.start, record.time_coverage.end) == (START, END)
    assert record.extent.model_dump() == {"west": 5.0, "south": -85.0, "east": 355.0, "north": 85.0}
    assert [d.model_dump() for d in record.dims] == [
        {
            "name": "time",
            "size": 4,
            "start": START,
            "end": END,
            "units": "days since 1978-01-01T12:00:00",
            "kind": "time",
        },
        {
            "name": "lat",
            "size": 18,
            "start": "-85",
            "end": "85",
            "units": "degrees_north",
            "kind": "y",
        },
        {
            "name": "lon",
            "size": 36,
            "start": "5",
            "end": "355",
            "units": "degrees_east",
            "kind": "x",
        },
    ]
    variables = {v.name: v for v in record.variables}
    assert set(variables) == {"sst", "anom", "err", "ice", "time", "lat", "lon"}
    sst = variables["sst"]
    assert sst.model_dump() == {
        "name": "sst",
        "dims": ["time", "lat", "lon"],
        "dtype": "float64",
        "shape": [4, 18, 36],
        "chunks": [1, 9, 36],
        "shards": [2, 18, 36],
        "codecs": ["blosc(zstd)"],
        "units": "Celsius",
        "long_name": "Daily sea surface temperature",
        "standard_name": None,
        "coordinate": False,
    }
    stored = json.loads((store / "sst" / "zarr.json").read_text())
    assert stored["chunk_grid"]["configuration"]["chunk_shape"] == sst.shards
    (sharding,) = stored["codecs"]
    assert sharding["configuration"]["chunk_shape"] == sst.chunks
    assert [c["name"] for c in sharding["configuration"]["codecs"]] == ["bytes", "blosc"]
    anom = variables["anom"]
    assert (anom.chunks, anom.shards, anom.codecs) == ([2, 18, 36], None, ["blosc(zstd)"])
    stored = json.loads((store / "anom" / "zarr.json").read_text())
    assert stored["chunk_grid"]["configuration"]["chunk_shape"] == anom.chunks
    assert [c["name"] for c in stored["codecs"]] == ["bytes", "blosc"]
    assert variables["lat"].coordinate and variables["lat"].chunks == [18]
    assert "Dimensions:" in record.repr and "sst" in record.repr and "(time: 4" in record.repr


def test_runs_newest_first_with_their_command_runner_and_version(baked, zarr_records):
    (run,) = zarr_records["daily"].runs
    assert (run.status, run.inputs, run.retries, run.version) == (
        "succeeded",
        4,
        0,
        arcoforge.__version__,
    )
    assert run.command == f"arcoforge bake {baked.zarr} --target-root {baked.out} --recipe daily"
    assert run.by == runner()  # None here: no ARCOFORGE_RUN_BY, not in GitHub Actions
    assert datetime.fromisoformat(run.started) <= datetime.fromisoformat(run.ended)
    assert run.seconds > 0
    record = json.loads((baked.out / RUNS_FOLDER / f"{run.id}.json").read_text())
    assert record["status"] == "succeeded" and record["target"] == str(baked.out / "daily.zarr")


def test_a_recipe_never_baked_and_one_whose_bake_failed(baked, zarr_records):
    never = zarr_records["monthly"]
    assert (never.status, never.error, never.runs, never.dims, never.snippets) == (
        "never-baked",
        None,
        [],
        [],
        {},
    )
    assert never.store.url == str(baked.out / "monthly.zarr")
    assert (never.store.size_bytes, never.store.objects) == (None, None)

    failed = zarr_records["broken"]
    assert failed.status == "failed" and [r.status for r in failed.runs] == ["failed"]
    gone = baked.root / "src" / "gone.nc"
    assert failed.error == f"during scan: {gone.as_uri()}: file not found"
    assert failed.snippets == {} and failed.repr is None


def test_a_running_bake_found_in_the_runs_folder(baked, tmp_path):
    folder = tmp_path / "state"
    folder.mkdir()
    started = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    running = RunRecord(
        id="20260102T030405Z-abcdef",
        recipe="monthly",
        store="monthly.zarr",
        target=str(baked.out / "monthly.zarr"),
        inputs=Inputs(count=4),
        started=started,
    )
    (folder / f"{running.id}.json").write_text(running.model_dump_json())
    (folder / "notes.json").write_text("{}")  # not a run record: skipped
    records = describe_feedstock(baked.zarr, baked.out, runs_folder=folder)
    monthly = next(r for r in records if r.recipe == "monthly")
    assert (monthly.status, monthly.error) == ("running", None)
    assert [(r.id, r.status, r.started) for r in monthly.runs] == [
        ("20260102T030405Z-abcdef", "running", "2026-01-02T03:04:05+00:00")
    ]
    daily = next(r for r in records if r.recipe == "daily")
    assert daily.status == "ok" and len(daily.runs) == 1  # the state folder holds none of it


def test_a_store_that_cannot_be_opened_still_has_its_record(baked, tmp_path):
    junk = tmp_path / "out" / "daily.zarr"
    junk.mkdir(parents=True)
    (junk / "zarr.json").write_text("this is not JSON")
    records = describe_feedstock(baked.zarr, tmp_path / "out")
    daily = next(r for r in records if r.recipe == "daily")
    assert daily.status == "unreadable"
    assert daily.error == f"{junk}: JSONDecodeError: Expecting value: line 1 column 1 (char 0)"
    assert daily.dims == [] and daily.snippets == {} and daily.runs == []
    assert (daily.store.size_bytes, daily.store.objects) == (None, None)


def test_a_store_gone_since_its_bake_succeeded(baked, tmp_path):
    runs = tmp_path / "out" / RUNS_FOLDER
    runs.mkdir(parents=True)
    record = RunRecord(
        id="20260102T030405Z-000001",
        status="succeeded",
        recipe="daily",
        store="daily.zarr",
        target=str(tmp_path / "out" / "daily.zarr"),
        inputs=Inputs(count=4),
        started=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    (runs / f"{record.id}.json").write_text(record.model_dump_json())
    daily = describe_feedstock(baked.zarr, tmp_path / "out")[0]
    assert (daily.status, daily.error) == ("unreadable", f"{tmp_path}/out/daily.zarr: not found")
    assert [r.status for r in daily.runs] == ["succeeded"]


def test_references_record_and_only_two_slices_read(baked, ref_record):
    record = ref_record
    assert (record.id, record.title, record.status) == (
        "sst-refs/refs",
        "Daily SST references",
        "ok",
    )
    assert (record.license, record.license_url) == ("Custom-Terms", None)
    json_file = baked.out / "refs" / "reference.json"
    assert record.store.model_dump() == {
        "url": str(json_file),
        "type": "references-json",
        "size_bytes": json_file.stat().st_size,
        "objects": 1,
    }
    assert (record.time_coverage.start, record.time_coverage.end) == (START, END)
    sst = next(v for v in record.variables if v.name == "sst")
    assert (sst.chunks, sst.codecs) == ([1, 18, 36], ["shuffle", "zlib"])
    assert [r.status for r in record.runs] == ["succeeded"]
    # the quick-look read the first and the last input, and nothing else
    first, last = baked.sources[0].name, baked.sources[-1].name
    assert record.quicklook.variable == "sst"  # the first data variable of the references
    assert {r.partition("?")[0] for r in baked.requests} == {f"/{first}", f"/{last}"}


def test_parquet_record(baked, parquet_record):
    folder = baked.out / "refs" / "refs.parquet"
    files = baked.files_under(folder)
    assert (parquet_record.status, parquet_record.store.type, parquet_record.store.url) == (
        "ok",
        "references-parquet",
        str(folder),
    )
    assert parquet_record.store.size_bytes == sum(p.stat().st_size for p in files) > 0
    assert parquet_record.store.objects == len(files) > 1
    assert parquet_record.license_url == "https://opendatacommons.org/licenses/odbl/1-0/"
    assert (parquet_record.time_coverage.start, parquet_record.time_coverage.end) == (START, END)
    # its runs only, though the JSON references' runs are kept in the same folder
    assert [r.status for r in parquet_record.runs] == ["succeeded"]
    assert len(list((baked.out / "refs" / RUNS_FOLDER).glob("*.json"))) == 2


def test_icechunk_record(baked, ice_record):
    repo = baked.ice / "refs"
    files = baked.files_under(repo)
    assert (ice_record.status, ice_record.store.type, ice_record.store.url) == (
        "ok",
        "icechunk",
        str(repo),
    )
    assert ice_record.store.size_bytes == sum(p.stat().st_size for p in files)
    assert ice_record.store.objects == len(files)
    assert [r.status for r in ice_record.runs] == ["succeeded"]
    assert f'"file://{baked.root}/src/": None,' in ice_record.snippets["icechunk"]


@pytest.mark.parametrize(
    ("which", "labels"),
    [
        ("zarr", ["xarray"]),
        ("refs", ["arcoforge", "xarray (kerchunk)"]),
        ("parquet", ["arcoforge", "xarray (kerchunk)"]),
        ("ice", ["icechunk", "arcoforge"]),
    ],
)
def test_snippets_open_the_store(
    baked, zarr_records, ref_record, parquet_record, ice_record, which, labels
):
    record = {
        "zarr": zarr_records["daily"],
        "refs": ref_record,
        "parquet": parquet_record,
        "ice": ice_record,
    }[which]
    assert list(record.snippets) == labels
    with xr.open_dataset(baked.sources[-1]) as source:
        expected = source["sst"].values[0]
    for label, code in record.snippets.items():
        scope: dict = {}
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(code, f"<{label} snippet>", "exec"), scope)
        if "ds" in scope:
            ds = scope["ds"]
            assert dict(ds.sizes) == SIZES, label
            np.testing.assert_allclose(ds["sst"].values[-1], expected, rtol=1e-6)
            ds.close()
        else:
            assert "<xarray.Dataset>" in printed.getvalue() and "time: 4" in printed.getvalue()


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


def test_quicklooks_are_pngs_of_the_first_and_last_day(baked, zarr_records):
    look = zarr_records["daily"].quicklook
    folder = baked.root / "looks" / "sst-zarr--daily"
    assert (look.variable, look.first, look.last) == (
        "anom",
        "quicklook-first.png",
        "quicklook-last.png",
    )
    first, last = folder / look.first, folder / look.last
    assert png_size(first) == png_size(last) == (512, 288)
    assert first.stat().st_size > 10_000 and first.read_bytes() != last.read_bytes()
    with xr.open_mfdataset(baked.sources) as source:
        anom = source["anom"]
        low, high = float(anom[0].min()), float(anom[0].max())
    assert look.alt_first == (
        f"Map of Daily sea surface temperature anomalies (anom) on {START}: values from "
        f"{low:.4g} to {high:.4g} Celsius, over lon 5 to 355 and lat -85 to 85."
    )
    assert f"on {END}:" in look.alt_last


# -- credentials, object stores ---------------------------------------------------------


def test_a_store_behind_basic_auth_has_its_password_masked(baked, caplog):
    caplog.set_level(logging.DEBUG)
    with FileServer(baked.out, auth=("reader", "s3cret")) as server:
        root = server.url.replace("http://", "http://reader:s3cret@")
        records = describe_feedstock(baked.zarr, root)
        wrong = describe_feedstock(baked.zarr, server.url.replace("http://", "http://reader:no@"))
        base = server.url
    masked = base.replace("http://", "http://reader:***@")
    daily = records[0]
    assert (daily.status, daily.store.url) == ("ok", f"{masked}/daily.zarr")
    assert (daily.time_coverage.start, daily.time_coverage.end) == (START, END)
    assert (daily.store.size_bytes, daily.store.objects) == (None, None)  # not listable
    assert daily.snippets["xarray"].endswith(f'xr.open_zarr("{masked}/daily.zarr")\n')
    assert [r.status for r in records] == ["ok", "never-baked", "never-baked"]
    assert wrong[0].status == "unreadable"
    # zarr asks for its metadata keys at once: the first refusal is the one reported
    head, key = wrong[0].error.rsplit("/", 1)
    assert head == (
        f"http://reader:***@{base.removeprefix('http://')}/daily.zarr: ClientResponseError: 401, "
        f"message='Unauthorized', url='{base}/daily.zarr"
    )
    assert key in {"zarr.json'", ".zmetadata'", ".zgroup'", ".zattrs'"}
    for record in [*records, *wrong]:
        assert "s3cret" not in record.model_dump_json()
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("arcoforge")]
    assert (
        f"{masked}/.arcoforge-runs: run records not listed (ClientResponseError: 401, " in ours[0]
    )
    assert not any("s3cret" in line for line in ours)


def test_a_store_on_an_object_store(baked, s3, bucket):
    endpoint = s3["client_kwargs"]["endpoint_url"]
    flags = ["--storage-option", "key=testing", "--storage-option", "secret=testing"]
    flags += ["--storage-option", f"client_kwargs.endpoint_url={endpoint}"]
    flags += ["--storage-option", "client_kwargs.region_name=eu-west-1"]
    ok(baked.cli("bake", baked.zarr, "--target-root", bucket, "--recipe", "daily", *flags))
    records = describe_feedstock(baked.zarr, bucket, storage_options=s3)
    daily = records[0]
    fs = fsspec.filesystem("s3", **s3)
    found = fs.find(f"{bucket}/daily.zarr", detail=True)
    assert (daily.status, daily.store.url) == ("ok", f"{bucket}/daily.zarr")
    assert daily.store.size_bytes == sum(i["size"] for i in found.values()) > 0
    assert daily.store.objects == len(found)
    assert [r.status for r in daily.runs] == ["succeeded"]
    assert (daily.time_coverage.start, daily.time_coverage.end) == (START, END)
    options = {"client_kwargs": {"endpoint_url": endpoint, "region_name": "eu-west-1"}}
    assert daily.snippets["xarray"] == (
        "import xarray as xr\n\n"
        f'ds = xr.open_zarr("{bucket}/daily.zarr", storage_options={options!r})\n'
    )
    assert [r.status for r in records[1:]] == ["never-baked", "never-baked"]
    assert all("testing" not in r.model_dump_json() for r in records)


# -- a real file ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[DatasetRecord, Path]:
    """The record of a real file baked to Zarr, and the folder of its quick-looks."""
    root = tmp_path_factory.mktemp("corpus")
    feed = write_feedstock(
        root / "a1b",
        CORPUS_RECIPE.format(url=iris("A1B_north_america.nc").as_uri()),
        ["a1b"],
        title='"HadCM3 A1B air temperature over North America"',
        description='"From iris-sample-data."',
        license="OGL-UK-3.0",
    )
    ok(arcoforge_cli("bake", feed, "--target-root", root / "out", cwd=root))
    (record,) = describe_feedstock(feed, root / "out", quicklook_dir=root / "looks")
    return record, root / "looks" / record.slug


def test_a_real_file_keeps_its_attributes(corpus):
    record, looks = corpus
    assert record.license_url == LICENSES["OGL-UK-3.0"]
    with xr.open_dataset(iris("A1B_north_america.nc")) as source:
        times = source["time"].values
        air = source["air_temperature"]
        attrs = dict(air.attrs)
        lat, lon = source["latitude"].values, source["longitude"].values
    assert record.time_coverage.model_dump() == {
        "start": times[0].strftime("%Y-%m-%d"),
        "end": times[-1].strftime("%Y-%m-%d"),
    }
    assert record.time_coverage.start == "1860-06-01"
    assert record.extent.model_dump() == {
        "west": float(lon.min()),
        "south": float(lat.min()),
        "east": float(lon.max()),
        "north": float(lat.max()),
    }
    var = next(v for v in record.variables if v.name == "air_temperature")
    assert (var.units, var.standard_name, var.dims, var.chunks) == (
        attrs["units"],
        attrs["standard_name"],
        ["time", "latitude", "longitude"],
        [60, 37, 49],
    )
    assert (var.units, var.standard_name) == ("K", "air_temperature")
    kinds = {d.name: d.kind for d in record.dims}
    assert kinds == {"time": "time", "latitude": "y", "longitude": "x", "bnds": "other"}
    bnds = next(d for d in record.dims if d.name == "bnds")
    assert (bnds.size, bnds.start) == (2, None)
    assert record.quicklook.variable == "air_temperature"
    assert png_size(looks / record.quicklook.first) == (512, 288)


# -- STAC -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def catalog(baked, zarr_records, ref_record, ice_record, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("stac") / "stac"
    looks = baked.root / "looks"
    corpus_record, corpus_looks = corpus
    shutil.copytree(corpus_looks, looks / corpus_record.slug, dirs_exist_ok=True)
    records = [*zarr_records.values(), ref_record, ice_record, corpus_record]
    return stac.build_stac(records, out, quicklook_dir=looks), out


def test_stac_validates_offline_and_holds_the_datacube(catalog):
    cat, out = catalog
    assert stac.validate(cat) == [
        "arcoforge",
        "sst-zarr--daily",
        "sst-zarr--monthly",
        "sst-zarr--broken",
        "sst-refs--refs",
        "sst-ice--refs",
        "a1b--a1b",
    ]
    daily = json.loads((out / "sst-zarr--daily" / "collection.json").read_text())
    assert daily["extent"] == {
        "spatial": {"bbox": [[-180.0, -85.0, 180.0, 85.0]]},  # centres 5..355 E, 10 apart: global
        "temporal": {"interval": [["1981-09-01T12:00:00Z", "1981-09-04T12:00:00Z"]]},
    }
    assert daily["cube:dimensions"] == {
        "time": {"type": "temporal", "extent": ["1981-09-01T12:00:00Z", "1981-09-04T12:00:00Z"]},
        "lat": {"extent": [-85.0, 85.0], "type": "spatial", "axis": "y", "reference_system": 4326},
        "lon": {"extent": [5.0, 355.0], "type": "spatial", "axis": "x", "reference_system": 4326},
    }
    assert daily["cube:variables"]["sst"] == {
        "type": "data",
        "dimensions": ["time", "lat", "lon"],
        "shape": [4, 18, 36],
        "description": "Daily sea surface temperature",
        "unit": "Celsius",
        "chunks": [1, 9, 36],
        "attrs": {"dtype": "float64", "codecs": ["blosc(zstd)"], "shards": [2, 18, 36]},
    }
    assert set(daily["cube:variables"]) == {"sst", "anom", "err", "ice"}
    assert (daily["license"], daily["keywords"]) == ("CC-BY-4.0", ["ocean", "sst"])
    assert daily["providers"][0] == {
        "name": "NOAA NCEI",
        "roles": ["producer", "licensor"],
        "url": "https://www.ncei.noaa.gov",
    }
    assert daily["assets"]["store"]["type"] == "application/vnd+zarr"
    assert daily["assets"]["store"]["roles"] == ["data"]
    assert daily["assets"]["store"]["xarray:open_kwargs"] == {"engine": "zarr", "chunks": {}}
    thumbnail = daily["assets"]["thumbnail"]
    assert (thumbnail["href"], thumbnail["type"], thumbnail["roles"]) == (
        "./quicklook-first.png",
        "image/png",
        ["thumbnail"],
    )
    assert png_size(out / "sst-zarr--daily" / "quicklook-first.png") == (512, 288)
    links = [link["href"] for link in daily["links"] if link["rel"] != "license"]
    assert links == ["../catalog.json", "../catalog.json"]


def test_stac_of_the_real_file_and_the_references(catalog):
    _, out = catalog
    a1b = json.loads((out / "a1b--a1b" / "collection.json").read_text())
    assert a1b["extent"]["spatial"]["bbox"] == [[-135.0, 15.0, -45.0, 60.0]]
    assert a1b["extent"]["temporal"]["interval"][0][0] == "1860-06-01T00:00:00Z"
    assert a1b["license"] == "OGL-UK-3.0"
    assert a1b["cube:dimensions"]["bnds"] == {
        "type": "other",
        "extent": [0, 1],
        "description": "indices",
    }
    assert a1b["cube:variables"]["air_temperature"]["attrs"]["standard_name"] == "air_temperature"
    refs = json.loads((out / "sst-refs--refs" / "collection.json").read_text())
    assert refs["license"] == "other"  # not an SPDX id, and no page known
    assert refs["assets"]["store"]["type"] == "application/json"
    assert refs["assets"]["store"]["roles"] == ["data", "references"]
    never = json.loads((out / "sst-zarr--monthly" / "collection.json").read_text())
    assert never["arcoforge:status"] == "never-baked" and "cube:dimensions" in never


def test_stac_assets_open_with_xpystac(catalog):
    _, out = catalog
    collection = pystac.read_file(out / "sst-zarr--daily" / "collection.json")
    assert collection.validate(validator=stac.offline_validator())
    ds = xpystac.core.to_xarray(collection.assets["store"])
    assert dict(ds.sizes) == SIZES


def test_the_offline_validator_refuses_an_invalid_collection(catalog):
    _, out = catalog
    collection = pystac.read_file(out / "sst-zarr--daily" / "collection.json")
    del collection.extra_fields["cube:dimensions"]["lon"]["axis"]
    with pytest.raises(pystac.errors.STACValidationError) as info:
        collection.validate(validator=stac.offline_validator())
    assert str(info.value).splitlines()[0] == (
        f"Validation failed for Collection at {out / 'sst-zarr--daily' / 'collection.json'} "
        "with ID sst-zarr--daily against schema at "
        "https://stac-extensions.github.io/datacube/v2.2.0/schema.json"
    )


def test_stac_with_a_base_url_names_only_its_root_absolutely(zarr_records, tmp_path):
    records = [zarr_records["monthly"], zarr_records["daily"]]
    stac.build_stac(records, tmp_path / "stac", base_url="https://data.example.org/cat/stac")
    root = json.loads((tmp_path / "stac" / "catalog.json").read_text())
    assert sorted((link["rel"], link["href"]) for link in root["links"]) == [
        ("child", "./sst-zarr--daily/collection.json"),
        ("child", "./sst-zarr--monthly/collection.json"),
        ("root", "./catalog.json"),
        ("self", "https://data.example.org/cat/stac/catalog.json"),
    ]
    # without quicklook_dir, no thumbnail (its PNG would not be there)
    daily = json.loads((tmp_path / "stac" / "sst-zarr--daily" / "collection.json").read_text())
    assert set(daily["assets"]) == {"store"}
    assert not (tmp_path / "stac" / "sst-zarr--daily" / "quicklook-first.png").exists()


def test_a_missing_quicklook_is_one_line_naming_it(zarr_records, tmp_path):
    record = zarr_records["daily"]
    with pytest.raises(ArcoforgeError) as info:
        stac.build_stac([record], tmp_path / "stac", quicklook_dir=tmp_path / "none")
    assert str(info.value) == (
        f"{tmp_path}/none/sst-zarr--daily/quicklook-first.png: missing "
        "(the quick-look of 'sst-zarr/daily')"
    )


# -- missing extras ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "code", "line"),
    [
        (
            "matplotlib",
            "describe_feedstock(FEED, OUT, quicklook_dir=LOOKS)",
            'MissingDependency: catalog quick-looks need matplotlib: pip install "arcoforge[catalog]"',
        ),
        (
            "jsonschema",
            "validate(build_stac([], LOOKS))",
            'MissingDependency: STAC checks need jsonschema: pip install "arcoforge[catalog]"',
        ),
        (
            "pystac",
            "build_stac([], LOOKS)",
            'MissingDependency: STAC catalogs need pystac: pip install "arcoforge[catalog]"',
        ),
    ],
)
def test_a_missing_extra_is_one_line_naming_it(baked, tmp_path, module, code, line):
    (tmp_path / "hide").mkdir()
    (tmp_path / "hide" / "sitecustomize.py").write_text(HIDE_MODULES)
    script = (
        "from arcoforge.catalog.describe import describe_feedstock\n"
        "from arcoforge.catalog.stac import build_stac, validate\n"
        f"FEED, OUT, LOOKS = {str(baked.zarr)!r}, {str(baked.out)!r}, {str(tmp_path / 'l')!r}\n"
        "try:\n"
        f"    {code}\n"
        "except Exception as exc:\n"
        "    print(f'{type(exc).__name__}: {exc}')\n"
    )
    env = {**os.environ, "ARCOFORGE_TEST_WITHOUT": module}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[2]), str(tmp_path / "hide")]
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert proc.stdout.strip().splitlines()[-1] == line, proc.stderr


# -- quick-looks that cannot or need not be drawn in full ---------------------------------


def test_a_quicklook_that_cannot_be_read_leaves_the_store_readable(baked, tmp_path, caplog):
    shutil.copytree(baked.out / "daily.zarr", tmp_path / "out" / "daily.zarr")
    for name in ("anom", "sst"):  # the data chunks; coordinates stay readable
        for path in (tmp_path / "out" / "daily.zarr" / name / "c").rglob("*"):
            if path.is_file():
                path.write_bytes(b"not a chunk")
    with caplog.at_level(logging.WARNING, logger="arcoforge.catalog.describe"):
        records = describe_feedstock(baked.zarr, tmp_path / "out", quicklook_dir=tmp_path / "q")
    daily = next(r for r in records if r.recipe == "daily")
    assert (daily.status, daily.error, daily.quicklook) == ("ok", None, None)
    assert daily.dims and set(daily.snippets) == {"xarray"}
    assert daily.store.size_bytes and daily.store.objects
    (line,) = [r.getMessage() for r in caplog.records if "quick-look" in r.getMessage()]
    assert line.startswith("sst-zarr/daily: no quick-look (")


def _grid(ny: int, nx: int, nt: int = 1, dtype="float32") -> xr.Dataset:
    data = np.arange(nt * ny * nx, dtype="float64").reshape(nt, ny, nx).astype(dtype)
    return xr.Dataset(
        {"v": (("time", "lat", "lon"), data)},
        coords={
            "time": np.arange(nt).astype("datetime64[D]").astype("datetime64[ns]"),
            "lat": np.linspace(-89.9, 89.9, ny),
            "lon": np.linspace(0.0, 359.9, nx),
        },
    )


def test_complex_and_empty_variables_get_no_quicklook(tmp_path):
    assert write_quicklook(_grid(3, 4, dtype="complex64"), tmp_path) is None
    assert write_quicklook(_grid(0, 4), tmp_path) is None
    assert write_quicklook(_grid(3, 4, nt=0), tmp_path) is None
    assert list(tmp_path.iterdir()) == []


def test_a_one_step_dataset_has_one_quicklook(tmp_path):
    look = write_quicklook(_grid(3, 4), tmp_path)
    assert (look.first, look.last) == ("quicklook-first.png", "quicklook-first.png")
    assert look.alt_first == look.alt_last
    assert [p.name for p in tmp_path.iterdir()] == ["quicklook-first.png"]


def test_a_large_map_is_read_strided(tmp_path):
    store = tmp_path / "big.zarr"
    big = _grid(2000, 4000, nt=2).chunk({"time": 1, "lat": 500, "lon": 1000})
    big.to_zarr(store, zarr_format=3, consolidated=False)
    with xr.open_zarr(store, chunks=None, consolidated=False) as ds:
        tracemalloc.start()
        look = write_quicklook(ds, tmp_path / "look")
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert (look.first, look.last) == ("quicklook-first.png", "quicklook-last.png")
    assert peak < 200e6, peak
    assert png_size(tmp_path / "look" / look.first) == (512, 288)
    assert "values from 0 to 7.996e+06" in look.alt_first


def test_snippets_show_only_public_storage_options_and_no_secret():
    options = {
        "key": "AKIAEXAMPLE",
        "secret": "s3cr3tpw",
        "account_name": "sstdata",
        "connection_string": "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=abc123==",
        "client_kwargs": {"endpoint_url": "http://minio:s3cr3tpw@minio:9000", "verify": False},
        "config_kwargs": {"signature_version": "s3v4"},
    }
    secrets = tuple(secret_values(open_kwargs=options))
    assert options["connection_string"] in secrets
    found = snippets("s3://bucket/sst.zarr", "zarr", options, secrets)
    public = {"account_name": "sstdata", "client_kwargs": {"endpoint_url": "http://minio:9000"}}
    assert found == {
        "xarray": 'import xarray as xr\n\nds = xr.open_zarr("s3://bucket/sst.zarr", '
        f"storage_options={public!r})\n"
    }
    leaked = snippets("s3://bucket/s3cr3tpw/refs.json", "references-json", options, secrets)
    assert all("s3cr3tpw" not in text and "abc123" not in text for text in leaked.values())
    assert all("s3://bucket/***/refs.json" in text for text in leaked.values())


def test_time_coverage_of_many_steps_is_computed_in_numpy():
    hours = np.arange(700_000).astype("timedelta64[h]") + np.datetime64("1940-01-01", "ns")
    hours[0] = hours[-1] = np.datetime64("NaT")
    ds = xr.Dataset(coords={"time": ("time", hours, {"standard_name": "time"})})
    began = time.perf_counter()
    found = time_coverage(ds)
    assert time.perf_counter() - began < 1.0
    assert (found.start, found.end) == ("1940-01-01T01:00:00", "2019-11-08T14:00:00")


@pytest.mark.parametrize(
    ("repo", "feedstock"),
    [("noaa-oisst-feedstock", "noaa-oisst"), ("oisst", "oisst"), ("-feedstock", "-feedstock")],
)
def test_a_pangeo_forge_feedstock_repo_is_named_for_the_repo(baked, tmp_path, repo, feedstock):
    folder = tmp_path / repo / "feedstock"
    shutil.copytree(baked.zarr, folder)
    records = describe_feedstock(folder, tmp_path / "nothing-here")
    assert [r.id for r in records] == [
        f"{feedstock}/daily",
        f"{feedstock}/monthly",
        f"{feedstock}/broken",
    ]
    assert records[0].slug == f"{feedstock}--daily"


def test_run_records_beside_a_moved_store_still_match(baked, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(baked.out, moved)
    records = {r.recipe: r for r in describe_feedstock(baked.zarr, moved)}
    before = {r.recipe: r for r in describe_feedstock(baked.zarr, baked.out)}
    assert [r.id for r in records["daily"].runs] == [r.id for r in before["daily"].runs]
    assert [r.status for r in records["daily"].runs] == ["succeeded"]
    assert (records["daily"].status, records["broken"].status) == ("ok", "failed")
    (refs,) = describe_feedstock(baked.refs, moved)
    (parquet,) = describe_feedstock(baked.parquet, moved)
    assert [r.status for r in refs.runs] == [r.status for r in parquet.runs] == ["succeeded"]
    assert refs.runs[0].id != parquet.runs[0].id


@pytest.mark.parametrize(
    ("license", "url"),
    [
        ("CC-BY-4.0", "https://creativecommons.org/licenses/by/4.0/"),
        ("Unlicense", "https://spdx.org/licenses/Unlicense.html"),
        ("etalab-2.0", "https://spdx.org/licenses/etalab-2.0.html"),
        ("cc-by-sa-3.0", "https://spdx.org/licenses/CC-BY-SA-3.0.html"),
        ("Custom-Terms", None),
        ("MIT OR Apache-2.0", None),
        ("LicenseRef-Mine", None),
    ],
)
def test_a_license_links_to_its_spdx_page_only_when_it_is_an_spdx_id(license, url):
    assert license_url(license) == url


@pytest.mark.parametrize(
    ("license", "stac_license", "link"),
    [
        ("Unlicense", "Unlicense", "https://spdx.org/licenses/Unlicense.html"),
        ("ODbL", "other", "https://opendatacommons.org/licenses/odbl/1-0/"),
        ("Custom-Terms", "other", None),
    ],
)
def test_stac_license_is_an_spdx_id_or_other(zarr_records, license, stac_license, link):
    record = zarr_records["monthly"].model_copy(deep=True)
    record.license, record.license_url = license, license_url(license)
    found = stac.collection(record, thumbnail=False).to_dict()
    links = [x["href"] for x in found["links"] if x["rel"] == "license"]
    assert (found["license"], links) == (stac_license, [link] if link else [])
