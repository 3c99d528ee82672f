"""Shared fixtures: generated archives and real HTTP and S3 servers on loopback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from arcoforge.testing.archives import write_oisst_archive
from arcoforge.testing.cli import NAME, arcoforge, ok
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


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A feedstock written by ``arcoforge init`` (copy it before changing it)."""
    root = tmp_path_factory.mktemp("init")
    proc = ok(arcoforge("init", NAME, cwd=root))
    assert f"arcoforge lint {NAME}" in proc.stdout
    return root / NAME


@pytest.fixture
def feedstock(template, tmp_path) -> Path:
    """A private copy of the template feedstock under ``tmp_path``."""
    return Path(shutil.copytree(template, tmp_path / NAME))
