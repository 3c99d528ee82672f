"""Icechunk virtual stores: the same recipes with an ``icechunk://`` target root."""

from __future__ import annotations

import pytest
import xarray as xr

from arcoforge import bake
from arcoforge.errors import AppendError
from arcoforge.references.store import open_references
from arcoforge.testing.archives import write_oisst_archive
from arcoforge.testing.cli import arcoforge, error_line
from arcoforge.testing.compare import assert_matches_sources, digest
from arcoforge.testing.httpserver import FileServer
from arcoforge.testing.recipes import ref_recipe
from arcoforge.validate.references import validate_references

icechunk = pytest.importorskip("icechunk", reason="Icechunk targets need the [icechunk] extra")
from arcoforge.references.formats.icechunk import ContainerError, virtual_locations  # noqa: E402


def history(path) -> list[str]:
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(path)))
    return [s.message for s in repo.ancestry(branch="main")]


def test_icechunk_equals_sources_and_agrees_with_json_and_parquet(tmp_path):
    paths = write_oisst_archive(tmp_path / "src", days=6, ny=18, nx=36, steps_per_file=2)
    result = bake(ref_recipe(paths), f"icechunk://{tmp_path / 'ic'}", workers=2)
    assert result.stats["validated_inputs"] == 2
    out = assert_matches_sources(result.url, paths)
    for name in ("reference.json", "reference.parquet"):
        other = bake(ref_recipe(paths, name), tmp_path / name).url
        with open_references(other) as ds:
            xr.testing.assert_identical(ds.load(), out)
    messages = history(result.url)
    assert len(messages) == 2  # the repository's first commit and this bake's
    assert messages[0].startswith("arcoforge bake of ref: 3 inputs")
    assert str(paths[0]) in messages[0] and str(paths[-1]) in messages[0]


def test_icechunk_append_and_refusal(tmp_path):
    paths = write_oisst_archive(tmp_path / "src", days=7, ny=12, nx=24)
    root = f"icechunk://{tmp_path / 'ic'}"
    url = bake(ref_recipe(paths[:3]), root).url
    result = bake(ref_recipe(paths[:5]), root, append=True)
    assert result.inputs == 2
    assert_matches_sources(url, paths[:5])
    assert len(history(url)) == 3
    before = digest(tmp_path / "ic" / "ref")
    with pytest.raises(AppendError, match="leaves a gap"):
        bake(ref_recipe([*paths[:5], paths[-1]]), root, append=True)
    assert digest(tmp_path / "ic" / "ref") == before
    assert bake(ref_recipe(paths[:5]), root, append=True).stats.get("up_to_date")
    assert len(history(url)) == 3


def test_icechunk_references_to_http_inputs_on_a_port(tmp_path):
    """Icechunk 1.x keeps a chunk's location without its port: the repository reaches the
    server through a container of the host alone, which readers authorize as it is."""
    paths = write_oisst_archive(tmp_path / "src", days=4, ny=18, nx=36)
    with FileServer(tmp_path / "src") as server:
        urls = [f"{server.url}/{p.name}" for p in paths]
        result = bake(ref_recipe(urls), f"icechunk://{tmp_path / 'ic'}")
        assert result.stats["validated_inputs"] == 2
        out = assert_matches_sources(result.url, paths)
        assert virtual_locations(result.url) == urls
        assert validate_references(result.url, full=True).ok  # no input reported missing
        repo = icechunk.Repository.open(icechunk.local_filesystem_storage(result.url))
        containers = repo.config.virtual_chunk_containers
        assert sorted(containers) == ["http://127.0.0.1/"]
        access = icechunk.containers_credentials({"http://127.0.0.1/": None})
        storage = icechunk.local_filesystem_storage(result.url)
        repo = icechunk.Repository.open(storage, authorize_virtual_chunk_access=access)
        store = repo.readonly_session(branch="main").store
        with xr.open_zarr(store, consolidated=False, chunks=None) as plain:
            xr.testing.assert_identical(plain.load(), out)


def test_icechunk_refuses_inputs_it_cannot_tell_apart_before_writing(tmp_path):
    paths = write_oisst_archive(tmp_path / "src", days=4, ny=18, nx=36)
    root, store = f"icechunk://{tmp_path / 'ic'}", tmp_path / "ic" / "ref"
    secure = [f"https://127.0.0.1:8443/{p.name}" for p in paths]
    with pytest.raises(ContainerError) as info:
        bake(ref_recipe(secure), root)
    assert str(info.value) == (
        f"{secure[0]}: Icechunk {icechunk.__version__} drops the port from virtual chunk "
        "locations, which arcoforge can route around over http only; "
        "write JSON or Parquet references"
    )
    assert not (tmp_path / "ic").exists()
    with FileServer(tmp_path / "src") as one, FileServer(tmp_path / "src") as other:
        urls = [f"{one.url}/{p.name}" for p in paths[:2]]
        urls += [f"{other.url}/{p.name}" for p in paths[2:]]
        with pytest.raises(ContainerError) as info:
            bake(ref_recipe(urls), root)
        assert str(info.value) == (
            f"{urls[2]}: Icechunk {icechunk.__version__} drops the port from virtual chunk "
            f"locations, so one repository cannot point into both {one.url} and "
            f"{other.url}; write JSON or Parquet references"
        )
        assert not (tmp_path / "ic").exists()
        bake(ref_recipe(urls[:2]), root)
        before = digest(store)
        moved = [f"{other.url}/{p.name}" for p in paths]  # the server, now on another port
        with pytest.raises(ContainerError) as info:
            bake(ref_recipe(moved), root, append=True)
        assert str(info.value) == (
            f"{moved[0]}: Icechunk {icechunk.__version__} drops the port from virtual chunk "
            f"locations, so one repository cannot point into both {one.url} and "
            f"{other.url}; write JSON or Parquet references"
        )
        assert digest(store) == before


FEEDSTOCK = """\
title: ports
description: inputs on https at a port
recipes:
  - id: refs
    object: "recipe:refs"
provenance:
  providers:
    - name: test
      roles: [producer]
  license: CC-BY-4.0
maintainers:
  - name: Test
    github: test
"""

RECIPE = """\
from arcoforge import *

refs = (
    pattern_from_file_sequence({urls!r}, "time")
    | OpenWithKerchunk()
    | WriteCombinedReference("refs")
)
"""


def test_the_cli_refuses_https_on_a_port_to_icechunk_in_one_line(tmp_path):
    urls = [f"https://127.0.0.1:8443/{i}.nc" for i in range(2)]
    (tmp_path / "feed").mkdir()
    (tmp_path / "feed" / "meta.yaml").write_text(FEEDSTOCK)
    (tmp_path / "feed" / "recipe.py").write_text(RECIPE.format(urls=urls))
    done = arcoforge("bake", "feed", "--target-root", "icechunk://ic", cwd=tmp_path)
    assert error_line(done, rc=1) == (
        f"error: {urls[0]}: Icechunk {icechunk.__version__} drops the port from virtual chunk "
        "locations, which arcoforge can route around over http only; "
        "write JSON or Parquet references"
    )
    assert not (tmp_path / "ic").exists()
