"""Fetch inputs with fsspec: retries with backoff, per-host limits, verified cache entries."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import fsspec

from ..errors import SourceError
from ..secrets import redact, with_query_secrets
from .cache import Cache, file_sha256
from .limits import host_slot

_LOCAL = ("", "file", "local")
log = logging.getLogger("arcoforge")


@dataclass(frozen=True)
class FetchConfig:
    """How inputs are fetched; picklable, and holding secrets that must never be printed."""

    cache: str | None = None
    open_kwargs: dict = field(default_factory=dict)
    query_secrets: dict = field(default_factory=dict)
    secrets: tuple[str, ...] = ()
    retries: int = 5
    retry_delay: float = 0.5
    max_connections_per_host: int = 4
    timeout: float = 60.0

    def redact(self, text: str) -> str:
        """``text`` with every secret of this config masked."""
        return redact(text, self.secrets)


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
                sha = _get(url, tmp, config)
            return cache.store(url, tmp, sha, attempts=attempt + 1)
        except Exception as exc:
            tmp.unlink(missing_ok=True)
            # fsspec's HTTP size lookup raises FileNotFoundError(url) from any failure (401, 503...)
            if isinstance(exc, FileNotFoundError) and isinstance(exc.__cause__, Exception):
                exc = exc.__cause__
            if not _retryable(exc) or attempt >= config.retries:
                tries = f" (after {attempt + 1} attempts)" if attempt else ""
                raise SourceError(config.redact(f"{url}: {_describe(exc)}{tries}")) from None
            attempt += 1
            delay = min(config.retry_delay * 2 ** (attempt - 1), 30.0) * (0.5 + random.random())
            why = config.redact(f"{url}: {_describe(exc)}")
            log.warning("%s; retry %d of %d in %.1f s", why, attempt, config.retries, delay)
            time.sleep(delay)


def _get(url: str, tmp: Path, config: FetchConfig) -> str:
    """Download ``url`` to ``tmp``, checking its size; return its sha256."""
    full = with_query_secrets(url, config.query_secrets)
    fs, path = fsspec.core.url_to_fs(full, **_fs_options(url, config))
    expected = fs.size(path)
    fs.get_file(path, str(tmp))
    got = tmp.stat().st_size
    if expected is not None and got != expected:
        raise TruncatedError(f"truncated download: got {got} of {expected} bytes")
    return file_sha256(tmp)


def _fs_options(url: str, config: FetchConfig) -> dict:
    options = dict(config.open_kwargs)
    if urlsplit(url).scheme.lower() in ("http", "https"):
        import aiohttp

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


def _retryable(exc: Exception) -> bool:
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return status >= 500 or status in (408, 429)
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError):
        return False
    return isinstance(exc, OSError | asyncio.TimeoutError | TimeoutError) or _is_aiohttp_transient(
        exc
    )


def _is_aiohttp_transient(exc: Exception) -> bool:
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - aiohttp is a dependency
        return False
    return isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientConnectionError)


def _describe(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    if isinstance(exc, FileNotFoundError):
        return "not found (HTTP 404 or missing file)"
    if isinstance(status, int):
        reason = getattr(exc, "message", "") or ""
        hint = " (check credentials)" if status in (401, 403) else ""
        return f"HTTP {status} {reason}{hint}".strip()
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}"
