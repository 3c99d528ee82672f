"""Fetch inputs with fsspec: retries with backoff, per-host limits, verified cache entries."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import random
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aiohttp
import fsspec

from arcoforge.errors import SourceError
from arcoforge.sources.cache import Cache, file_sha256
from arcoforge.sources.identity import from_info
from arcoforge.sources.limits import host_slot
from arcoforge.sources.secrets import (
    basic_credentials,
    masked_cause,
    redact,
    show_userinfo,
    with_query_secrets,
)

_LOCAL = ("", "file", "local")
log = logging.getLogger("arcoforge")


@dataclass(frozen=True)
class FetchConfig:
    """How inputs are fetched; picklable, and holding secrets that must never be printed."""

    cache: str | None = None
    open_kwargs: dict = field(default_factory=dict)
    query_secrets: dict = field(default_factory=dict)
    userinfo: dict = field(default_factory=dict)  # see arcoforge.sources.secrets.hide_userinfo
    secrets: tuple[str, ...] = ()
    retries: int = 5
    retry_delay: float = 0.5
    max_connections_per_host: int = 4
    timeout: float = 60.0

    def redact(self, text: str) -> str:
        """``text`` with every secret of this config masked."""
        return redact(text, self.secrets)

    def request_url(self, url: str) -> str:
        """``url`` with its password and query secrets: for the request, never logged."""
        return with_query_secrets(show_userinfo(url, self.userinfo), self.query_secrets)


def is_remote(url: str) -> bool:
    """Whether ``url`` names something other than a local file."""
    if ":" not in url:  # a path: spares parsing the inputs of a large pattern
        return False
    return urlsplit(url).scheme.lower() not in _LOCAL and not _is_windows_drive(url)


def _is_windows_drive(url: str) -> bool:
    return len(url) > 1 and url[1] == ":"


def local_copy(url: str, config: FetchConfig) -> str:
    """A local path holding the bytes of ``url``: the file itself, or a verified cache entry."""
    if not is_remote(url):
        path = unquote(url[len("file://") :]) if url.startswith("file://") else url
        if not os.path.exists(path):
            raise SourceError(f"{url}: file not found")
        return path
    if config.cache is None:
        raise SourceError(f"{config.redact(url)}: remote inputs need a cache folder")
    cache = Cache(config.cache)
    hit = cache.lookup(url)
    if hit is not None:
        return str(hit)
    return str(_download(url, cache, config))


def _download(url: str, cache: Cache, config: FetchConfig) -> Path:
    host = urlsplit(url).netloc.rsplit("@", 1)[-1] or "local"
    attempt = 0
    while True:
        tmp = cache.temp_path(url)
        try:
            with host_slot(host, config.max_connections_per_host):
                sha, source = _get(url, tmp, config)
            return cache.store(url, tmp, sha, attempts=attempt + 1, source=source)
        except Exception as caught:
            tmp.unlink(missing_ok=True)
            exc = caught
            # fsspec's HTTP size lookup raises FileNotFoundError(url) from any failure (401, 503...)
            if isinstance(exc, FileNotFoundError) and isinstance(exc.__cause__, Exception):
                exc = exc.__cause__
            retries = min(_retries_for(exc), config.retries)
            if attempt >= retries:
                tries = f" (after {attempt + 1} attempts)" if attempt else ""
                why = config.redact(f"{url}: {_describe(exc, host)}{tries}")
                raise SourceError(why) from masked_cause(caught, config.secrets)
            attempt += 1
            delay = min(config.retry_delay * 2 ** (attempt - 1), 30.0) * (0.5 + random.random())
            why = config.redact(f"{url}: {_describe(exc, host)}")
            log.warning("%s; retry %d of %d in %.1f s", why, attempt, retries, delay)
            time.sleep(delay)


def _get(url: str, tmp: Path, config: FetchConfig) -> tuple[str, dict]:
    """Download ``url`` to ``tmp``, checking its size; return its sha256 and the identity
    its file system gave before the download (see :mod:`arcoforge.sources.identity`)."""
    fs, path = fsspec.core.url_to_fs(config.request_url(url), **fs_options(url, config))
    info = fs.info(path)
    expected = info.get("size")
    fs.get_file(path, str(tmp))
    got = tmp.stat().st_size
    if expected is not None and got != expected:
        raise TruncatedError(f"truncated download: got {got} of {expected} bytes")
    return file_sha256(tmp), from_info(info)


def remote_options(url: str, config: FetchConfig) -> dict:
    """fsspec options that read ``url`` (named without its ``user:password@``, as
    references name it) with the credentials the fetch uses: its password as a basic
    ``Authorization`` header, query secrets as request ``params``."""
    options = fs_options(url, config)
    if urlsplit(url).scheme.lower() not in ("http", "https"):
        return options
    found = _credentials_for_host(url, config)
    if found is not None:
        token = base64.b64encode(f"{found[0]}:{found[1]}".encode()).decode()
        options["headers"] = {"Authorization": f"Basic {token}", **options.get("headers", {})}
    if config.query_secrets:
        options["params"] = {**options.get("params", {}), **config.query_secrets}
    return options


def _credentials_for_host(url: str, config: FetchConfig) -> tuple[str, str] | None:
    """The user and password the pattern's URLs give for ``url``'s host, if any."""
    host = urlsplit(url).netloc.rpartition("@")[2]
    for masked in config.userinfo:
        if masked.rpartition("@")[2] == host:
            return basic_credentials(f"//{masked}/", config.userinfo)
    return None


def fs_options(url: str, config: FetchConfig) -> dict:
    options = dict(config.open_kwargs)
    if urlsplit(url).scheme.lower() in ("http", "https"):
        user, password = options.pop("username", None), options.pop("password", None)
        client = dict(options.pop("client_kwargs", {}))
        if user is not None:
            token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
            options["headers"] = {"Authorization": f"Basic {token}", **options.get("headers", {})}
        client.setdefault(
            "timeout",
            aiohttp.ClientTimeout(sock_connect=config.timeout, sock_read=config.timeout),
        )
        options["client_kwargs"] = client
        options.setdefault("skip_instance_cache", True)
    return options


class TruncatedError(OSError):
    """A download ended before its announced length."""


REFUSED_RETRIES = 1  # a server that refuses connections may be restarting: one more try


def _retries_for(exc: Exception) -> int:
    """How many times a failure like ``exc`` is worth retrying: never what a retry cannot
    fix (a refusal, a missing file, a host name that does not resolve), once a refused
    connection, else as configured (``sys.maxsize`` here, capped by the caller)."""
    if not retryable(exc):
        return 0
    cause = _os_error(exc)
    if isinstance(cause, socket.gaierror):
        return REFUSED_RETRIES if cause.errno == socket.EAI_AGAIN else 0
    if isinstance(cause, ConnectionRefusedError):
        return REFUSED_RETRIES
    return sys.maxsize


def _os_error(exc: Exception) -> OSError | None:
    """The operating system's error under ``exc`` (aiohttp keeps it as ``os_error``)."""
    seen = exc
    for _ in range(4):
        if isinstance(seen, socket.gaierror | ConnectionRefusedError):
            return seen
        inner = getattr(seen, "os_error", None) or seen.__cause__ or seen.__context__
        if inner is None:
            return None
        seen = inner
    return None


def retryable(exc: Exception) -> bool:
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return status >= 500 or status in (408, 429)
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError):
        return False
    return isinstance(exc, OSError | asyncio.TimeoutError | TimeoutError) or _is_aiohttp_transient(
        exc
    )


def _is_aiohttp_transient(exc: Exception) -> bool:
    return isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientConnectionError)


def _describe(exc: Exception, host: str = "") -> str:
    status = getattr(exc, "status", None)
    if isinstance(exc, FileNotFoundError):
        return "not found (HTTP 404 or missing file)"
    if isinstance(status, int):
        reason = getattr(exc, "message", "") or ""
        hint = " (check credentials)" if status in (401, 403) else ""
        return f"HTTP {status} {reason}{hint}".strip()
    cause = _os_error(exc)
    if isinstance(cause, socket.gaierror):
        name = host.rpartition(":")[0] if host.count(":") == 1 else host
        return f"host {name} does not resolve ({cause.strerror})"
    if isinstance(cause, ConnectionRefusedError):
        return f"connection refused by {host}"
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}"
