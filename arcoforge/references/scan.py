"""The scan task: one input turned into a manifest on a worker, by its format's scanner."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from arcoforge.errors import ArcoforgeError, SchemaError, SourceError, one_line
from arcoforge.recipe.patterns import Input
from arcoforge.references.coords import IncompleteCoordinate
from arcoforge.references.inputs import ScanConfig, opened, reference_url
from arcoforge.references.manifest import Manifest
from arcoforge.references.scanners.grib import scan_grib
from arcoforge.references.scanners.hdf5 import scan_hdf5
from arcoforge.references.scanners.netcdf3 import scan_netcdf3
from arcoforge.references.scanners.zarr import scan_zarr
from arcoforge.sources import FetchConfig, is_remote
from arcoforge.sources.identity import Gone
from arcoforge.sources.lookup import identity_now, scanned_identity
from arcoforge.sources.secrets import masked_cause, redact


@dataclass(frozen=True)
class ScanTask:
    """Scan a few inputs, one after the other (batched, so that a task's overhead is
    shared by several small scans)."""

    inputs: tuple[Input, ...]
    config: ScanConfig


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
    except FileNotFoundError as exc:
        where = redact(url, config.secrets)
        raise SourceError(f"{where}: file not found") from masked_cause(exc, config.secrets)
    except Exception as exc:
        cause = redact(one_line(exc), config.secrets)
        raise SourceError(
            f"{redact(url, config.secrets)}: cannot scan as {config.file_type}: {cause}"
        ) from masked_cause(exc, config.secrets)


def _scanner(file_type: str) -> Callable[[str, ScanConfig], Manifest]:
    try:
        return SCANNERS[file_type]
    except KeyError:
        # the KeyError is this lookup: the message says all it would
        raise SourceError(f"OpenWithKerchunk: cannot scan file_type {file_type!r}") from None


def _scan_hdf5(url: str, config: ScanConfig) -> Manifest:
    with opened(url, config) as f:
        return scan_hdf5(f, url, config.concat_dims, config.inline_threshold)


SCANNERS = {
    "netcdf4": _scan_hdf5,
    "hdf5": _scan_hdf5,
    "netcdf3": scan_netcdf3,
    "zarr": scan_zarr,
    "grib": scan_grib,
}
