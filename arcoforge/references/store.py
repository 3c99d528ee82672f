"""Where references are written: a kerchunk JSON file, a Parquet folder or an Icechunk
repository, each staged under another name (or branch) and published at once.

JSON and Parquet references go to a local folder or an object store (``s3://...``): on
local disks they are written in place and renamed; on object stores they are written
locally, uploaded under the staging name and copied into place, a JSON file as one
object, a Parquet store record files first and ``.zmetadata`` last.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import xarray as xr

from arcoforge.core import ledger as ledgers
from arcoforge.errors import TargetError, one_line, quiet
from arcoforge.references.formats import icechunk
from arcoforge.references.formats import json as kerchunk_json
from arcoforge.references.formats import parquet as kerchunk
from arcoforge.references.manifest import Manifest
from arcoforge.sources import is_remote

ICECHUNK = "icechunk://"


@dataclass(frozen=True)
class ReferenceStore:
    """The references at ``url`` (a local path or, as JSON or Parquet, an object store URL
    reached with ``storage_options``), in ``kind`` json, parquet or icechunk, staged at
    ``staging`` until published."""

    url: str
    staging: str
    kind: str
    record_size: int = 100_000
    storage_options: dict | None = None

    @property
    def remote(self) -> bool:
        """Whether the references go to an object store rather than a local folder."""
        return is_remote(self.url)

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The file system of the object store."""
        return fsspec.core.url_to_fs(self.url, **(self.storage_options or {}))[0]

    def preload(self) -> None:
        """Import what writing these references and reading them back use."""
        if self.kind == "parquet":
            kerchunk.preload()

    def unwritable(self, manifest: Manifest) -> str | None:
        """Why ``manifest`` cannot be written in this store's kind, or None."""
        if self.kind == "icechunk":
            return icechunk.unwritable(manifest)
        return None

    def check_inputs(self, urls: list[str]) -> None:
        """Refuse, before anything is written, inputs (as the references name them) that
        the Icechunk repository cannot point into."""
        if self.kind == "icechunk":
            icechunk.check_inputs(self.url, urls)

    def clear_staging(self) -> None:
        """Drop the staging branch an interrupted Icechunk bake left. JSON and Parquet
        references are staged at their ledger's staging name, which the ledger clears
        (only if its staging manifest vouches for what is there)."""
        if self.kind == "icechunk":
            icechunk.drop_staging(self.url)

    def seal(self, staged: bool = False) -> str | None:
        """What tells the published references (or with ``staged`` the staged ones) from
        any others: :func:`arcoforge.core.ledger.seal` of the file or folder; of an Icechunk
        repository, the snapshot at the tip of ``main`` (or of the staging branch)."""
        if self.kind == "icechunk":
            return icechunk.tip(self.url, icechunk.STAGING if staged else icechunk.MAIN)
        return ledgers.seal(self.staging if staged else self.url, self.storage_options)

    def bears(self, seal: str) -> bool:
        """Whether what is at :attr:`url` is the references sealed with ``seal``: an
        Icechunk repository holding that snapshot (later commits made by others do not
        matter), else a file or folder of that seal."""
        if self.kind == "icechunk":
            return icechunk.holds_snapshot(self.url, seal)
        return ledgers.seal(self.url, self.storage_options) == seal

    def write_staged(
        self, manifest: Manifest, attrs: dict, message: str, shared: dict[str, int] | None = None
    ) -> None:
        """Write ``manifest`` under the staging name (an Icechunk branch: one commit).
        ``shared`` counts, per array, the leading references it shares with the published
        store, which a Parquet store links rather than writes again."""
        if self.remote and self.kind != "icechunk":
            with _naming(self.staging, "cannot stage the references there"):
                self._upload_staged(manifest, attrs, shared)
            return
        Path(self.staging).parent.mkdir(parents=True, exist_ok=True)
        if self.kind == "json":
            previous = self.url if shared and os.path.isfile(self.url) else None
            if previous:
                self._reuse_spare()
            kerchunk_json.write_json(manifest, self.staging, attrs, previous, shared)
        elif self.kind == "parquet":
            previous = None
            if shared and os.path.isdir(self.url):
                previous = kerchunk.Previous(Path(self.url), shared)
            kerchunk.write_parquet(manifest, self.staging, self.record_size, attrs, previous)
        else:
            icechunk.commit_staged(self.url, manifest, attrs, message, shared)

    def _upload_staged(self, manifest: Manifest, attrs: dict, shared: dict[str, int] | None):
        """Write the references in a local temporary folder and upload them under the
        staging name: a JSON file (appended to a copy of the published one) as one object,
        a Parquet store's records (those it keeps copied from the published store on the
        server) before its ``.zmetadata``."""
        fs = self.fs
        with tempfile.TemporaryDirectory(prefix="arcoforge-refs-") as temp:
            local = f"{temp}/{self.url.rsplit('/', 1)[-1]}"
            if self.kind == "json":
                previous = None
                if shared and fs.isfile(self.url):
                    previous = f"{temp}/published.json"
                    fs.get_file(self.url, previous)
                kerchunk_json.write_json(manifest, local, attrs, previous, shared)
                fs.put_file(local, self.staging)
                return
            previous = None
            if shared and fs.isfile(f"{self.url}/.zmetadata"):
                previous = CopiedPrevious(self.url, shared, fs, self.staging)
            kerchunk.write_parquet(manifest, local, self.record_size, attrs, previous)
            records = sorted(str(p) for p in Path(local).rglob("*.parq"))
            if records:
                fs.put(records, [self.staging + r.removeprefix(local) for r in records])
            fs.put_file(f"{local}/.zmetadata", f"{self.staging}/.zmetadata")

    @contextmanager
    def open_staged(
        self, dim: str | None = None, spans=(), remote_options: dict | None = None
    ) -> Iterator[xr.Dataset]:
        """The staged references opened by xarray (the files they point into read with
        ``remote_options``). Of a JSON file, only the metadata and the references of the
        chunks along ``dim`` that meet ``spans`` (and of the arrays without ``dim``) are
        read, which spares parsing and indexing all of them."""
        if self.kind == "icechunk":
            with icechunk.open_dataset(self.url, icechunk.STAGING) as ds:
                yield ds
            return
        staged = self.staged_references(dim, spans)
        with open_references(staged, self.storage_options, remote_options) as ds:
            yield ds

    def staged_references(self, dim: str | None = None, spans=()) -> str | dict:
        """What fsspec's ``ReferenceFileSystem`` reads the staged JSON or Parquet references
        from (with ``target_options`` :attr:`storage_options`); with ``dim``, the metadata
        and the references :meth:`open_staged` reads, not the file or records whole."""
        if dim is None or self.kind not in ("json", "parquet"):
            return self.staging
        return self.overlapping(dim, spans)

    def overlapping(self, dim: str | None, spans=()) -> dict:
        """The metadata of the staged JSON or Parquet references and the references of
        the chunks that meet ``spans`` along ``dim`` (all of them, without ``dim``)."""
        with _naming(self.staging, "cannot read it"):
            if self.kind == "parquet":
                refs = kerchunk.read_overlapping(
                    self.staging, dim, spans, self.fs if self.remote else None
                )
            elif self.remote:
                data = self.fs.cat_file(self.staging)
                refs = kerchunk_json.overlapping(data, dim, spans, self.staging)
            else:
                refs = kerchunk_json.read_overlapping(self.staging, dim, spans)
        return {"version": 1, "refs": refs}

    def publish(self) -> None:
        """Put the staged references at ``url``, in one step that readers see whole. A
        local JSON file is swapped with the published one where the system can (a rename
        over a file would have ext4 write the new one to disk first, 0.01-0.07 s for
        44 MB), and the one replaced is kept as :attr:`spare`."""
        if self.kind == "icechunk":
            icechunk.publish_staged(self.url)
        elif self.remote:
            with _naming(self.url, f"cannot publish the references staged at {self.staging}"):
                _publish_remote(self.fs, self.staging, self.url)
        elif os.path.isdir(self.staging):
            old = f"{ledgers.Ledger(self.url).folder}/{ledgers.REPLACED}"
            if os.path.exists(self.url):
                shutil.rmtree(old, ignore_errors=True)
                os.rename(self.url, old)
            os.rename(self.staging, self.url)
            shutil.rmtree(old, ignore_errors=True)
        elif not os.path.exists(self.staging):
            return
        elif os.path.isfile(self.url) and exchange(self.staging, self.url):
            os.replace(self.staging, self.spare)  # the version replaced
        else:
            if os.path.isfile(self.url):
                _link(self.url, self.spare)
            os.replace(self.staging, self.url)

    @property
    def spare(self) -> str:
        """Where a local JSON file's previous version is kept (in the ledger's folder
        beside it), for the next append to write over: an append then neither allocates
        nor frees a file the size of the references (which takes as long as writing it)."""
        return f"{ledgers.Ledger(self.url).folder}/previous.json"

    def _reuse_spare(self) -> None:
        """Stage the references in the spare file, unless it is the published one (a
        publish that stopped between linking and renaming leaves them one file)."""
        if not os.path.isfile(self.spare):
            return
        if os.path.samefile(self.spare, self.url):
            os.remove(self.spare)
        else:
            os.replace(self.spare, self.staging)


@dataclass(frozen=True)
class CopiedPrevious(kerchunk.Previous):
    """A published Parquet store on an object store, whose kept records are copied on the
    server into the staged store at ``staging`` (rather than hard-linked)."""

    fs: Any = None
    staging: str = ""

    def _zmetadata(self) -> bytes:
        return self.fs.cat_file(f"{self.folder}/.zmetadata")

    def keep(self, name: str, target: Path) -> None:
        self.fs.cp_file(
            f"{self.folder}/{name}/{target.name}", f"{self.staging}/{name}/{target.name}"
        )


def exchange(a: str, b: str) -> bool:
    """Swap the files at ``a`` and ``b`` atomically (Linux's ``renameat2`` with
    ``RENAME_EXCHANGE``); False where the system or the file system cannot, and then
    publishing renames the new file over the old one instead."""
    rename = getattr(_libc(), "renameat2", None)
    if rename is None:
        return False
    here, exchange = -100, 2  # AT_FDCWD, RENAME_EXCHANGE
    return rename(here, os.fsencode(a), here, os.fsencode(b), exchange) == 0


@functools.cache
def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _link(path: str, link: str) -> None:
    """A second name ``link`` for the file at ``path`` (replacing what had that name),
    where the file system has hard links."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(link)
    with contextlib.suppress(OSError):
        os.link(path, link)


@contextmanager
def _naming(url: str, doing: str) -> Iterator[None]:
    """Turn an object store's error into one line naming ``url``."""
    try:
        yield
    except OSError as exc:
        raise TargetError(f"{url}: {doing}: {one_line(exc)}") from exc


def _publish_remote(fs, staging: str, url: str) -> None:
    """Copy the staged references to ``url`` and remove them: a JSON object at once; a
    Parquet store's changed records first, then ``.zmetadata``, then the records it no
    longer has. Objects are named one by one: fsspec would take ``[`` in a name for a
    glob."""
    if fs.isfile(staging):
        fs.cp_file(staging, url)
        fs.rm_file(staging)
        return
    staged = _listing(fs, staging)
    if not staged:
        return  # published already
    published = _listing(fs, url)
    for key, tag in staged.items():
        if key != ".zmetadata" and published.get(key) != tag:
            fs.cp_file(f"{staging}/{key}", f"{url}/{key}")
    fs.cp_file(f"{staging}/.zmetadata", f"{url}/.zmetadata")
    for key in published.keys() - staged.keys():
        fs.rm_file(f"{url}/{key}")
    _remove(fs, staging)


def _remove(fs, url: str) -> None:
    """Remove the object or the objects under ``url``, if any."""
    path = fs._strip_protocol(url).rstrip("/")
    if fs.exists(path):
        ledgers.remove(fs, path)


def _listing(fs, folder: str) -> dict[str, tuple]:
    """The files under ``folder``, by relative path, with their size and ETag."""
    root = fs._strip_protocol(folder).rstrip("/")
    found = fs.find(root, detail=True)
    return {
        path.removeprefix(root + "/"): (info.get("size"), info.get("ETag"))
        for path, info in found.items()
    }


def reference_store(
    target_root: str, writer, staging_name: str, storage_options: dict | None = None
) -> ReferenceStore:
    """The store a :class:`~arcoforge.recipe.WriteCombinedReference` writes under
    ``target_root`` (an object store reached with ``storage_options``, say)."""
    if target_root.startswith(ICECHUNK):
        root = target_root.removeprefix(ICECHUNK)
        url = f"{os.path.abspath(root)}/{writer.store_name}"
        return ReferenceStore(url, url, "icechunk")
    root = target_root.removeprefix("file://")
    return ReferenceStore(
        f"{root}/{writer.store_name}/{writer.output_file_name}",
        staging_name.removeprefix("file://"),
        writer.format,
        writer.record_size,
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
        with _open_kerchunk(url, True, **remote, **kwargs) as ds:
            yield ds
        return
    if is_remote(url) and not url.startswith(ICECHUNK):
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        with _open_kerchunk(url, fs.isfile(path), storage_options, **remote, **kwargs) as ds:
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
    with _open_kerchunk(path, os.path.isfile(path), **remote, **kwargs) as ds:
        yield ds


@contextmanager
def _open_kerchunk(
    fo: str | dict,
    consolidated: bool,
    target_options: dict | None = None,
    remote_options: dict | None = None,
    **kwargs,
) -> Iterator[xr.Dataset]:
    options = {"fo": fo, "remote_options": {**(remote_options or {}), "asynchronous": True}}
    if target_options:
        options["target_options"] = target_options
    ds = xr.open_dataset(
        "reference://",
        engine="zarr",
        chunks=None,
        backend_kwargs={
            "consolidated": consolidated,
            "zarr_format": 2,
            "storage_options": options,
        },
        **kwargs,
    )
    try:
        yield ds
    finally:
        ds.close()
