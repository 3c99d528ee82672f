"""Reference bakes to an S3 object store (a moto server on loopback): kerchunk JSON and
Parquet staged and published there, appended to, checked and validated from there."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import s3fs
import xarray as xr

from arcoforge import bake
from arcoforge.core.ledger import STAGED, Ledger
from arcoforge.core.runs import RUNS_FOLDER
from arcoforge.errors import AppendError, TargetError
from arcoforge.references.formats.parquet import ParquetFormat
from arcoforge.testing.archives import break_archive, write_oisst_archive
from arcoforge.testing.recipes import FORMATS, ref_recipe
from arcoforge.validate import checker_for


@pytest.fixture
def days(tmp_path):
    return write_oisst_archive(tmp_path / "src", days=8, ny=12, nx=24)


def open_s3_references(url: str, options: dict) -> xr.Dataset:
    """The references at ``url`` opened by xarray through fsspec's reference file system."""
    consolidated = url.endswith(".json")  # Parquet's .zmetadata is its own
    fo = {"fo": url, "target_options": options, "remote_protocol": "file"}
    return xr.open_dataset(
        "reference://",
        engine="zarr",
        chunks=None,
        backend_kwargs={"consolidated": consolidated, "zarr_format": 2, "storage_options": fo},
    )


def assert_equals_sources(url: str, options: dict, paths) -> None:
    """Every variable of the references on S3 equals the inputs read directly by xarray."""
    src = xr.concat(
        [xr.open_dataset(p).load() for p in paths],
        dim="time",
        data_vars="minimal",
        coords="minimal",
        compat="override",
    )
    with open_s3_references(url, options) as out:
        assert set(out.variables) == set(src.variables)
        for name, var in src.variables.items():
            got = out[name].transpose(*var.dims).values
            assert got.shape == var.shape, name
            np.testing.assert_array_equal(got.astype(var.dtype), var.values, err_msg=name)
        assert out.attrs == src.attrs


def objects(options: dict, root: str) -> dict[str, bytes]:
    """Every object under ``root`` but the run records, by key, with its bytes."""
    fs = s3fs.S3FileSystem(**options)
    fs.invalidate_cache()
    paths = [p for p in fs.find(root.removeprefix("s3://")) if f"/{RUNS_FOLDER}/" not in p]
    return {p: fs.cat_file(p) for p in paths}


@pytest.mark.parametrize("name", FORMATS)
def test_bake_to_s3_equals_sources_and_rebake_is_a_no_op(days, s3, bucket, name):
    result = bake(ref_recipe(days, name), bucket, workers=2, storage_options=s3)
    assert result.url == f"{bucket}/ref/{name}"
    assert result.stats["validated_inputs"] == 2
    assert_equals_sources(result.url, s3, days)
    stored = objects(s3, bucket)
    assert not [k for k in stored if ".partial" in k], "the staged references are removed"
    again = bake(ref_recipe(days, name), bucket, workers=2, storage_options=s3)
    assert again.stats == {"up_to_date": True}
    assert objects(s3, bucket) == stored


@pytest.mark.parametrize("name", FORMATS)
def test_append_on_s3_adds_the_new_inputs(days, s3, bucket, name):
    bake(ref_recipe(days[:5], name, record_size=2), bucket, workers=2, storage_options=s3)
    grown = bake(ref_recipe(days, name, record_size=2), bucket, storage_options=s3, append=True)
    assert grown.inputs == 3
    assert grown.dims["time"] == 8
    assert_equals_sources(grown.url, s3, days)
    stored = objects(s3, bucket)
    assert not [k for k in stored if ".partial" in k]
    again = bake(ref_recipe(days, name, record_size=2), bucket, storage_options=s3, append=True)
    assert again.stats.get("up_to_date")
    assert objects(s3, bucket) == stored


def test_parquet_append_on_s3_keeps_the_records_it_shares(days, s3, bucket):
    recipe = ref_recipe(days[:4], "reference.parquet", record_size=2)
    url = bake(recipe, bucket, storage_options=s3).url
    before = objects(s3, url)
    grown = ref_recipe(days, "reference.parquet", record_size=2)
    bake(grown, bucket, storage_options=s3, append=True)
    after = objects(s3, url)
    for record in ("sst/refs.0.parq", "sst/refs.1.parq"):
        key = f"{url.removeprefix('s3://')}/{record}"
        assert after[key] == before[key]
    assert f"{url.removeprefix('s3://')}/sst/refs.3.parq" in after
    assert_equals_sources(url, s3, days)


@pytest.mark.parametrize("name", FORMATS)
def test_refused_append_leaves_the_s3_objects_unchanged(days, s3, bucket, name):
    bake(ref_recipe(days[:4], name), bucket, storage_options=s3)
    before = objects(s3, bucket)
    gap = [*days[:4], days[5]]
    with pytest.raises(AppendError, match="leaves a gap after") as info:
        bake(ref_recipe(gap, name), bucket, storage_options=s3, append=True)
    assert str(days[5]) in str(info.value)
    assert objects(s3, bucket) == before
    assert_equals_sources(f"{bucket}/ref/{name}", s3, days[:4])


@pytest.mark.parametrize("name", FORMATS)
def test_validate_on_s3_passes_then_reports_a_corrupted_and_a_missing_input(
    tmp_path, s3, bucket, name
):
    paths = write_oisst_archive(tmp_path / "src", days=4, ny=18, nx=36)
    recipe = ref_recipe(paths, name)
    url = bake(recipe, bucket, workers=2, storage_options=s3).url
    check = checker_for(url, s3)
    healthy = check(url, storage_options=s3, against=recipe, full=True)
    assert healthy.ok, healthy.findings
    assert "4 of 4 inputs equal the store" in str(healthy.checks)

    offset, size = break_archive(paths)

    report = check(url, storage_options=s3, full=True)
    text = "\n".join(report.findings)
    assert not report.ok
    assert f"file://{paths[-1]}: missing (4 references, first anom/3.0.0)" in text
    chunk = f"sst/0.0.0 (bytes {offset}-{offset + size} of file://{paths[0]}) does not decode"
    assert chunk in text


@pytest.mark.parametrize("name", FORMATS)
def test_cli_validate_reads_references_on_s3(days, s3, bucket, name):
    url = bake(ref_recipe(days, name), bucket, workers=2, storage_options=s3).url
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": s3["key"],
        "AWS_SECRET_ACCESS_KEY": s3["secret"],
        "AWS_ENDPOINT_URL": s3["client_kwargs"]["endpoint_url"],
        "AWS_DEFAULT_REGION": s3["client_kwargs"]["region_name"],
    }
    command = [sys.executable, "-m", "arcoforge.cli", "validate", url, "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and report["url"] == url
    assert "references in bounds" in str(report["checks"])


@pytest.mark.parametrize("name", FORMATS)
def test_leftover_staged_references_are_cleared(days, s3, bucket, name):
    fs = s3fs.S3FileSystem(**s3)
    staged = f"{bucket.removeprefix('s3://')}/ref/.{name}.partial"
    ledger = Ledger(f"{bucket}/ref/{name}", s3)  # what vouches for them, written first
    ledger.write({"fingerprint": "another", "status": "staging"}, STAGED)
    fs.pipe_file(staged, b"left by an interrupted bake")
    fs.pipe_file(f"{staged}/sst/refs.9.parq", b"left by an interrupted bake")
    url = bake(ref_recipe(days, name), bucket, workers=2, storage_options=s3).url
    assert not [k for k in objects(s3, bucket) if ".partial" in k]
    assert_equals_sources(url, s3, days)


def test_a_missing_bucket_is_one_line_naming_the_url(days, s3):
    with pytest.raises(TargetError) as info:
        bake(ref_recipe(days), "s3://no-such-bucket/refs", storage_options=s3)
    message = str(info.value)
    assert message.startswith("s3://no-such-bucket/refs/") and "\n" not in message
    assert "bucket does not exist" in message


def test_publishing_parquet_on_s3_is_repeatable_and_drops_stale_records(s3, bucket):
    fs = s3fs.S3FileSystem(**s3)
    url, staging = f"{bucket}/ref/r.parquet", f"{bucket}/ref/.r.parquet.partial"
    for key in ("sst/refs.0.parq", "sst/refs.1.parq", ".zmetadata"):
        fs.pipe_file(f"{url}/{key}", f"old {key}".encode())
    for key in ("sst/refs.0.parq", ".zmetadata"):
        fs.pipe_file(f"{staging}/{key}", f"new {key}".encode())
    store = ParquetFormat(url, staging, storage_options=s3)
    store.publish()
    store.publish()  # an interrupted bake publishes again
    root = url.removeprefix("s3://")
    assert objects(s3, bucket) == {
        f"{root}/sst/refs.0.parq": b"new sst/refs.0.parq",
        f"{root}/.zmetadata": b"new .zmetadata",
    }
