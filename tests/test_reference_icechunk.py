"""Icechunk virtual stores: the same recipes with an ``icechunk://`` target root."""

from __future__ import annotations

import pytest
import xarray as xr
from test_reference_append import digest
from test_references import assert_matches_sources, ref_recipe

from arcoforge import bake
from arcoforge.references.store import open_references
from arcoforge.testing.archives import write_oisst_archive
from arcoforge.updates import AppendError

icechunk = pytest.importorskip("icechunk", reason="Icechunk targets need the [icechunk] extra")


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
