"""Shared fixtures: generated archives and real HTTP and S3 servers on loopback."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from arcoforge import OpenURLWithFSSpec, OpenWithXarray, StoreToZarr, pattern_from_file_sequence
from arcoforge.core.runs import RUNS_FOLDER
from arcoforge.testing.archives import write_oisst_archive
from arcoforge.testing.httpserver import FileServer


@pytest.fixture(scope="session", autouse=True)
def state_dir(tmp_path_factory):
    """Run records go to a temporary state folder, never to the real home's."""
    with pytest.MonkeyPatch.context() as mp:
        folder = tmp_path_factory.mktemp("state")
        mp.setenv("ARCOFORGE_STATE_DIR", str(folder))
        yield folder


@pytest.fixture
def small_archive(tmp_path: Path) -> list[Path]:
    """Eight daily OISST-like files on an 18x36 grid."""
    return write_oisst_archive(tmp_path / "src", days=8, ny=18, nx=36)


@pytest.fixture
def served(small_archive):
    """The small archive on a plain loopback HTTP server."""
    with FileServer(small_archive[0].parent) as server:
        yield server


@pytest.fixture(scope="session")
def s3():
    """Storage options of an S3 server (moto, on loopback) holding the bucket "bakery";
    one for the session, as moto keeps its buckets in the process."""
    import s3fs
    from moto import server as moto_server

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    options = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": f"http://{host}:{port}", "region_name": "eu-west-1"},
    }
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir("bakery")
    yield options
    server.stop()


@pytest.fixture
def bucket(s3, request):
    """A fresh prefix in the bucket for each test."""
    return f"s3://bakery/{request.module.__name__}/{request.node.name}"


def simple_recipe(urls, store="out.zarr", chunks=None, **pattern_kwargs):
    """``urls`` concatenated along time, one step each, into ``store``."""
    pattern = pattern_from_file_sequence(
        [str(u) for u in urls], "time", nitems_per_file=1, **pattern_kwargs
    )
    return (
        pattern
        | OpenURLWithFSSpec(retry_delay=0.01)
        | OpenWithXarray()
        | StoreToZarr(store, target_chunks=chunks or {"time": 3})
    )


def assert_same_as_sources(
    store, paths, concat_dim: str = "time", decoded: bool = False, **open_kwargs
):
    """Every variable and coordinate of the store (a URL or an opened dataset) equals the
    sources read directly by xarray, as xarray's own ``to_zarr`` of them reads back (the
    source encoding kept: a float32 ``scale_factor`` becomes a JSON number, so packed
    variables read back as float64); with ``decoded``, as xarray decodes the sources."""
    out = store if isinstance(store, xr.Dataset) else xr.open_zarr(store)
    src = xr.concat(
        [xr.open_dataset(p, **open_kwargs).load() for p in paths],
        dim=concat_dim,
        data_vars="minimal",
        coords="minimal",
        compat="override",
    )
    if not decoded:
        src = xarray_to_zarr(src)
    assert set(out.variables) == set(src.variables)
    for name, var in src.variables.items():
        got = out[name].transpose(*var.dims).values
        want = var.values
        assert got.dtype == want.dtype, name
        if want.dtype.kind == "f":
            np.testing.assert_array_equal(got, want, err_msg=name)
        else:
            assert (got == want).all(), name
    return out, src


def xarray_to_zarr(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` written by ``xarray.Dataset.to_zarr`` with its defaults and read back."""
    with tempfile.TemporaryDirectory() as folder:
        ds.to_zarr(f"{folder}/xarray.zarr", consolidated=False)
        return xr.open_zarr(f"{folder}/xarray.zarr", consolidated=False).load()


def nothing_baked(target: Path) -> bool:
    """No store, staged or published, under ``target``: at most the records beside one,
    and the run records."""
    return not target.exists() or all(
        p.name.endswith(".arcoforge") or p.name == RUNS_FOLDER for p in target.iterdir()
    )
