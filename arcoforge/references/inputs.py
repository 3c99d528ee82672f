"""How the references product reaches its inputs: the scan's settings, the URL references
name an input by, and the input opened for a scanner."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

import fsspec

from arcoforge.sources import FetchConfig, is_remote
from arcoforge.sources.fetch import remote_options
from arcoforge.sources.secrets import without_userinfo


@dataclass(frozen=True)
class ScanConfig:
    """How every input of a recipe is scanned; picklable."""

    file_type: str
    concat_dims: tuple[str, ...] = ()
    inline_threshold: int = 300
    storage_options: dict | None = None
    remote_protocol: str | None = None
    secrets: tuple[str, ...] = ()
    grib_filter: dict | None = None
    fetch: FetchConfig | None = None  # how remote inputs are fetched, with their credentials


def reference_url(url: str, config: ScanConfig) -> str:
    """The URL references name an input by: absolute ``file://`` URLs for local files,
    never a ``user:password@`` (readers give credentials in ``remote_options``)."""
    if "://" in url:
        return without_userinfo(url)
    if config.remote_protocol and config.remote_protocol not in ("file", "local"):
        return f"{config.remote_protocol}://{url}"
    return "file://" + os.path.abspath(url)


@contextmanager
def opened(url: str, config: ScanConfig) -> Iterator[IO[bytes] | str]:
    """A local path for local inputs, else a lazily reading fsspec file."""
    if not is_remote(url) or url.startswith("file://"):
        path = url.removeprefix("file://")
        if not os.path.exists(path):
            raise FileNotFoundError(path)
        yield path
        return
    with fsspec.open(url, "rb", **input_options(url, config)) as f:
        yield f


def input_options(url: str, config: ScanConfig) -> dict:
    """fsspec options reading the input at ``url``: the fetch's credentials, then
    ``OpenWithKerchunk``'s ``storage_options``."""
    found = remote_options(url, config.fetch) if config.fetch else {}
    return {**found, **(config.storage_options or {})}
