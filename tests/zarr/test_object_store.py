"""Bakes to an S3 object store (a moto server on loopback): publishing copies chunks first
and metadata last, the lock is an object, re-bakes are no-ops, appends patch the store."""

from __future__ import annotations

import json

import pytest
import s3fs
import xarray as xr

from arcoforge import bake
from arcoforge.core.ledger import LockedError
from arcoforge.core.runs import RUNS_FOLDER
from arcoforge.testing.compare import assert_same_as_sources
from arcoforge.testing.recipes import simple_recipe
from arcoforge.validate.zarr import validate_store


def test_bake_to_s3_and_rebake_is_a_no_op(small_archive, s3, bucket):
    result = bake(simple_recipe(small_archive), bucket, workers=2, storage_options=s3)
    assert result.url == f"{bucket}/out.zarr"
    assert_same_as_sources(xr.open_zarr(result.url, storage_options=s3), small_archive)
    fs = s3fs.S3FileSystem(**s3)
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(bucket.removeprefix("s3://")))
    assert names == [RUNS_FOLDER, ".out.zarr.arcoforge", "out.zarr"], "staging store removed"
    again = bake(simple_recipe(small_archive), bucket, workers=2, storage_options=s3)
    assert again.stats == {"up_to_date": True}


def test_append_on_s3(small_archive, s3, bucket):
    bake(simple_recipe(small_archive[:5]), bucket, workers=2, storage_options=s3)
    grown = bake(simple_recipe(small_archive), bucket, workers=2, storage_options=s3, append=True)
    assert grown.inputs == 3
    assert_same_as_sources(xr.open_zarr(grown.url, storage_options=s3), small_archive)


def test_lock_object_refuses_a_second_bake(small_archive, s3, bucket):
    fs = s3fs.S3FileSystem(**s3)
    lock = f"{bucket.removeprefix('s3://')}/.out.zarr.arcoforge/lock"
    fs.pipe_file(lock, b"pid 1 on elsewhere since 2026-11-25T07:00:00")
    with pytest.raises(LockedError, match=r"being baked by another process \(pid 1 on elsewhere"):
        bake(simple_recipe(small_archive), bucket, workers=1, storage_options=s3)
    fs.rm_file(lock)
    result = bake(simple_recipe(small_archive), bucket, workers=1, storage_options=s3)
    assert_same_as_sources(xr.open_zarr(result.url, storage_options=s3), small_archive)
    assert not fs.exists(lock), "the lock is removed when the bake ends"


def test_audit_and_run_record_on_s3(small_archive, s3, bucket):
    recipe = simple_recipe(small_archive)
    result = bake(recipe, bucket, workers=2, storage_options=s3)
    assert_same_as_sources(xr.open_zarr(result.url, storage_options=s3), small_archive)
    report = validate_store(result.url, storage_options=s3, against=recipe, full=True)
    assert report.ok, report.findings
    fs = s3fs.S3FileSystem(**s3)
    fs.rm_file(f"{result.url.removeprefix('s3://')}/ice/c/1/0/0")
    damaged = validate_store(result.url, storage_options=s3)
    assert damaged.findings == ["ice: chunk c/1/0/0 is missing"]
    [path] = fs.find(f"{bucket.removeprefix('s3://')}/{RUNS_FOLDER}")
    record = json.loads(fs.cat_file(path))
    assert record["status"] == "succeeded" and record["target"] == result.url
    assert "testing" not in json.dumps(record), "the store's credentials are masked"
