"""Where references are written and how they are opened: the reference format a
:class:`~arcoforge.recipe.WriteCombinedReference` writes under a target root (a kerchunk
JSON file, a Parquet folder or an Icechunk repository, see :mod:`.formats`), and opening
or recognising references at any URL.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import fsspec
import xarray as xr

from arcoforge.errors import quiet
from arcoforge.references.formats import icechunk
from arcoforge.references.formats.base import KerchunkFormat, ReferenceFormat, open_kerchunk
from arcoforge.references.formats.icechunk import IcechunkFormat
from arcoforge.references.formats.json import JsonFormat
from arcoforge.references.formats.parquet import ParquetFormat
from arcoforge.sources import is_remote

ICECHUNK = "icechunk://"
KERCHUNK: dict[str, type[KerchunkFormat]] = {"json": JsonFormat, "parquet": ParquetFormat}
"""The kerchunk formats, by :attr:`~arcoforge.recipe.WriteCombinedReference.format`."""


def reference_store(
    target_root: str, writer, staging_name: str, storage_options: dict | None = None
) -> ReferenceFormat:
    """The references a :class:`~arcoforge.recipe.WriteCombinedReference` writes under
    ``target_root`` (an object store reached with ``storage_options``, say), staged at
    ``staging_name`` (an Icechunk repository: on a branch of its own)."""
    if target_root.startswith(ICECHUNK):
        url = store_location(target_root, writer)
        return IcechunkFormat(url, url)
    root = target_root.removeprefix("file://")
    return KERCHUNK[writer.format].for_writer(
        writer,
        store_location(target_root, writer),
        staging_name.removeprefix("file://"),
        storage_options if is_remote(root) else None,
    )


def store_location(target_root: str, writer) -> str:
    """The path of the references a recipe writes under ``target_root``."""
    if target_root.startswith(ICECHUNK):
        return f"{os.path.abspath(target_root.removeprefix(ICECHUNK))}/{writer.store_name}"
    root = target_root.removeprefix("file://")
    return f"{root}/{writer.store_name}/{writer.output_file_name}"


def is_reference_url(url: str, storage_options: dict | None = None) -> bool:
    """Whether ``url`` names references: a .json file, a Parquet reference folder or an
    Icechunk repository (on an object store, read with ``storage_options``: JSON or
    Parquet)."""
    if url.startswith(ICECHUNK) or is_icechunk_repository(url):
        return True
    if is_remote(url):
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        if path.endswith(".json"):
            return fs.isfile(path)
        try:
            return "record_size" in json.loads(fs.cat_file(f"{path}/.zmetadata"))
        except (OSError, ValueError):  # no such object, or no access: not references
            return False
    path = url.removeprefix("file://")
    if path.endswith(".json") and os.path.isfile(path):
        return True
    return os.path.isfile(os.path.join(path, ".zmetadata")) and _has_record_size(path)


def is_icechunk_repository(path: str) -> bool:
    """Whether the local folder ``path`` holds an Icechunk repository."""
    path = path.removeprefix("file://")
    return os.path.isdir(os.path.join(path, "snapshots")) and os.path.isdir(
        os.path.join(path, "refs")
    )


def _has_record_size(path: str) -> bool:
    try:
        return "record_size" in json.loads(Path(path, ".zmetadata").read_text())
    except ValueError:
        return False


@contextmanager
def open_references(
    url: str | dict,
    storage_options: dict | None = None,
    remote_options: dict | None = None,
    **kwargs,
) -> Iterator[xr.Dataset]:
    """Open kerchunk references (JSON or Parquet, or a dict of them; local or on an object
    store reached with ``storage_options``) or an Icechunk repository with xarray. The
    files they point into are read with ``remote_options``: the credentials of inputs
    behind one (references name them without it, see docs/credentials.md)."""
    with quiet(), _opened(url, storage_options, remote_options, **kwargs) as ds:
        yield ds


@contextmanager
def _opened(url, storage_options, remote_options, **kwargs) -> Iterator[xr.Dataset]:
    remote = {"remote_options": remote_options} if remote_options else {}
    if isinstance(url, dict):
        with open_kerchunk(url, True, **remote, **kwargs) as ds:
            yield ds
        return
    if is_remote(url) and not url.startswith(ICECHUNK):
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        with open_kerchunk(url, fs.isfile(path), storage_options, **remote, **kwargs) as ds:
            yield ds
        return
    if is_icechunk_repository(url):
        url = ICECHUNK + url.removeprefix("file://")
    if url.startswith(ICECHUNK):
        with icechunk.open_dataset(url.removeprefix(ICECHUNK), "main", **kwargs) as ds:
            yield ds
        return
    path = url.removeprefix("file://")
    # JSON holds consolidated .zmetadata; Parquet's .zmetadata is its own
    with open_kerchunk(path, os.path.isfile(path), **remote, **kwargs) as ds:
        yield ds
