"""The scan task: one input turned into a manifest on a worker, by its format's scanner."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import IO

import fsspec

from arcoforge.errors import ArcoforgeError, SchemaError, SourceError, one_line
from arcoforge.recipe.patterns import Input
from arcoforge.references.coords import IncompleteCoordinate
from arcoforge.references.manifest import Manifest
from arcoforge.sources import FetchConfig, is_remote
from arcoforge.sources.fetch import remote_options
from arcoforge.sources.identity import Gone
from arcoforge.sources.lookup import identity_now, scanned_identity
from arcoforge.sources.secrets import redact, without_userinfo


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


@dataclass(frozen=True)
class ScanTask:
    """Scan a few inputs, one after the other (batched, so that a task's overhead is
    shared by several small scans)."""

    inputs: tuple[Input, ...]
    config: ScanConfig


def reference_url(url: str, config: ScanConfig) -> str:
    """The URL references name an input by: absolute ``file://`` URLs for local files,
    never a ``user:password@`` (readers give credentials in ``remote_options``)."""
    if "://" in url:
        return without_userinfo(url)
    if config.remote_protocol and config.remote_protocol not in ("file", "local"):
        return f"{config.remote_protocol}://{url}"
    return "file://" + os.path.abspath(url)


def scan_inputs(task: ScanTask) -> list[tuple[Input, Manifest, dict]]:
    """Each input of the task, its manifest and its identity (taken before the scan)."""
    return [(item, *_identified(item, task.config)) for item in task.inputs]


def _identified(item: Input, config: ScanConfig) -> tuple[Manifest, dict | None]:
    """An input's manifest and its identity, looked up with the fetch's credentials (the
    input's URL keeps its masked password, which the fetch puts back for the request):
    taken before the scan, or, of a file the scan downloads whole (remote GRIB), the one
    its cached copy recorded as it was downloaded."""
    fetch = config.fetch or FetchConfig(secrets=config.secrets)
    fetch = replace(fetch, open_kwargs={**fetch.open_kwargs, **(config.storage_options or {})})
    url = item.url if "://" in item.url else reference_url(item.url, config)
    if config.file_type == "grib" and is_remote(url) and fetch.cache:
        manifest = scan_input(item, config)
        return manifest, _identity(scanned_identity, url, fetch)
    identity = _identity(identity_now, url, fetch)
    return scan_input(item, config), identity


def _identity(look_up, url: str, fetch: FetchConfig) -> dict | None:
    try:
        return look_up(url, fetch)
    except Gone:
        return None  # the scan says what is wrong


def scan_input(item: Input, config: ScanConfig) -> Manifest:
    """The manifest of one input; errors name the input and the cause in one line."""
    url = reference_url(item.url, config)
    try:
        return _scanner(config.file_type)(url, config)
    except IncompleteCoordinate as exc:  # named as the Zarr product's scan names it
        raise SchemaError(f"{redact(item.url, config.secrets)}: {exc}") from exc
    except ArcoforgeError:
        raise
    except FileNotFoundError:
        raise SourceError(f"{redact(url, config.secrets)}: file not found") from None
    except Exception as exc:
        cause = redact(one_line(exc), config.secrets)
        raise SourceError(
            f"{redact(url, config.secrets)}: cannot scan as {config.file_type}: {cause}"
        ) from None


def _scanner(file_type: str):
    if file_type in ("netcdf4", "hdf5"):
        return _scan_hdf5
    if file_type == "netcdf3":
        from arcoforge.references.scanners.netcdf3 import scan_netcdf3

        return scan_netcdf3
    if file_type == "zarr":
        from arcoforge.references.scanners.zarr import scan_zarr

        return scan_zarr
    if file_type == "grib":
        from arcoforge.references.scanners.grib import scan_grib

        return scan_grib
    raise SourceError(f"OpenWithKerchunk: cannot scan file_type {file_type!r}")


def _scan_hdf5(url: str, config: ScanConfig) -> Manifest:
    from arcoforge.references.scanners.hdf5 import scan_hdf5

    with opened(url, config) as f:
        return scan_hdf5(f, url, config.concat_dims, config.inline_threshold)


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
