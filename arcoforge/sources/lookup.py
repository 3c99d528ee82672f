"""Look up inputs' identities (see :mod:`arcoforge.sources.identity`): as a scan reads an
input, and now, to tell whether it changed since."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import fsspec

from arcoforge.sources.cache import Cache
from arcoforge.sources.fetch import FetchConfig, fs_options, is_remote, retryable
from arcoforge.sources.identity import Gone, from_info
from arcoforge.sources.limits import host_slot

THREADS = 32  # info calls in flight at once, at most (and per host, its connection limit)


def scanned_identity(url: str, config: FetchConfig) -> dict:
    """The identity of the bytes a scan of ``url`` reads: a local file's as it is, a cached
    remote input's as its server described it when the cached copy was downloaded."""
    if is_remote(url) and config.cache:
        entry = Cache(config.cache).entry(url)
        if entry is not None:
            return {**entry.get("source", {}), "size": entry["size"], "sha256": entry["sha256"]}
    return identity_now(url, config)


def identity_now(url: str, config: FetchConfig) -> dict:
    """The identity of ``url`` now, from one ``info`` call (with the fetch's options and
    credentials); raises :class:`Gone` if it is not there."""
    if not is_remote(url):
        path = url.removeprefix("file://")
        try:
            stat = os.stat(path)
        except FileNotFoundError as exc:
            raise Gone("file not found") from exc
        if os.path.isdir(path):  # a Zarr input: its folder's entries
            return {"mtime_ns": stat.st_mtime_ns}
        return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    fs, path = fsspec.core.url_to_fs(config.request_url(url), **fs_options(url, config))
    try:
        return from_info(fs.info(path))
    except FileNotFoundError as exc:
        http = urlsplit(url).scheme.lower() in ("http", "https")
        cause = exc.__cause__ if http else None
        status = getattr(cause, "status", None)
        if isinstance(cause, Exception) and status != 404:
            raise cause from exc  # fsspec's HTTP info wraps any failure (401, 503...)
        raise Gone("HTTP 404" if status == 404 else "not found") from exc


def identities_now(urls: Sequence[str], config: FetchConfig) -> list[dict | Exception]:
    """The identity of each of ``urls`` now, or the error that stopped its ``info`` call
    (:class:`Gone` for inputs no longer there), looked up in threads, at most
    ``max_connections_per_host`` at once per host; transient errors are retried."""
    if not urls:
        return []
    with ThreadPoolExecutor(min(THREADS, len(urls))) as pool:
        return list(pool.map(lambda url: _looked_up(url, config), urls))


def _looked_up(url: str, config: FetchConfig) -> dict | Exception:
    host = urlsplit(url).netloc.rsplit("@", 1)[-1] or "local"
    attempt = 0
    while True:
        try:
            if not is_remote(url):
                return identity_now(url, config)
            with host_slot(host, config.max_connections_per_host):
                return identity_now(url, config)
        except Gone as exc:
            return exc
        except Exception as exc:
            if not retryable(exc) or attempt >= config.retries:
                return exc
            attempt += 1
            time.sleep(min(config.retry_delay * 2 ** (attempt - 1), 5.0) * (0.5 + random.random()))
