"""Inputs that change after a bake are noticed: the next bake (or append) bakes again the
parts of the store they feed, and only those; a deleted input stops the bake with the
store untouched; --assume-unchanged skips the check and says so."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import xarray as xr

from arcoforge import (
    ConcatDim,
    FilePattern,
    MergeDim,
    OpenWithXarray,
    StoreToZarr,
    bake,
    pattern_from_file_sequence,
)
from arcoforge.bake.changes import UNCHECKED, InputDeletedError
from arcoforge.core.ledger import Ledger
from arcoforge.core.progress import JsonReporter
from arcoforge.core.runs import RUNS_FOLDER
from arcoforge.errors import ChangedInputError, SourceError
from arcoforge.references.store import open_references
from arcoforge.sources import FetchConfig
from arcoforge.sources.lookup import identities_now
from arcoforge.testing.archives import write_merge_archive, write_oisst_archive
from arcoforge.testing.compare import (
    assert_matches_sources,
    assert_same_as_sources,
    file_digests,
    xarray_to_zarr,
)
from arcoforge.testing.ensembles import members_combined, one_member_per_file
from arcoforge.testing.httpserver import Faults, FileServer
from arcoforge.testing.recipes import ref_recipe, references_recipe, simple_recipe

GRID = {"ny": 18, "nx": 36}


@pytest.fixture
def archive(tmp_path) -> list[Path]:
    return write_oisst_archive(tmp_path / "src", days=8, **GRID)


@pytest.fixture
def other_values(tmp_path) -> list[Path]:
    """The same days and grid as ``archive``, other values."""
    return write_oisst_archive(tmp_path / "alt", days=8, seed=7, **GRID)


def baked(files, target: Path, **kwargs):
    return bake(simple_recipe(files, chunks={"time": 3}), target, workers=2, **kwargs)


def rewrite(path: Path, source: Path) -> None:
    """Replace ``path``'s bytes by ``source``'s, as a data provider republishing it does."""
    shutil.copyfile(source, path)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def manifest(url: str) -> dict:
    return Ledger(url).read()


def test_a_rewritten_input_has_only_the_chunks_it_feeds_baked_again(
    archive, other_values, tmp_path
):
    store = Path(baked(archive, tmp_path / "out").url)
    before, times = file_digests(store / "sst"), mtimes(store / "sst")
    rewrite(archive[4], other_values[4])  # time 4: in the chunk of steps 3..5
    result = baked(archive, tmp_path / "out")
    assert result.stats["changed_inputs"] == [str(archive[4])]
    assert_same_as_sources(result.url, archive)
    after, later = file_digests(store / "sst"), mtimes(store / "sst")
    for key in ("c/0/0/0", "c/2/0/0"):
        assert after[key] == before[key] and later[key] == times[key], key
    assert after["c/1/0/0"] != before["c/1/0/0"]
    recorded = manifest(result.url)["identities"][4]
    assert recorded["mtime_ns"] == archive[4].stat().st_mtime_ns
    again = baked(archive, tmp_path / "out")
    assert again.stats["up_to_date"] and "changed_inputs" not in again.stats


def test_a_touched_input_is_baked_again_into_the_same_bytes(archive, tmp_path):
    store = Path(baked(archive, tmp_path / "out").url)
    before = file_digests(store)
    stat = archive[0].stat()
    os.utime(archive[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    result = baked(archive, tmp_path / "out")
    assert result.stats["changed_inputs"] == [str(archive[0])]
    after = file_digests(store)
    assert {k: v for k, v in after.items() if "sst" in k} == {
        k: v for k, v in before.items() if "sst" in k
    }


def test_the_run_record_names_the_changed_inputs(archive, other_values, tmp_path):
    baked(archive, tmp_path / "out")
    rewrite(archive[7], other_values[7])
    baked(archive, tmp_path / "out")
    records = [json.loads(p.read_text()) for p in (tmp_path / "out" / RUNS_FOLDER).glob("*.json")]
    last = max(records, key=lambda record: record["started"])
    assert last["changed_inputs"] == [str(archive[7])]
    assert last["status"] == "succeeded"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "arcoforge.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
        timeout=120,
    )


def first_line(text: str) -> str:
    """The first line that is not blank (the progress display leaves one on stderr)."""
    return next(line for line in text.splitlines() if line.strip())


def feedstock(folder: Path, urls: list[str], store: str = "out.zarr") -> Path:
    """A feedstock whose recipe concatenates ``urls`` along time, three steps a chunk."""
    folder.mkdir(parents=True)
    (folder / "meta.yaml").write_text(
        "title: changed\ndescription: changed inputs\nrecipes:\n  - id: sst\n"
        "    object: recipe:recipe\nprovenance:\n  providers:\n    - name: test\n"
        "      roles: [producer]\n  license: CC-BY-4.0\n"
        "maintainers:\n  - name: test\n    github: test\n"
    )
    (folder / "recipe.py").write_text(
        "from arcoforge import OpenURLWithFSSpec, OpenWithXarray, StoreToZarr, "
        "pattern_from_file_sequence\n\n"
        f"pattern = pattern_from_file_sequence({urls!r}, 'time', nitems_per_file=1)\n"
        "recipe = pattern | OpenURLWithFSSpec(retry_delay=0.01) | OpenWithXarray() | "
        f"StoreToZarr({store!r}, target_chunks={{'time': 3}})\n"
    )
    return folder


def test_a_deleted_input_stops_the_bake_and_leaves_the_store(archive, tmp_path):
    stock = feedstock(tmp_path / "stock", [str(p) for p in archive])
    target = tmp_path / "out"
    assert cli("bake", str(stock), "--target-root", str(target), "--workers", "2").returncode == 0
    before = file_digests(target)
    archive[5].unlink()
    done = cli("bake", str(stock), "--target-root", str(target), "--workers", "2")
    assert done.returncode == 1
    assert first_line(done.stderr) == (
        f"error: input {archive[5]} was deleted since the store was baked (file not found); "
        "the published store is left as it was"
    )
    assert "Traceback" not in done.stderr
    assert file_digests(target) == before


def test_assume_unchanged_skips_the_check_and_says_so(archive, other_values, tmp_path):
    stock = feedstock(tmp_path / "stock", [str(p) for p in archive])
    target = tmp_path / "out"
    assert cli("bake", str(stock), "--target-root", str(target), "--workers", "2").returncode == 0
    before = file_digests(target)
    rewrite(archive[2], other_values[2])
    archive[3].unlink()  # not even looked up
    args = ("bake", str(stock), "--target-root", str(target), "--assume-unchanged")
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    assert first_line(done.stderr) == f"info: {UNCHECKED}"
    assert "up to date" in done.stdout and UNCHECKED in done.stdout
    events = [json.loads(line) for line in cli(*args, "--json").stdout.splitlines()]
    assert {"event": "log", "level": "INFO", "message": UNCHECKED}.items() <= events[0].items()
    assert events[-1]["inputs_unchecked"] is True
    assert file_digests(target) == before


def test_assume_unchanged_in_the_config_file(archive, other_values, tmp_path):
    baked(archive, tmp_path / "out")
    rewrite(archive[2], other_values[2])
    stock = feedstock(tmp_path / "stock", [str(p) for p in archive])
    config = tmp_path / "bake.yaml"
    config.write_text(f"target_root: {tmp_path / 'out'}\nassume_unchanged: true\n")
    done = cli("bake", str(stock), "--config", str(config), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["inputs_unchecked"] is True


def test_an_input_that_no_longer_fits_is_refused(archive, tmp_path):
    baked(archive, tmp_path / "out")
    before = file_digests(tmp_path / "out")
    wider = write_oisst_archive(tmp_path / "wide", days=8, ny=20, nx=36)
    rewrite(archive[1], wider[1])
    with pytest.raises(ChangedInputError) as info:
        baked(archive, tmp_path / "out")
    assert str(info.value) == (
        f"input {archive[1]} changed since the store was baked and no longer fits it: "
        "different grid: 'lat' has 20 points, not 18; the published store is left as it was "
        "(bake it afresh with --force)"
    )
    assert file_digests(tmp_path / "out") == before


def test_an_input_with_other_times_is_refused(archive, tmp_path):
    baked(archive, tmp_path / "out")
    before = file_digests(tmp_path / "out")
    later = write_oisst_archive(tmp_path / "late", days=8, start="1990-01-01", **GRID)
    rewrite(archive[7], later[7])
    with pytest.raises(ChangedInputError) as info:
        baked(archive, tmp_path / "out")
    assert str(info.value) == (
        f"input {archive[7]} changed since the store was baked and no longer fits it: its "
        "time values differ from the store's; the published store is left as it was (bake "
        "it afresh with --force)"
    )
    assert file_digests(tmp_path / "out") == before


def test_a_store_without_identities_gets_them_recorded_not_baked_again(
    archive, other_values, tmp_path
):
    store = Path(baked(archive, tmp_path / "out").url)
    published = manifest(str(store))
    del published["identities"]  # as the previous version wrote it
    Ledger(str(store)).write({k: v for k, v in published.items() if k != "version"})
    before = mtimes(store)
    lines = io.StringIO()
    result = baked(archive, tmp_path / "out", reporter=JsonReporter(lines))
    assert result.stats["up_to_date"] and result.stats["identities_recorded"] == 8
    assert json.loads(lines.getvalue().splitlines()[0])["message"] == (
        "identities of 8 inputs recorded (the store's manifest had none); they are not baked again"
    )
    assert "changed_inputs" not in result.stats
    assert mtimes(store) == before
    assert [i["size"] for i in manifest(str(store))["identities"]] == [
        p.stat().st_size for p in archive
    ]
    rewrite(archive[6], other_values[6])
    again = baked(archive, tmp_path / "out")
    assert again.stats["changed_inputs"] == [str(archive[6])]
    assert_same_as_sources(again.url, archive)


def test_an_append_bakes_the_changed_inputs_again_first(archive, other_values, tmp_path):
    baked(archive[:5], tmp_path / "out")
    rewrite(archive[1], other_values[1])
    result = baked(archive, tmp_path / "out", append=True)
    assert result.stats["changed_inputs"] == [str(archive[1])]
    assert result.inputs == 3, "the append itself reads the new inputs only"
    assert_same_as_sources(result.url, archive)
    assert len(manifest(result.url)["identities"]) == 8


def test_http_inputs_are_checked_by_their_etag(archive, other_values, tmp_path):
    with FileServer(archive[0].parent) as server:
        urls = [f"{server.url}/{p.name}" for p in archive]
        cache = tmp_path / "cache"
        first = baked(urls, tmp_path / "out", cache=str(cache))
        recorded = manifest(first.url)["identities"]
        assert all(i["etag"].startswith('"') and i["sha256"] for i in recorded)
        rewrite(archive[3], other_values[3])
        result = baked(urls, tmp_path / "out", cache=str(cache))
        assert result.stats["changed_inputs"] == [urls[3]]
        assert_same_as_sources(result.url, archive)
        heads = [r for r in server.requests if r.endswith(archive[3].name)]
        assert len(heads) >= 3, "looked up, then fetched again"
        archive[6].unlink()
        with pytest.raises(InputDeletedError) as info:
            baked(urls, tmp_path / "out", cache=str(cache))
        assert str(info.value) == (
            f"input {urls[6]} was deleted since the store was baked (HTTP 404); "
            "the published store is left as it was"
        )


def test_references_of_a_changed_input_are_replaced(archive, other_values, tmp_path):
    first = bake(ref_recipe(archive), tmp_path / "out", workers=2)
    rewrite(archive[2], other_values[2])
    result = bake(ref_recipe(archive), tmp_path / "out", workers=2)
    assert result.stats["changed_inputs"] == [str(archive[2])]
    assert_matches_sources(result.url, archive)
    assert first.url == result.url
    again = bake(ref_recipe(archive), tmp_path / "out", workers=2)
    assert again.stats["up_to_date"] and "changed_inputs" not in again.stats
    archive[0].unlink()
    with pytest.raises(InputDeletedError):
        bake(ref_recipe(archive), tmp_path / "out", workers=2)


def test_an_unreachable_input_stops_the_bake_and_names_it(archive, tmp_path):
    with FileServer(archive[0].parent) as server:
        urls = [f"{server.url}/{p.name}" for p in archive]
        baked(urls, tmp_path / "out", cache=str(tmp_path / "cache"))
    before = file_digests(tmp_path / "out")
    with pytest.raises(SourceError) as info:
        baked(urls, tmp_path / "out", cache=str(tmp_path / "cache"))
    message = str(info.value)
    assert message.startswith(f"cannot check input {urls[0]} for changes: ")
    assert message.endswith(
        "; the published store is left as it was (--assume-unchanged skips the check)"
    )
    assert "\n" not in message
    assert file_digests(tmp_path / "out") == before


def test_s3_inputs_are_checked_by_their_etag(archive, other_values, s3, bucket, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem(**s3)
    urls = [f"{bucket}/src/{p.name}" for p in archive]
    for path, url in zip(archive, urls, strict=True):
        fs.put_file(str(path), url)
    recipe = simple_recipe(urls, chunks={"time": 3}, fsspec_open_kwargs=s3)
    cache = str(tmp_path / "cache")
    first = bake(recipe, tmp_path / "out", workers=2, cache=cache)
    assert all(i["etag"] for i in manifest(first.url)["identities"])
    fs.put_file(str(other_values[5]), urls[5])
    result = bake(recipe, tmp_path / "out", workers=2, cache=cache)
    assert result.stats["changed_inputs"] == [urls[5]]
    assert_same_as_sources(result.url, [*archive[:5], other_values[5], *archive[6:]])
    fs.rm_file(urls[2])
    with pytest.raises(InputDeletedError) as info:
        bake(recipe, tmp_path / "out", workers=2, cache=cache)
    assert str(info.value) == (
        f"input {urls[2]} was deleted since the store was baked (not found); "
        "the published store is left as it was"
    )


@pytest.mark.parametrize("name", ["reference.json", "reference.parquet"])
def test_references_along_a_dim_the_inputs_lack(tmp_path, name):

    pattern = one_member_per_file(tmp_path / "src", "absent", [10, 20, 30])
    bake(references_recipe(pattern, name), tmp_path / "out", workers=1)
    path = Path(pattern.format_function(member=20))
    shutil.copyfile(path, tmp_path / "warmer.nc")
    with netCDF4.Dataset(tmp_path / "warmer.nc", "a") as nc:  # other values, same layout
        nc["tas"][:] = nc["tas"][:] + 1.5
    rewrite(path, tmp_path / "warmer.nc")
    result = bake(references_recipe(pattern, name), tmp_path / "out", workers=1)
    assert result.stats["changed_inputs"] == [str(path)]
    assert result.stats["validated_inputs"] == 1
    src = members_combined(pattern, "absent")
    with open_references(str(tmp_path / "out" / "ref" / name)) as out:
        np.testing.assert_array_equal(out.tas.values, src.tas.values)
        np.testing.assert_array_equal(out.member.values, [10, 20, 30])


def test_references_of_an_input_that_no_longer_fits_are_kept(archive, tmp_path):
    bake(ref_recipe(archive), tmp_path / "out", workers=2)
    before = file_digests(tmp_path / "out")
    wider = write_oisst_archive(tmp_path / "wide", days=8, ny=20, nx=36)
    rewrite(archive[3], wider[3])
    with pytest.raises(ChangedInputError) as info:
        bake(ref_recipe(archive), tmp_path / "out", workers=2)
    assert str(info.value) == (
        f"input {archive[3]} changed since the store was baked and no longer fits it: "
        "'sst' is <i2 of shape [1, 20, 36] in chunks [1, 20, 36], the store's is <i2 of "
        "shape [1, 18, 36] in chunks [1, 18, 36]; the published store is left as it was "
        "(bake it afresh with --force)"
    )
    assert file_digests(tmp_path / "out") == before


def test_lookups_keep_within_the_per_host_connection_limit(archive):
    with FileServer(archive[0].parent, faults=Faults(stall_seconds=0.2)) as server:
        urls = [f"{server.url}/{p.name}" for p in archive]
        found = identities_now(urls, FetchConfig(max_connections_per_host=2))
        assert server.max_concurrent() == 2
    assert [i["size"] for i in found] == [p.stat().st_size for p in archive]
    assert len({i["etag"] for i in found}) == 8


def test_references_append_after_a_change(archive, other_values, tmp_path):
    bake(ref_recipe(archive[:5]), tmp_path / "out", workers=2)
    rewrite(archive[1], other_values[1])
    result = bake(ref_recipe(archive), tmp_path / "out", workers=2, append=True)
    assert result.stats["changed_inputs"] == [str(archive[1])]
    assert_matches_sources(result.url, archive)
    assert [i["size"] for i in manifest(result.url)["identities"]] == [
        p.stat().st_size for p in archive
    ]


def test_the_command_line_names_the_changed_inputs(archive, other_values, tmp_path):
    stock = feedstock(tmp_path / "stock", [str(p) for p in archive])
    args = ("bake", str(stock), "--target-root", str(tmp_path / "out"), "--workers", "2")
    assert cli(*args).returncode == 0
    rewrite(archive[0], other_values[0])
    done = cli(*args, "--json")
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    logs = [e["message"] for e in events if e["event"] == "log"]
    assert logs == [f"{archive[0]} changed since the store was baked: baking again what it feeds"]
    assert events[-1]["event"] == "summary"
    assert events[-1]["changed_inputs"] == [str(archive[0])]
    assert_same_as_sources(str(tmp_path / "out" / "out.zarr"), archive)


def test_inputs_behind_credentials_are_checked_with_them_and_never_written(
    archive, other_values, tmp_path
):
    """The lookups of the check send the recipe's credentials (a password in the URL, a
    query-string secret); the changed input is named masked, and no byte written holds
    either secret."""
    password, token = "s3cr3t-pw-x", "t0ken-q-y"
    with FileServer(archive[0].parent, auth=("ada", password), token=token) as server:
        host = server.url.removeprefix("http://")
        urls = [f"http://ada:{password}@{host}/{p.name}" for p in archive]
        recipe = simple_recipe(urls, chunks={"time": 3}, query_string_secrets={"token": token})
        cache = tmp_path / "cache"
        bake(recipe, tmp_path / "out", workers=2, cache=str(cache))
        rewrite(archive[3], other_values[3])
        result = bake(recipe, tmp_path / "out", workers=2, cache=str(cache))
    assert result.stats["changed_inputs"] == [f"http://ada:***@{host}/{archive[3].name}"]
    assert_same_as_sources(result.url, archive)
    for folder in (tmp_path / "out", cache):
        for path in (p for p in folder.rglob("*") if p.is_file()):
            body = path.read_bytes()
            assert password.encode() not in body and token.encode() not in body, path


DAYS, CHANGED = 24, 10  # day 11 of 24: in the chunk of steps 9..11 (three steps a chunk)


@pytest.fixture
def days(tmp_path) -> tuple[list[Path], list[Path]]:
    """Twenty-four daily inputs, and the same days with other values."""
    src = write_oisst_archive(tmp_path / "src", days=DAYS, **GRID)
    return src, write_oisst_archive(tmp_path / "alt", days=DAYS, seed=7, **GRID)


def rebaked(server: FileServer, bake_once, src: list[Path], alt: list[Path]) -> list:
    """Change input ``CHANGED``, bake again (with ``bake_once``, which returns the inputs
    the bake found changed): the requests of that bake, as (method, path) pairs."""
    rewrite(src[CHANGED], alt[CHANGED])
    server.calls.clear()
    assert bake_once() == [f"{server.url}/{src[CHANGED].name}"]
    return list(server.calls)


def heads_and_gets(calls: list) -> tuple[list[str], list[str]]:
    return (
        sorted(path for method, path in calls if method == "HEAD"),
        sorted(path for method, path in calls if method == "GET"),
    )


def api_baker(urls: list[str], target: Path, **kwargs):
    """A bake of ``urls`` by :func:`arcoforge.bake`."""

    def bake_once() -> list[str] | None:
        return baked(urls, target, **kwargs).stats.get("changed_inputs")

    return bake_once


def cli_baker(stock: Path, target: Path, cache: Path):
    """A bake of ``stock`` by the command line, with ``--cache``."""
    args = ("bake", str(stock), "--target-root", str(target), "--workers", "2")

    def bake_once() -> list[str] | None:
        done = cli(*args, "--cache", str(cache), "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.splitlines()[-1]).get("changed_inputs")

    return bake_once


@pytest.mark.parametrize("cache", ["none", "bake(cache=...)", "--cache"])
def test_a_rebake_over_http_fetches_the_changed_input_only(days, tmp_path, cache):
    """A re-bake of 24 inputs of which 1 changed looks every input up (HEAD) and
    downloads the changed one, once: the other inputs of its chunk are not read, their
    steps keep the store's bytes. Only the chunk it feeds is written again."""
    src, alt = days
    target, store = tmp_path / "out", tmp_path / "out" / "out.zarr"
    with FileServer(src[0].parent) as server:
        urls = [f"{server.url}/{p.name}" for p in src]
        if cache == "--cache":
            bake_once = cli_baker(feedstock(tmp_path / "stock", urls), target, tmp_path / "cache")
        else:
            kwargs = {"cache": str(tmp_path / "cache")} if cache != "none" else {}
            bake_once = api_baker(urls, target, **kwargs)
        bake_once()
        before, times = file_digests(store / "sst"), mtimes(store / "sst")
        calls = rebaked(server, bake_once, src, alt)
    changed = f"/{src[CHANGED].name}"
    heads, gets = heads_and_gets(calls)
    # every input looked up once for the check; the changed one once more, as its
    # download is checked against the size the server gives just before
    assert heads == sorted([*(f"/{p.name}" for p in src), changed])
    # its bytes once: the scan, the write and the check read the downloaded copy
    assert gets == [changed]
    assert manifest(str(store))["identities"][CHANGED]["etag"].startswith('"')
    assert_same_as_sources(str(store), src)
    after, later = file_digests(store / "sst"), mtimes(store / "sst")
    chunks = [k for k in before if k.startswith("c/")]
    assert len(chunks) == DAYS // 3
    for key in chunks:
        same = key != "c/3/0/0"
        assert (after[key] == before[key]) == same and (later[key] == times[key]) == same, key


@pytest.mark.parametrize("cache", [False, True])
def test_a_references_rebake_over_http_rescans_the_changed_input_only(days, tmp_path, cache):
    src, alt = days
    kwargs = {"cache": str(tmp_path / "cache")} if cache else {}
    with FileServer(src[0].parent) as server:
        urls = [f"{server.url}/{p.name}" for p in src]

        def bake_once() -> list[str] | None:
            result = bake(ref_recipe(urls), tmp_path / "out", workers=2, **kwargs)
            return result.stats.get("changed_inputs")

        bake_once()
        calls = rebaked(server, bake_once, src, alt)
        assert_matches_sources(tmp_path / "out" / "ref" / "reference.json", src)
    changed = f"/{src[CHANGED].name}"
    heads, gets = heads_and_gets(calls)
    # every input looked up once for the check; the changed one 3 times more: its
    # identity just before its chunk index is read, the size the scan opens it with, the
    # size its download for the check is checked against
    assert heads == sorted([*(f"/{p.name}" for p in src), *[changed] * 3])
    # the scan reads the small file in one block; the check reads its 4 chunks (sst,
    # anom, err, ice) through the references, and downloads it to read it directly
    assert gets == [changed] * 6


def without_anom(ds):
    return ds.drop_vars("anom")


def with_more(ds):
    return ds.assign(more=ds.sst * 2)


def as_int32(ds):
    sst = ds.sst.fillna(0).astype("int32")
    sst.encoding = {}
    return ds.assign(sst=sst)


def shifted_lat(ds):
    return ds.assign_coords(lat=ds.lat + 0.5)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (without_anom, "variable 'anom' is missing"),
        (with_more, "it has extra variable 'more'"),
        (as_int32, "'sst' has dtype int32, not float64"),
        (shifted_lat, "different values of 'lat'"),
    ],
)
def test_a_changed_input_is_compared_with_the_store(archive, tmp_path, change, problem):
    """The changed input alone is scanned: its misfit is told against the store."""
    baked(archive, tmp_path / "out")
    before = file_digests(tmp_path / "out")
    with xr.open_dataset(archive[4]) as ds:
        change(ds.load()).to_netcdf(tmp_path / "changed.nc")
    rewrite(archive[4], tmp_path / "changed.nc")
    with pytest.raises(ChangedInputError) as info:
        baked(archive, tmp_path / "out")
    assert str(info.value) == (
        f"input {archive[4]} changed since the store was baked and no longer fits it: "
        f"{problem}; the published store is left as it was (bake it afresh with --force)"
    )
    assert file_digests(tmp_path / "out") == before


def test_a_changed_input_that_cannot_be_read_is_skipped_with_skip_failed(
    archive, other_values, tmp_path
):
    """Days 4 and 5 (one chunk) change, day 5 into bytes no opener reads: with
    --skip-failed, day 4 is baked again, day 5's steps become fill values (not its old
    values) and it is recorded as missing."""
    baked(archive, tmp_path / "out")
    rewrite(archive[3], other_values[3])
    (tmp_path / "junk.nc").write_bytes(b"not a netCDF file")
    rewrite(archive[4], tmp_path / "junk.nc")
    result = baked(archive, tmp_path / "out", skip_failed=True)
    assert result.stats["changed_inputs"] == [str(archive[3]), str(archive[4])]
    assert result.stats["missing_inputs"] == [str(archive[4])]
    out = xr.open_zarr(result.url).load()
    kept = [p for i, p in enumerate(archive) if i != 4]
    assert_same_as_sources(out.drop_isel(time=4), kept)
    for name in ("sst", "anom", "err", "ice"):
        assert np.isnan(out[name].isel(time=4).values).all(), name
    assert list(manifest(result.url)["missing"]) == [str(archive[4])]


def test_with_a_merge_dim_the_other_merge_keys_are_scanned_not_written(tmp_path):
    """sst of day 3 changes: ice of day 3 is scanned too (the variables still fit), only
    sst's chunk of days 3 and 4 is written again."""
    files, recipe = merge_recipe(tmp_path)
    store = Path(bake(recipe, tmp_path / "out", workers=2).url)
    times = mtimes(store)
    changed_values(files["sst"][2], lambda ds: ds + 1.5, tmp_path)
    result = bake(recipe, tmp_path / "out", workers=2)
    assert result.stats["changed_inputs"] == [str(files["sst"][2])]
    assert result.inputs == 2
    later = mtimes(store)
    chunks = [k for k in later if k.startswith(("sst/c/", "ice/c/")) and (store / k).is_file()]
    assert sorted(k for k in chunks if later[k] != times[k]) == ["sst/c/1/0/0"]
    with xr.open_zarr(store) as out:
        for name in ("sst", "ice"):
            np.testing.assert_array_equal(out[name].values, sources(files[name], name))


class FailsWhenArmed:
    """A preprocessing step that fails on the ``nth`` opening of ``name`` once
    ``marks/armed`` exists (the scan opens a changed input first, its write task second,
    the check of a sample input third)."""

    def __init__(self, name: str, marks: Path, nth: int):
        self.name, self.marks, self.nth = name, marks, nth
        self.__name__ = "fails_when_armed"

    def __call__(self, ds):
        armed = (self.marks / "armed").exists()
        if armed and ds.encoding.get("source", "").endswith(self.name):
            seen = len(list(self.marks.glob("opened-*"))) + 1
            (self.marks / f"opened-{seen}").touch()
            if seen == self.nth:
                raise OSError("the file went bad")
        return ds


def test_a_rebake_that_fails_while_writing_leaves_the_store(archive, other_values, tmp_path):
    """Days 1 and 7 (chunks 0 and 2) change; the check of day 7 fails after its task wrote
    the new values into the patch: every byte and mtime of the published store is as it
    was, and the next bake finishes the job."""
    marks = tmp_path / "marks"
    marks.mkdir()
    pattern = pattern_from_file_sequence([str(p) for p in archive], "time", 1)
    recipe = (
        pattern
        | OpenWithXarray()
        | FailsWhenArmed(archive[7].name, marks, nth=3)
        | StoreToZarr("out.zarr", target_chunks={"time": 3})
    )
    store = tmp_path / "out" / "out.zarr"
    bake(recipe, tmp_path / "out", workers=2)
    before, times = file_digests(store), mtimes(store)
    for day in (1, 7):
        rewrite(archive[day], other_values[day])
    (marks / "armed").touch()
    with pytest.raises(SourceError) as info:
        bake(recipe, tmp_path / "out", workers=1)  # one task a chunk, one after the other
    assert str(info.value).startswith(f"{archive[7]}: preprocessing fails_when_armed failed: ")
    assert len(list(marks.glob("opened-*"))) == 3  # scanned, written, then the check failed
    patch = tmp_path / "out" / ".out.zarr.partial"
    assert (patch / "sst/c/2/0/0").read_bytes() != (store / "sst/c/2/0/0").read_bytes()
    assert file_digests(store) == before and mtimes(store) == times
    (marks / "armed").unlink()
    result = bake(recipe, tmp_path / "out", workers=2)
    assert_same_as_sources(result.url, archive)


def merge_recipe(tmp_path: Path):
    """Days of sst and ice in separate files, merged; two days a chunk."""
    files = write_merge_archive(tmp_path / "src", days=4, ny=6, nx=12)
    days = [p.name.split("_")[1][:8] for p in files["sst"]]
    pattern = FilePattern(
        lambda variable, time: str(tmp_path / "src" / f"{variable}_{time}.nc"),
        MergeDim("variable", ["sst", "ice"]),
        ConcatDim("time", days, nitems_per_file=1),
    )
    return files, pattern | OpenWithXarray() | StoreToZarr("m.zarr", target_chunks={"time": 2})


def changed_values(path: Path, change, folder: Path) -> None:
    """Rewrite ``path`` with ``change`` applied to its values (same layout)."""
    with xr.open_dataset(path) as ds:
        change(ds.load()).to_netcdf(folder / f"new-{path.name}")
    rewrite(path, folder / f"new-{path.name}")


def spoiled_in_place(path: Path) -> None:
    """Bytes no opener reads, of the same size and mtime: the input looks unchanged."""
    stat = path.stat()
    path.write_bytes(b"\0" * stat.st_size)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def sources(files: list[Path], name: str) -> np.ndarray:
    src = xr.concat([xr.open_dataset(p).load() for p in files], dim="time")
    return xarray_to_zarr(src)[name].values


@pytest.mark.parametrize("ice_changed", [False, True])
def test_an_unread_input_of_another_merge_key_is_neither_missing_nor_fatal(tmp_path, ice_changed):
    """sst of day 3 changes (and with ``ice_changed``, ice of day 4): ice of day 3, scanned
    only to learn ice's variables, cannot be read. With --skip-failed the re-bake takes
    ice's variables from the store: it is not recorded as missing, its steps keep the
    store's values."""
    files, recipe = merge_recipe(tmp_path)
    store = bake(recipe, tmp_path / "out", workers=2).url
    old_ice = sources(files["ice"], "ice")
    changed_values(files["sst"][2], lambda ds: ds + 1.5, tmp_path)
    changed = [files["sst"][2]]
    if ice_changed:
        changed_values(files["ice"][3], lambda ds: ds * 0.5, tmp_path)
        changed.append(files["ice"][3])
    new_ice = sources(files["ice"], "ice")
    spoiled_in_place(files["ice"][2])
    result = bake(recipe, tmp_path / "out", workers=2, skip_failed=True)
    assert result.stats["changed_inputs"] == [str(p) for p in changed]
    assert "missing_inputs" not in result.stats
    assert manifest(store)["missing"] == {}
    with xr.open_zarr(store) as out:
        np.testing.assert_array_equal(out.ice.values[:3], old_ice[:3])
        np.testing.assert_array_equal(out.ice.values[3], new_ice[3])
        assert not np.isnan(out.ice.values[2]).all()
        np.testing.assert_array_equal(out.sst.values[2], sources(files["sst"], "sst")[2])


def test_a_store_on_s3_has_only_the_chunk_a_changed_input_feeds_rewritten(
    archive, other_values, s3, bucket
):
    import s3fs

    fs = s3fs.S3FileSystem(**s3)
    store = f"{bucket.removeprefix('s3://')}/out.zarr"
    baked(archive, bucket, storage_options=s3)
    before = {k: fs.cat_file(f"{store}/sst/c/{k}/0/0") for k in range(3)}
    rewrite(archive[4], other_values[4])
    result = baked(archive, bucket, storage_options=s3)
    assert result.stats["changed_inputs"] == [str(archive[4])]
    assert result.inputs == 1
    assert_same_as_sources(xr.open_zarr(result.url, storage_options=s3), archive)
    after = {k: fs.cat_file(f"{store}/sst/c/{k}/0/0") for k in range(3)}
    assert [after[k] == before[k] for k in range(3)] == [True, False, True]
    assert not fs.exists(f"{bucket.removeprefix('s3://')}/.out.zarr.partial")  # the patch


def test_a_retry_with_an_unread_input_of_another_merge_key_fills_in_the_skipped_one(
    tmp_path,
):
    """sst of day 3 was skipped; it comes back, but ice of day 3 (scanned only to learn
    ice's variables) cannot be read: the retry fills in sst and keeps ice's values."""
    files, recipe = merge_recipe(tmp_path)
    shutil.move(files["sst"][2], tmp_path / "later.nc")
    store = bake(recipe, tmp_path / "out", workers=2, skip_failed=True).url
    assert list(manifest(store)["missing"]) == [str(files["sst"][2])]
    shutil.move(tmp_path / "later.nc", files["sst"][2])
    ice = sources(files["ice"], "ice")
    spoiled_in_place(files["ice"][2])
    result = bake(recipe, tmp_path / "out", workers=2, skip_failed=True, retry_failed=True)
    assert "missing_inputs" not in result.stats
    assert manifest(store)["missing"] == {}
    with xr.open_zarr(store) as out:
        np.testing.assert_array_equal(out.sst.values, sources(files["sst"], "sst"))
        np.testing.assert_array_equal(out.ice.values, ice)
