"""The interface every reference format implements (:class:`ReferenceFormat`), and what
the two kerchunk formats, JSON and Parquet, share (:class:`KerchunkFormat`): the seal of
a file or folder, staging under another name, reading the staged references in part, and
opening them with xarray.

A format object is the references at one place: a bake writes them under the staging
name, checks them there, then publishes them at once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import fsspec
import xarray as xr

from arcoforge.core import ledger as ledgers
from arcoforge.errors import TargetError, one_line, quiet
from arcoforge.references.manifest import Manifest
from arcoforge.sources import is_remote


@dataclass(frozen=True)
class ReferenceFormat(ABC):
    """The references at ``url`` (a local path or, for the kerchunk formats, an object
    store URL reached with ``storage_options``), staged at ``staging`` until published."""

    url: str
    staging: str
    storage_options: dict | None = None

    checks_on_driver: ClassVar[bool] = False
    """Whether the bake checks the staged references in the driver, not on workers."""
    made_in_place: ClassVar[bool] = False
    """Whether a first bake makes the store at :attr:`url` itself (not under another name),
    so that one found there without a published manifest is an interrupted bake's."""
    reads_in_part: ClassVar[bool] = False
    """Whether :meth:`overlapping` reads the references of some chunks as stored."""

    @property
    def folder(self) -> str | None:
        """The folder (TARGET_ROOT/STORE_NAME) the references share with their ledger and
        staging name only, which must hold nothing else; None if the store is the folder."""
        return None

    def preload(self) -> None:  # noqa: B027 - a format that needs nothing loaded
        """Import what writing these references and reading them back use."""

    def unwritable(self, manifest: Manifest) -> str | None:
        """Why ``manifest`` cannot be written in this format, or None."""
        return None

    def check_inputs(self, urls: list[str]) -> None:  # noqa: B027 - a format that takes any
        """Refuse, before anything is written, inputs (as the references name them) that
        the references cannot point into."""

    def clear_staging(self) -> None:  # noqa: B027 - staged where the ledger clears
        """Drop what an interrupted bake staged that the ledger does not clear."""

    @abstractmethod
    def seal(self, staged: bool = False) -> str | None:
        """What tells the published references (or with ``staged`` the staged ones) from
        any others; None if there are none."""

    @abstractmethod
    def bears(self, seal: str) -> bool:
        """Whether what is at :attr:`url` is the references sealed with ``seal``."""

    @abstractmethod
    def write_staged(
        self, manifest: Manifest, attrs: dict, message: str, shared: dict[str, int] | None = None
    ) -> None:
        """Write ``manifest`` under the staging name (with ``message`` where the format
        keeps one). ``shared`` counts, per array, the leading references it shares with the
        published store, which a format may keep rather than write again."""

    def overlapping(self, dim: str | None, spans=()) -> dict:
        """The staged references (``{"version": 1, "refs": ...}``): the metadata and the
        references of the chunks that meet ``spans`` along ``dim`` (all, without ``dim``).
        Only of a format that :attr:`reads_in_part`."""
        raise NotImplementedError(f"{type(self).__name__} references are not read in part")

    @abstractmethod
    def open_staged(
        self, dim: str | None = None, spans=(), remote_options: dict | None = None
    ) -> AbstractContextManager[xr.Dataset]:
        """The staged references opened by xarray, the files they point into read with
        ``remote_options``; a format may read only the chunks that meet ``spans`` along
        ``dim`` (and the arrays without ``dim``)."""

    @abstractmethod
    def publish(self) -> None:
        """Put the staged references at :attr:`url`, in one step that readers see whole;
        repeatable (a bake that stopped while publishing publishes again)."""


@dataclass(frozen=True)
class KerchunkFormat(ReferenceFormat):
    """kerchunk references (JSON or Parquet) in a local folder or on an object store: on
    a local disk written in place and renamed; on an object store written locally,
    uploaded under the staging name and copied into place."""

    reads_in_part: ClassVar[bool] = True
    consolidated: ClassVar[bool] = True
    """Whether the references hold consolidated Zarr metadata (``.zmetadata``)."""

    @classmethod
    def for_writer(
        cls, writer, url: str, staging: str, storage_options: dict | None = None
    ) -> KerchunkFormat:
        """The references a :class:`~arcoforge.recipe.WriteCombinedReference` writes at
        ``url``, staged at ``staging``."""
        return cls(url, staging, storage_options)

    @property
    def remote(self) -> bool:
        """Whether the references go to an object store rather than a local folder."""
        return is_remote(self.url)

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The file system of the object store."""
        return fsspec.core.url_to_fs(self.url, **(self.storage_options or {}))[0]

    @property
    def folder(self) -> str:
        return self.url.rpartition("/")[0]

    def seal(self, staged: bool = False) -> str | None:
        """:func:`arcoforge.core.ledger.seal` of the file or folder."""
        return ledgers.seal(self.staging if staged else self.url, self.storage_options)

    def bears(self, seal: str) -> bool:
        return ledgers.seal(self.url, self.storage_options) == seal

    def write_staged(
        self, manifest: Manifest, attrs: dict, message: str, shared: dict[str, int] | None = None
    ) -> None:
        """Write ``manifest`` under the staging name: in place on a local disk, else in a
        local temporary folder, then uploaded."""
        if self.remote:
            with naming(self.staging, "cannot stage the references there"):
                self.upload_staged(manifest, attrs, shared)
            return
        Path(self.staging).parent.mkdir(parents=True, exist_ok=True)
        self.write_local(manifest, attrs, shared)

    @abstractmethod
    def write_local(self, manifest: Manifest, attrs: dict, shared: dict[str, int] | None):
        """:meth:`write_staged` on a local disk."""

    @abstractmethod
    def upload_staged(self, manifest: Manifest, attrs: dict, shared: dict[str, int] | None):
        """:meth:`write_staged` on an object store."""

    def overlapping(self, dim: str | None, spans=()) -> dict:
        with naming(self.staging, "cannot read it"):
            refs = self.read_overlapping(dim, spans)
        return {"version": 1, "refs": refs}

    @abstractmethod
    def read_overlapping(self, dim: str | None, spans) -> dict:
        """The ``refs`` of :meth:`overlapping`, by key."""

    @contextmanager
    def open_staged(
        self, dim: str | None = None, spans=(), remote_options: dict | None = None
    ) -> Iterator[xr.Dataset]:
        """With ``dim``, only the metadata and the references :meth:`overlapping` gives
        are read, which spares parsing and indexing all of them."""
        remote = {"remote_options": remote_options} if remote_options else {}
        if dim is None:
            opened = open_kerchunk(self.staging, self.consolidated, self.storage_options, **remote)
        else:
            opened = open_kerchunk(self.overlapping(dim, spans), True, **remote)
        with quiet(), opened as ds:
            yield ds

    def publish(self) -> None:
        if self.remote:
            with naming(self.url, f"cannot publish the references staged at {self.staging}"):
                self.publish_remote()
        else:
            self.publish_local()

    @abstractmethod
    def publish_local(self) -> None:
        """:meth:`publish` on a local disk."""

    @abstractmethod
    def publish_remote(self) -> None:
        """:meth:`publish` on an object store."""


@contextmanager
def naming(url: str, doing: str) -> Iterator[None]:
    """Turn an object store's error into one line naming ``url``."""
    try:
        yield
    except OSError as exc:
        raise TargetError(f"{url}: {doing}: {one_line(exc)}") from exc


@contextmanager
def open_kerchunk(
    fo: str | dict,
    consolidated: bool,
    target_options: dict | None = None,
    remote_options: dict | None = None,
    **kwargs,
) -> Iterator[xr.Dataset]:
    """kerchunk references (a file, a folder or a dict of them; ``.zmetadata``
    ``consolidated`` or not) opened by xarray through fsspec's ``ReferenceFileSystem``,
    the references read with ``target_options``, the files they point into with
    ``remote_options``."""
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
