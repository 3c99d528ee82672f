"""Fetching inputs over HTTP: authentication, secrets, retries, the cache and per-host limits.

Every bake here runs against a real loopback server (arcoforge.testing.httpserver) and is
compared value for value with the source files read directly by xarray.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import aiohttp
import pytest

from arcoforge import OpenURLWithFSSpec, OpenWithXarray, StoreToZarr, bake
from arcoforge.errors import SourceError
from arcoforge.recipe.patterns import pattern_from_file_sequence
from arcoforge.sources.cache import Cache
from arcoforge.sources.secrets import MASK, redact, secret_values, with_query_secrets
from arcoforge.testing.compare import assert_same_as_sources, files_containing, nothing_baked
from arcoforge.testing.credentials import PASSWORD, TOKEN, USER
from arcoforge.testing.httpserver import Faults, FileServer, urls_on
from arcoforge.testing.recipes import simple_recipe


def fetch_recipe(urls, store="out.zarr", pattern_kwargs=None, **fetch_kwargs):
    """Like ``simple_recipe``, with options of the fetch step (retries, limits...)."""
    pattern = pattern_from_file_sequence(urls, "time", nitems_per_file=1, **(pattern_kwargs or {}))
    fetch_kwargs.setdefault("retry_delay", 0.01)
    return (
        pattern
        | OpenURLWithFSSpec(**fetch_kwargs)
        | OpenWithXarray()
        | StoreToZarr(store, target_chunks={"time": 3})
    )


def body_requests(server: FileServer, paths) -> int:
    """How many requests (HEAD or GET) the server received for the source files."""
    names = {f"/{Path(p).name}" for p in paths}
    return sum(r.split("?")[0] in names for r in server.requests)


def assert_one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text, text
    return text


# -- plain HTTP and authentication -------------------------------------------------------


def test_http_bake_equals_sources(served, small_archive, tmp_path):
    result = bake(simple_recipe(urls_on(served, small_archive)), tmp_path / "out", workers=2)
    assert result.inputs == 8
    assert result.dims == {"time": 8, "lat": 18, "lon": 36}
    assert result.stats["validated_inputs"] == 2
    assert_same_as_sources(result.url, small_archive)
    # every file was fetched once (a HEAD for its size, a GET for its bytes)
    assert body_requests(served, small_archive) == 2 * len(small_archive)


@pytest.mark.parametrize(
    "open_kwargs",
    [
        {"username": USER, "password": PASSWORD},
        {"client_kwargs": {"auth": aiohttp.BasicAuth(USER, PASSWORD)}},
    ],
    ids=["username-password", "aiohttp-basic-auth"],
)
def test_basic_auth_bake_equals_sources(small_archive, tmp_path, open_kwargs):
    with FileServer(small_archive[0].parent, auth=(USER, PASSWORD)) as server:
        recipe = simple_recipe(urls_on(server, small_archive), fsspec_open_kwargs=open_kwargs)
        result = bake(recipe, tmp_path / "out", workers=1)
    assert_same_as_sources(result.url, small_archive)
    assert files_containing(tmp_path / "out", PASSWORD.encode()) == []


def test_missing_credentials_fail_with_401_naming_the_url(small_archive, tmp_path):
    with FileServer(small_archive[0].parent, auth=(USER, PASSWORD)) as server:
        urls = urls_on(server, small_archive)
        with pytest.raises(SourceError) as info:
            bake(simple_recipe(urls), tmp_path / "out", workers=1)
        requests = len(server.requests)
    text = assert_one_line(info.value)
    assert urls[0] in text
    assert "401" in text and "not found" not in text
    # a refusal is not retried: one HEAD, then fsspec's GET fallback for the size
    assert requests <= 2
    assert nothing_baked(tmp_path / "out")


def test_wrong_password_fails_with_401_and_is_not_echoed(small_archive, tmp_path):
    wrong = "wr0ng-pa55-Z"
    with FileServer(small_archive[0].parent, auth=(USER, PASSWORD)) as server:
        recipe = simple_recipe(
            urls_on(server, small_archive), fsspec_open_kwargs={"username": USER, "password": wrong}
        )
        with pytest.raises(SourceError) as info:
            bake(recipe, tmp_path / "out", workers=1)
    text = assert_one_line(info.value)
    assert "401" in text and wrong not in text


def test_http_errors_from_worker_processes_reach_the_driver(small_archive, tmp_path):
    """With several workers the error is raised in a worker process and sent back.

    ``import dask`` installs tblib's exception pickling, which also pickles each error's
    ``__context__``; users with dask imported (most notebooks) bake this way.
    """
    import dask  # noqa: F401

    with FileServer(small_archive[0].parent, auth=(USER, PASSWORD)) as server:
        urls = urls_on(server, small_archive)
        with pytest.raises(SourceError) as info:
            bake(simple_recipe(urls), tmp_path / "out", workers=2)
    text = assert_one_line(info.value)
    assert "401" in text and any(u in text for u in urls)


def test_headers_from_open_kwargs_are_sent(small_archive, tmp_path):
    headers = {"X-Api-Key": "k3y-value-42"}
    with FileServer(small_archive[0].parent, required_headers=headers) as server:
        urls = urls_on(server, small_archive)
        with pytest.raises(SourceError) as info:
            bake(simple_recipe(urls), tmp_path / "refused", workers=1)
        assert "403" in assert_one_line(info.value)
        recipe = simple_recipe(urls, fsspec_open_kwargs={"headers": headers})
        result = bake(recipe, tmp_path / "out", workers=2)
    assert_same_as_sources(result.url, small_archive)
    assert files_containing(tmp_path, b"k3y-value-42") == []


# -- query-string secrets ------------------------------------------------------------


def test_query_string_secret_is_sent_but_never_written(small_archive, tmp_path):
    cache = tmp_path / "cache"
    with FileServer(small_archive[0].parent, token=TOKEN) as server:
        recipe = simple_recipe(
            urls_on(server, small_archive), query_string_secrets={"token": TOKEN}
        )
        result = bake(recipe, tmp_path / "target", cache=str(cache), workers=2)
        sent = list(server.requests)
    assert_same_as_sources(result.url, small_archive)
    # it was sent with every request...
    assert len(sent) == 2 * len(small_archive)
    assert all(f"token={TOKEN}" in r for r in sent)
    # ...and appears in nothing arcoforge wrote or returned
    assert any(cache.rglob("*.json")) and any((tmp_path / "target").rglob("zarr.json"))
    assert files_containing(tmp_path / "target", TOKEN.encode()) == []
    assert files_containing(cache, TOKEN.encode()) == []
    assert TOKEN not in repr(result)


@pytest.mark.parametrize("workers", [1, 2])
def test_query_string_secret_is_not_in_errors(small_archive, tmp_path, workers):
    with FileServer(small_archive[0].parent, token=TOKEN) as server:
        urls = [*urls_on(server, small_archive[:3]), f"{server.url}/no-such-file.nc"]
        recipe = fetch_recipe(urls, pattern_kwargs={"query_string_secrets": {"token": TOKEN}})
        with pytest.raises(SourceError) as info:
            bake(recipe, tmp_path / "out", cache=str(tmp_path / "cache"), workers=workers)
        assert any("no-such-file.nc?" in r and TOKEN in r for r in server.requests)
    text = assert_one_line(info.value)
    assert urls[-1] in text and "not found" in text.lower()
    assert TOKEN not in text and TOKEN not in repr(info.value)
    assert files_containing(tmp_path, TOKEN.encode()) == []


def test_secret_given_to_the_fetch_step_is_used(small_archive, tmp_path):
    with FileServer(small_archive[0].parent, token=TOKEN) as server:
        recipe = fetch_recipe(urls_on(server, small_archive), secrets={"token": TOKEN})
        result = bake(recipe, tmp_path / "out", workers=1)
    assert_same_as_sources(result.url, small_archive)
    assert files_containing(tmp_path / "out", TOKEN.encode()) == []


# -- retries -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("faults", "workers"),
    [
        (Faults(error_rate=0.5, max_faults_per_path=2, seed=1), 2),
        (Faults(reset_rate=0.5, max_faults_per_path=2, seed=2), 1),
        (Faults(truncate_rate=0.5, max_faults_per_path=2, seed=3), 2),
        (Faults(error_rate=0.2, reset_rate=0.2, truncate_rate=0.2, max_faults_per_path=2), 2),
    ],
    ids=["errors", "resets", "truncations", "mixed"],
)
def test_transient_faults_are_retried(small_archive, tmp_path, faults, workers):
    with FileServer(small_archive[0].parent, faults=faults) as server:
        recipe = simple_recipe(urls_on(server, small_archive))
        result = bake(recipe, tmp_path / "out", workers=workers)
        requests = len(server.requests)
    assert_same_as_sources(result.url, small_archive)
    assert requests > 2 * len(small_archive)  # faults happened and were retried


@pytest.mark.parametrize(
    ("faults", "expected"),
    [
        (Faults(error_rate=1.0), "HTTP 50"),
        (Faults(reset_rate=1.0), "attempts"),
        (Faults(truncate_rate=1.0), "attempts"),
    ],
    ids=["errors", "resets", "truncations"],
)
def test_persistent_faults_fail_after_the_retries(small_archive, tmp_path, faults, expected):
    with FileServer(small_archive[0].parent, faults=faults) as server:
        urls = urls_on(server, small_archive[:2])
        with pytest.raises(SourceError) as info:
            bake(fetch_recipe(urls, retries=1), tmp_path / "out", workers=1)
    text = assert_one_line(info.value)
    assert urls[0] in text
    assert expected in text and "(after 2 attempts)" in text
    assert nothing_baked(tmp_path / "out")


# -- the cache -----------------------------------------------------------------------


def test_second_bake_with_the_same_cache_fetches_nothing(served, small_archive, tmp_path):
    cache = tmp_path / "cache"
    recipe = simple_recipe(urls_on(served, small_archive))
    first = bake(recipe, tmp_path / "one", cache=str(cache), workers=2)
    fetched = len(served.requests)
    assert body_requests(served, small_archive) == 2 * len(small_archive)
    second = bake(recipe, tmp_path / "two", cache=str(cache), workers=1)
    assert len(served.requests) == fetched
    assert_same_as_sources(first.url, small_archive)
    assert_same_as_sources(second.url, small_archive)


def test_cache_sidecar_records_size_and_sha256(served, small_archive, tmp_path):
    cache = tmp_path / "cache"
    urls = urls_on(served, small_archive)
    bake(simple_recipe(urls), tmp_path / "out", cache=str(cache), workers=2)
    entries = Cache(cache)
    for url, path in zip(urls, small_archive, strict=True):
        entry = entries.path_for(url)
        data = path.read_bytes()
        assert entry.read_bytes() == data
        meta = json.loads(entry.with_name(entry.name + ".json").read_text())
        assert meta["size"] == len(data)
        assert meta["sha256"] == hashlib.sha256(data).hexdigest()
        assert meta["url"] == url
    # nothing half-written is left behind
    assert [f for f in cache.iterdir() if f.name.endswith(".part")] == []


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_cache_entry_is_detected_and_refetched(served, small_archive, tmp_path, damage):
    cache = tmp_path / "cache"
    urls = urls_on(served, small_archive)
    bake(simple_recipe(urls), tmp_path / "one", cache=str(cache), workers=1)
    entry = Cache(cache).path_for(urls[3])
    data = bytearray(entry.read_bytes())
    if damage == "flip":
        middle = len(data) // 2
        data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    else:
        del data[len(data) // 2 :]
    entry.write_bytes(bytes(data))
    before = len(served.requests)
    result = bake(simple_recipe(urls), tmp_path / "two", cache=str(cache), workers=2)
    refetched = served.requests[before:]
    assert refetched and set(refetched) == {f"/{small_archive[3].name}"}
    assert entry.read_bytes() == small_archive[3].read_bytes()
    assert_same_as_sources(result.url, small_archive)


# -- per-host connection limits --------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 2])
def test_connections_per_host_are_limited_across_workers(small_archive, tmp_path, limit):
    faults = Faults(stall_seconds=0.3, max_faults_per_path=1)
    paths = small_archive[:4]
    with FileServer(small_archive[0].parent, faults=faults) as server:
        recipe = fetch_recipe(urls_on(server, paths), max_connections_per_host=limit)
        result = bake(recipe, tmp_path / "out", workers=2)
        peak = server.max_concurrent()
    assert_same_as_sources(result.url, paths)
    # every file's first request stalls 0.3 s, so two workers overlap unless limited
    assert peak == limit


# -- arcoforge.secrets ---------------------------------------------------------------


def test_with_query_secrets_appends_to_the_query():
    assert with_query_secrets("https://h/a.nc", None) == "https://h/a.nc"
    assert with_query_secrets("https://h/a.nc", {}) == "https://h/a.nc"
    assert with_query_secrets("https://h/a.nc", {"token": "t1"}) == "https://h/a.nc?token=t1"
    assert (
        with_query_secrets("https://h/a.nc?v=2&x=", {"token": "t1", "key": "k"})
        == "https://h/a.nc?v=2&x=&token=t1&key=k"
    )
    assert with_query_secrets("https://h/a.nc#frag", {"token": "a b/c"}) == (
        "https://h/a.nc?token=a+b%2Fc#frag"
    )


def test_redact_masks_secrets_and_userinfo():
    assert redact("https://bob:hunter22@host/x.nc") == f"https://bob:{MASK}@host/x.nc"
    assert redact("ftp://u:p@h/a and s3://k:s@b/c") == f"ftp://u:{MASK}@h/a and s3://k:{MASK}@b/c"
    assert redact("https://host/x.nc?token=abc123", ["abc123"]) == (
        f"https://host/x.nc?token={MASK}"
    )
    # the longest secret is masked first, so no tail of it survives
    assert redact("key abcdef and abc", ["abc", "abcdef"]) == f"key {MASK} and {MASK}"
    assert redact("nothing to hide", ["absent"]) == "nothing to hide"


def test_secret_values_finds_secrets_in_options():
    found = secret_values(
        {"token": "tok-1", "x": "ab"},
        {
            "password": "pw-2",
            "username": "not-a-secret",
            "headers": {"Authorization": "Bearer abc", "X-Api-Key": "key-3"},
            "client_kwargs": {"auth": aiohttp.BasicAuth("u", "pw-4")},
        },
    )
    assert {"tok-1", "pw-2", "Bearer abc", "key-3", "pw-4"} <= set(found)
    assert "ab" not in found and "not-a-secret" not in found  # too short / not a secret


@pytest.mark.parametrize("token", ["abc+def/ghi==", "pass word&more"])
def test_redact_masks_secrets_inside_the_urls_that_carry_them(token):
    """Tokens go into URLs percent-encoded; an error quoting such a URL must not leak them."""
    secrets = {"token": token}
    url = with_query_secrets("https://host/data/a.nc", secrets)
    text = redact(f"Connection timeout to host {url}", secret_values(secrets))
    assert url.split("token=")[1] not in text
    assert MASK in text


def test_query_string_secret_is_in_no_file_or_log_line_of_a_faulty_bake(small_archive, tmp_path):
    """Faults, a skipped input and a failed retry: the secret reaches the server and nothing
    else (store, ledger, run records, state folder, JSON log lines, errors)."""
    import io
    import os

    from arcoforge.core.progress import JsonReporter

    log = io.StringIO()
    faults = Faults(
        error_rate=0.2, reset_rate=0.1, truncate_rate=0.1, seed=7, max_faults_per_path=2
    )
    with FileServer(small_archive[0].parent, token=TOKEN, faults=faults) as server:
        urls = [*urls_on(server, small_archive[:5]), f"{server.url}/no-such-file.nc"]
        secret = {"query_string_secrets": {"token": TOKEN}}
        first = bake(
            simple_recipe(urls, **secret),
            tmp_path / "out",
            workers=2,
            skip_failed=True,
            reporter=JsonReporter(log),
        )
        assert first.stats["missing_inputs"] == [urls[-1]]
        with pytest.raises(SourceError) as info:  # the missing file is still missing
            bake(
                simple_recipe(urls, **secret),
                tmp_path / "out",
                workers=2,
                retry_failed=True,
                reporter=JsonReporter(log),
            )
        assert urls[-1] in str(info.value) and TOKEN not in str(info.value)
        assert any(TOKEN in r for r in server.requests)
    state = Path(os.environ["ARCOFORGE_STATE_DIR"])
    assert any((tmp_path / "out").rglob("*.json")) and any(state.rglob("*.json"))
    assert files_containing(tmp_path, TOKEN.encode()) == []
    assert files_containing(state, TOKEN.encode()) == []
    assert log.getvalue() and TOKEN not in log.getvalue()
