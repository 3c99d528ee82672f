"""arcoforge never deletes, renames or writes into what it did not make: a store, a folder
of references or a staging name holding something else is refused before anything is
written, and left byte for byte; what an interrupted ``--force`` staged is removed by the
next bake that finds the store up to date."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import s3fs
import xarray as xr

from arcoforge import bake
from arcoforge.core.ledger import STAGED, Ledger, NotOursError
from arcoforge.core.runs import RUNS_FOLDER
from arcoforge.references.formats.base import KerchunkFormat
from arcoforge.references.plan import ReferencePlan
from arcoforge.testing.archives import write_oisst_archive
from arcoforge.testing.cli import NAME, arcoforge, error_line
from arcoforge.testing.compare import assert_same_as_sources
from arcoforge.testing.recipes import ref_recipe, simple_recipe
from arcoforge.zarr.plan import ZarrPlan

MOVE_IT = "move it away or choose another store name"
FLAGS = {"plain": {}, "force": {"force": True}, "append": {"append": True}}


@pytest.fixture(scope="module")
def days(tmp_path_factory) -> list[Path]:
    return write_oisst_archive(tmp_path_factory.mktemp("src"), days=4, ny=18, nx=36)


def files(root: Path) -> dict[str, str]:
    """Every file and folder under ``root``, with the sha256 of each file's bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else "folder"
        for p in sorted(root.rglob("*"))
    }


def objects(options: dict, root: str) -> dict[str, bytes]:
    """Every object under ``root``, by key, with its bytes."""
    fs = s3fs.S3FileSystem(**options)
    fs.invalidate_cache()
    return {p: fs.cat_file(p) for p in fs.find(root.removeprefix("s3://"))}


def foreign_zarr(url: str, storage_options: dict | None = None) -> None:
    """A Zarr store someone else wrote."""
    ds = xr.Dataset({"theirs": ("x", np.arange(5.0))}, attrs={"by": "someone else"})
    ds.to_zarr(url, storage_options=storage_options, zarr_format=3, consolidated=False)


def put_foreign(path: Path, kind: str) -> None:
    """Something arcoforge did not make at ``path``: a Zarr store, a plain file, a JSON
    file, a folder of the user's files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "zarr store":
        foreign_zarr(str(path))
    elif kind == "plain file":
        path.write_bytes(b"my notes, not a store\n")
    elif kind == "json file":
        path.write_text(json.dumps({"version": 1, "refs": {"mine": "yes"}}))
    else:
        path.mkdir()
        (path / "thesis.txt").write_text("chapter 1\n")


def refused(recipe, root, expected: str, storage_options=None, **flags) -> None:
    """Baking ``recipe`` raises :class:`NotOursError` whose message is ``expected``."""
    with pytest.raises(NotOursError) as info:
        bake(recipe, root, workers=1, storage_options=storage_options, **flags)
    assert str(info.value) == expected


def not_ours(url, folder) -> str:
    return f"{url}: not made by arcoforge (no manifest of ours in {folder}); {MOVE_IT}"


def replaced(url, folder) -> str:
    cause = f"it is not the store {folder}/manifest.json records"
    return f"{url}: not made by arcoforge ({cause}); {MOVE_IT}"


def foreign_staging(url, folder) -> str:
    cause = f"no staging manifest of ours in {folder}/staging"
    return f"{url}: not made by arcoforge ({cause}); {MOVE_IT}"


# -- a foreign thing at the store's name: refused, nothing written --------------------


@pytest.mark.parametrize("flag", FLAGS)
@pytest.mark.parametrize("kind", ["zarr store", "plain file", "json file", "folder"])
def test_zarr_bake_refuses_a_foreign_store_and_writes_nothing(days, tmp_path, kind, flag):
    root = tmp_path / "out"
    put_foreign(root / "sst.zarr", kind)
    before = files(root)
    expected = not_ours(root / "sst.zarr", root / ".sst.zarr.arcoforge")
    refused(simple_recipe(days, "sst.zarr"), root, expected, **FLAGS[flag])
    assert files(root) == before, "not one byte written, renamed or removed"


@pytest.mark.parametrize("flag", FLAGS)
@pytest.mark.parametrize(
    "name, kind",
    [
        ("reference.json", "json file"),
        ("reference.json", "folder"),
        ("reference.parquet", "zarr store"),
        ("reference.parquet", "plain file"),
    ],
)
def test_reference_bake_refuses_foreign_references(days, tmp_path, name, kind, flag):
    root = tmp_path / "out"
    put_foreign(root / "ref" / name, kind)
    before = files(root)
    url = root / "ref" / name
    expected = not_ours(url, root / "ref" / f".{name}.arcoforge")
    refused(ref_recipe(days, name), root, expected, **FLAGS[flag])
    assert files(root) == before


@pytest.mark.parametrize("name", ["reference.json", "reference.parquet"])
@pytest.mark.parametrize("kind", ["zarr store", "plain file"])
def test_reference_bake_refuses_a_foreign_store_folder(days, tmp_path, name, kind):
    """TARGET_ROOT/STORE_NAME is the folder references go into: a foreign store or file
    there is not written into."""
    root = tmp_path / "out"
    put_foreign(root / "ref", kind)
    before = files(root)
    cause = "it holds theirs, which is not ours" if kind == "zarr store" else "a file, not a folder"
    expected = f"{root / 'ref'}: not made by arcoforge ({cause}); {MOVE_IT}"
    for flags in FLAGS.values():
        refused(ref_recipe(days, name), root, expected, **flags)
    assert files(root) == before


@pytest.mark.parametrize("kind", ["zarr store", "plain file", "icechunk repository"])
def test_icechunk_bake_refuses_a_foreign_repository(days, tmp_path, kind):
    root = tmp_path / "ic"
    if kind == "icechunk repository":
        icechunk = pytest.importorskip("icechunk")
        icechunk.Repository.create(icechunk.local_filesystem_storage(str(root / "ref")))
    else:
        put_foreign(root / "ref", kind)
    before = files(root)
    expected = not_ours(root / "ref", root / ".ref.arcoforge")
    for flags in FLAGS.values():
        refused(ref_recipe(days), f"icechunk://{root}", expected, **flags)
    assert files(root) == before


@pytest.mark.parametrize("flag", FLAGS)
def test_zarr_bake_on_s3_refuses_a_foreign_store(days, s3, bucket, flag):
    foreign_zarr(f"{bucket}/sst.zarr", s3)
    before = objects(s3, bucket)
    expected = not_ours(f"{bucket}/sst.zarr", f"{bucket}/.sst.zarr.arcoforge")
    refused(simple_recipe(days, "sst.zarr"), bucket, expected, s3, **FLAGS[flag])
    assert objects(s3, bucket) == before, "no object written, copied over or removed"


@pytest.mark.parametrize("flag", FLAGS)
@pytest.mark.parametrize("name", ["reference.json", "reference.parquet"])
def test_reference_bake_on_s3_refuses_foreign_references(days, s3, bucket, name, flag):
    fs = s3fs.S3FileSystem(**s3)
    url = f"{bucket}/ref/{name}"
    if name.endswith(".json"):
        fs.pipe_file(url, b'{"version": 1, "refs": {}}')
    else:
        fs.pipe_file(f"{url}/.zmetadata", b'{"record_size": 10, "metadata": {}}')
    before = objects(s3, bucket)
    expected = not_ours(url, f"{bucket}/ref/.{name}.arcoforge")
    refused(ref_recipe(days, name), bucket, expected, s3, **FLAGS[flag])
    assert objects(s3, bucket) == before


def test_reference_bake_on_s3_refuses_a_foreign_zarr_store_as_its_folder(days, s3, bucket):
    foreign_zarr(f"{bucket}/ref", s3)
    before = objects(s3, bucket)
    expected = (
        f"{bucket}/ref: not made by arcoforge (it holds theirs, which is not ours); {MOVE_IT}"
    )
    refused(ref_recipe(days), bucket, expected, s3)
    assert objects(s3, bucket) == before


def test_cli_refuses_a_foreign_store_in_one_line(feedstock, tmp_path):
    out = tmp_path / "out"
    put_foreign(out / f"{NAME}.zarr", "zarr store")
    before = files(out)
    for flags in ([], ["--force"], ["--append"]):
        proc = arcoforge("bake", NAME, "--target-root", "out", *flags, cwd=tmp_path)
        line = error_line(proc, rc=1)
        store = out / f"{NAME}.zarr"
        assert line == f"error: {not_ours(store, out / f'.{NAME}.zarr.arcoforge')}"
    assert files(out) == before


# -- a foreign thing at a staging name -----------------------------------------------


@pytest.mark.parametrize("force", [False, True])
def test_a_foreign_file_at_the_zarr_staging_name_is_refused(days, tmp_path, force):
    root = tmp_path / "out"
    first = bake(simple_recipe(days, "sst.zarr"), root, workers=1)
    put_foreign(root / ".sst.zarr.partial", "plain file")
    before = files(root)
    folder = root / ".sst.zarr.arcoforge"
    expected = foreign_staging(root / ".sst.zarr.partial", folder)
    refused(simple_recipe(days, "sst.zarr"), root, expected, force=force)
    assert files(root) == before
    assert_same_as_sources(first.url, days)


@pytest.mark.parametrize("name", ["reference.json", "reference.parquet"])
def test_a_foreign_folder_at_the_reference_staging_name_is_refused(days, tmp_path, name):
    root = tmp_path / "out"
    put_foreign(root / "ref" / f".{name}.partial", "folder")
    before = files(root)
    folder = root / "ref" / f".{name}.arcoforge"
    expected = foreign_staging(root / "ref" / f".{name}.partial", folder)
    refused(ref_recipe(days, name), root, expected)
    assert files(root) == before


def test_a_foreign_object_at_the_zarr_staging_name_on_s3_is_refused(days, s3, bucket):
    fs = s3fs.S3FileSystem(**s3)
    fs.pipe_file(f"{bucket}/.sst.zarr.partial", b"mine")
    before = objects(s3, bucket)
    folder = f"{bucket}/.sst.zarr.arcoforge"
    expected = foreign_staging(f"{bucket}/.sst.zarr.partial", folder)
    refused(simple_recipe(days, "sst.zarr"), bucket, expected, s3, force=True)
    assert objects(s3, bucket) == before


# -- our store deleted and something else put in its place ----------------------------


@pytest.mark.parametrize("force", [False, True])
def test_a_store_replaced_by_a_foreign_one_is_refused_despite_its_manifest(days, tmp_path, force):
    root = tmp_path / "out"
    bake(simple_recipe(days, "sst.zarr"), root, workers=1)
    shutil.rmtree(root / "sst.zarr")
    put_foreign(root / "sst.zarr", "zarr store")
    before = files(root)
    expected = replaced(root / "sst.zarr", root / ".sst.zarr.arcoforge")
    refused(simple_recipe(days, "sst.zarr"), root, expected, force=force)
    assert files(root) == before


@pytest.mark.parametrize("name", ["reference.json", "reference.parquet"])
def test_references_replaced_by_foreign_ones_are_refused(days, tmp_path, name):
    root = tmp_path / "out"
    url = Path(bake(ref_recipe(days, name), root, workers=1).url)
    shutil.rmtree(url) if url.is_dir() else url.unlink()
    put_foreign(url, "json file" if name.endswith(".json") else "zarr store")
    before = files(root)
    expected = replaced(url, root / "ref" / f".{name}.arcoforge")
    for flags in FLAGS.values():
        refused(ref_recipe(days, name), root, expected, **flags)
    assert files(root) == before


def test_an_icechunk_repository_replaced_by_another_is_refused(days, tmp_path):
    icechunk = pytest.importorskip("icechunk")
    root = tmp_path / "ic"
    url = bake(ref_recipe(days), f"icechunk://{root}", workers=1).url
    shutil.rmtree(url)
    icechunk.Repository.create(icechunk.local_filesystem_storage(url))
    before = files(root)
    expected = replaced(url, root / ".ref.arcoforge")
    refused(ref_recipe(days), f"icechunk://{root}", expected, force=True)
    assert files(root) == before


def test_a_store_on_s3_whose_metadata_someone_rewrote_is_refused(days, s3, bucket):
    url = bake(simple_recipe(days[:2], "sst.zarr"), bucket, workers=1, storage_options=s3).url
    fs = s3fs.S3FileSystem(**s3)
    fs.pipe_file(f"{url}/zarr.json", b'{"zarr_format": 3, "node_type": "group"}')
    before = objects(s3, bucket)
    expected = replaced(url, f"{bucket}/.sst.zarr.arcoforge")
    refused(simple_recipe(days, "sst.zarr"), bucket, expected, s3, force=True)
    assert objects(s3, bucket) == before


# -- stores we made are still replaced and appended to ---------------------------------


def test_force_replaces_our_store_and_leaves_nothing_aside(days, tmp_path):
    root = tmp_path / "out"
    first = bake(simple_recipe(days, "sst.zarr"), root, workers=1)
    stamp = (Path(first.url) / "zarr.json").stat().st_mtime_ns
    forced = bake(simple_recipe(days, "sst.zarr"), root, workers=1, force=True)
    assert (Path(forced.url) / "zarr.json").stat().st_mtime_ns != stamp
    assert_same_as_sources(forced.url, days)
    assert sorted(p.name for p in root.iterdir()) == [
        RUNS_FOLDER,
        ".sst.zarr.arcoforge",
        "sst.zarr",
    ]
    kept = {p.name for p in (root / ".sst.zarr.arcoforge").iterdir()}
    assert "manifest.json" in kept and not kept & {"replaced", "staging"}


def test_a_rebake_on_s3_replaces_our_store_without_stale_chunks(days, s3, bucket):
    first = simple_recipe(days[:3], "sst.zarr", chunks={"time": 1})
    bake(first, bucket, workers=1, storage_options=s3)
    assert f"{bucket.removeprefix('s3://')}/sst.zarr/sst/c/2/0/0" in objects(s3, bucket)
    second = simple_recipe(days[:3], "sst.zarr", chunks={"time": 2})
    url = bake(second, bucket, workers=1, storage_options=s3).url
    keys = {k.rsplit("sst.zarr/", 1)[-1] for k in objects(s3, url)}
    assert "sst/c/1/0/0" in keys and "sst/c/2/0/0" not in keys, "the old chunks are removed"
    assert not [k for k in objects(s3, bucket) if ".partial" in k]
    with xr.open_zarr(url, storage_options=s3) as ds:
        assert ds.sst.encoding["chunks"][0] == 2
        assert_same_as_sources(ds, days[:3])


@pytest.mark.parametrize("name", ["reference.json", "reference.parquet"])
def test_force_and_append_still_work_on_our_references_on_s3(days, s3, bucket, name):
    bake(ref_recipe(days[:2], name), bucket, storage_options=s3)
    grown = bake(ref_recipe(days, name), bucket, storage_options=s3, append=True)
    assert grown.inputs == 2
    forced = bake(ref_recipe(days, name), bucket, storage_options=s3, force=True)
    assert forced.dims["time"] == 4
    again = bake(ref_recipe(days, name), bucket, storage_options=s3)
    assert again.stats == {"up_to_date": True}


# -- an interrupted --force leaves no orphan -------------------------------------------

SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys
    from pathlib import Path
    from arcoforge import OpenWithXarray, StoreToZarr, bake, pattern_from_file_sequence

    src, target, counter = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    kill_at, flag = int(sys.argv[4]), sys.argv[5]
    urls = sorted(str(p) for p in Path(src).glob("*.nc"))

    def count_calls(ds):
        fd = os.open(counter, os.O_CREAT | os.O_APPEND | os.O_WRONLY)
        os.write(fd, b"x")
        calls = os.lseek(fd, 0, os.SEEK_CUR)
        os.close(fd)
        if kill_at and calls >= kill_at:
            os.killpg(0, signal.SIGKILL)
        return ds

    recipe = (
        pattern_from_file_sequence(urls, "time", nitems_per_file=1)
        | OpenWithXarray()
        | count_calls
        | StoreToZarr("sst.zarr", target_chunks={"time": 1})
    )
    flags = {flag: True} if flag != "plain" else {}
    print(json.dumps(bake(recipe, target, workers=1, **flags).stats))
    """
)


def run_script(tmp_path: Path, days, target: Path, kill_at: int, flag: str):
    """Bake in a process group of its own, killed by SIGKILL on call ``kill_at`` of the
    preprocessing step (one call per input in the scan, one for the template, then the
    write stage's)."""
    script = tmp_path / "bake_it.py"
    script.write_text(SCRIPT)
    counter = tmp_path / "calls"
    counter.unlink(missing_ok=True)
    args = [str(script), str(days[0].parent), str(target), str(counter), str(kill_at), flag]
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=120,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )


@pytest.mark.parametrize("flag", ["plain", "append"])
def test_an_interrupted_force_leaves_no_partial_beside_an_up_to_date_store(days, tmp_path, flag):
    root = tmp_path / "out"
    assert run_script(tmp_path, days, root, 0, "plain").returncode == 0
    published = files(root / "sst.zarr")
    killed = run_script(tmp_path, days, root, len(days) + 3, "force")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    staged = Ledger(str(root / "sst.zarr")).read(STAGED)
    assert staged["status"] == "writing", "killed in the write stage"
    assert (root / ".sst.zarr.partial" / "zarr.json").exists()
    again = run_script(tmp_path, days, root, 0, flag)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {"up_to_date": True}
    assert not (root / ".sst.zarr.partial").exists(), "the orphan is removed"
    assert not (root / ".sst.zarr.arcoforge" / "staging").exists()
    assert files(root / "sst.zarr") == published


class Killed(BaseException):
    """Stands for the bake's process being killed at that point."""


def _die(*args, **kwargs):
    raise Killed


@pytest.mark.parametrize("root_kind", ["json", "parquet", "icechunk"])
def test_an_interrupted_forced_reference_bake_leaves_no_staging(
    days, tmp_path, monkeypatch, root_kind
):
    name = "reference.json" if root_kind != "parquet" else "reference.parquet"
    root = f"icechunk://{tmp_path / 'ic'}" if root_kind == "icechunk" else tmp_path / "out"
    if root_kind == "icechunk":
        pytest.importorskip("icechunk")
    url = bake(ref_recipe(days, name), root, workers=1).url
    ledger = Ledger(url)
    with monkeypatch.context() as patched:
        patched.setattr(ReferencePlan, "count_checked", _die)  # after the references are staged
        with pytest.raises(Killed):
            bake(ref_recipe(days, name), root, workers=1, force=True)
    assert ledger.read(STAGED)["status"] == "staging"
    if root_kind != "icechunk":
        assert Path(ledger.staging_store).exists()
    again = bake(ref_recipe(days, name), root, workers=1)
    assert again.stats == {"up_to_date": True}
    assert not Path(ledger.staging_store).exists()
    assert ledger.read(STAGED) is None
    if root_kind == "icechunk":
        icechunk = pytest.importorskip("icechunk")
        repo = icechunk.Repository.open(icechunk.local_filesystem_storage(url))
        assert repo.list_branches() == {"main"}, "the staging branch is dropped"


@pytest.mark.parametrize("name", ["reference.json", "reference.parquet"])
def test_a_reference_bake_killed_while_publishing_is_finished_by_the_next(
    days, tmp_path, monkeypatch, name
):
    root = tmp_path / "out"
    bake(ref_recipe(days[:2], name), root, workers=1)
    with monkeypatch.context() as patched:
        patched.setattr(KerchunkFormat, "publish", _die)
        with pytest.raises(Killed):
            bake(ref_recipe(days, name), root, workers=1, force=True)
    url = root / "ref" / name
    assert Ledger(str(url)).read(STAGED)["status"] == "complete"
    again = bake(ref_recipe(days, name), root, workers=1)
    assert "up_to_date" not in again.stats, "a publish that stopped is never up to date"
    assert again.dims["time"] == 4
    assert sorted(p.name for p in (root / "ref").iterdir()) == [
        RUNS_FOLDER,
        f".{name}.arcoforge",
        name,
    ]


def test_a_first_icechunk_bake_killed_after_creating_the_repository_is_redone(
    days, tmp_path, monkeypatch
):
    pytest.importorskip("icechunk")
    root = f"icechunk://{tmp_path / 'ic'}"
    with monkeypatch.context() as patched:
        patched.setattr(ReferencePlan, "count_checked", _die)
        with pytest.raises(Killed):
            bake(ref_recipe(days), root, workers=1)
    assert (tmp_path / "ic" / "ref").is_dir(), "the repository was made in place"
    result = bake(ref_recipe(days), root, workers=1)
    assert result.dims["time"] == 4
    assert bake(ref_recipe(days), root, workers=1).stats == {"up_to_date": True}


@pytest.mark.parametrize("first, then", [("force", "append"), ("append", "force")])
def test_an_interrupted_bake_is_not_resumed_as_another_kind(
    days, tmp_path, monkeypatch, first, then
):
    """A forced full bake and an append of the same pattern stage at the same name: the
    one interrupted is cleared by the other, never resumed as it (which left fill values
    where the inputs' data belongs)."""
    root = tmp_path / "out"
    bake(simple_recipe(days[:2], "sst.zarr"), root, workers=1)
    with monkeypatch.context() as patched:
        patched.setattr(ZarrPlan, "count_written", _die)  # once the write tasks are done
        with pytest.raises(Killed):
            bake(simple_recipe(days, "sst.zarr"), root, workers=1, **{first: True})
    assert (root / ".sst.zarr.partial").exists()
    result = bake(simple_recipe(days, "sst.zarr"), root, workers=1, **{then: True})
    assert result.stats["tasks_resumed"] == 0
    assert_same_as_sources(result.url, days)
    assert not (root / ".sst.zarr.partial").exists()


def test_an_interrupted_force_on_s3_leaves_no_staged_objects(days, s3, bucket, monkeypatch):
    recipe = simple_recipe(days[:2], "sst.zarr")
    url = bake(recipe, bucket, workers=1, storage_options=s3).url
    root = bucket.removeprefix("s3://")
    published = objects(s3, url)
    with monkeypatch.context() as patched:
        patched.setattr(ZarrPlan, "count_written", _die)
        with pytest.raises(Killed):
            bake(recipe, bucket, workers=1, storage_options=s3, force=True)
    assert [k for k in objects(s3, bucket) if k.startswith(f"{root}/.sst.zarr.partial/")]
    again = bake(recipe, bucket, workers=1, storage_options=s3)
    assert again.stats == {"up_to_date": True}
    left = objects(s3, bucket)
    assert not [k for k in left if ".partial" in k or "/staging/" in k]
    assert objects(s3, url) == published
