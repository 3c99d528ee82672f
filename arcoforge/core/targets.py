"""Where a product's output lands, and how it is published atomically.

A bake writes its store under a staging name, then publishes it at its final name. A
:class:`LocalFolder` does that with two renames that readers never see half done; an
:class:`ObjectStore` copies the chunks first and the metadata last, so that readers see
the old store, or the new one's metadata only once every chunk it names is there.
References written into an Icechunk repository publish with one commit instead (see
:mod:`arcoforge.references.formats.icechunk`).
"""

from __future__ import annotations

import os
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass

import fsspec
import zarr

from arcoforge.core.ledger import is_local

METADATA_FILES = {"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"}


@dataclass(frozen=True)
class Target(ABC):
    """A store being written: URL, Zarr format and fsspec options; picklable."""

    url: str
    zarr_format: int = 3
    storage_options: dict | None = None

    def zarr_store(self) -> str | zarr.storage.FsspecStore:
        """What zarr opens for this target: a local path or an fsspec store."""
        if isinstance(self, LocalFolder):
            return self.url.removeprefix("file://")
        return zarr.storage.FsspecStore.from_url(self.url, storage_options=self.storage_options)

    @abstractmethod
    def publish(self, final_url: str, aside: str) -> None:
        """Move this (finished, staged) store to ``final_url``; repeatable, so that an
        interrupted publish is finished by running it again. Whatever is at ``final_url``
        must be a store of ours; ``aside`` is a name of ours it may step aside to."""


@dataclass(frozen=True)
class LocalFolder(Target):
    """A store on a local disk."""

    def publish(self, final_url: str, aside: str) -> None:
        src, dst = _path(self.url), _path(final_url)
        if os.path.exists(src):
            if os.path.exists(dst):
                shutil.rmtree(aside, ignore_errors=True)
                os.makedirs(os.path.dirname(aside), exist_ok=True)
                os.rename(dst, aside)
            os.rename(src, dst)
        shutil.rmtree(aside, ignore_errors=True)


@dataclass(frozen=True)
class ObjectStore(Target):
    """A store on an object store (or any fsspec file system without renames)."""

    def publish(self, final_url: str, aside: str) -> None:
        fs, src = fsspec.core.url_to_fs(self.url, **(self.storage_options or {}))
        _, dst = fsspec.core.url_to_fs(final_url, **(self.storage_options or {}))
        if not fs.exists(src):
            return
        files = sorted(fs.find(src), key=lambda p: publish_order(p.removeprefix(src)))
        old = {p.removeprefix(dst) for p in fs.find(dst)} if fs.exists(dst) else set()
        for path in files:
            fs.copy(path, dst + path.removeprefix(src))
        for relative in sorted(old - {p.removeprefix(src) for p in files}):
            fs.rm_file(dst + relative)
        fs.rm(src, recursive=True)


def target_at(url: str, zarr_format: int = 3, storage_options: dict | None = None) -> Target:
    """The target for a store at ``url``: a local folder or an object store."""
    fs, _ = fsspec.core.url_to_fs(url, **(storage_options or {}))
    kind = LocalFolder if is_local(fs) else ObjectStore
    return kind(url, zarr_format, storage_options)


def publish_order(relative: str) -> tuple[int, str]:
    """Chunks first, then array metadata, then the root metadata."""
    name = relative.rsplit("/", 1)[-1]
    if name not in METADATA_FILES:
        return (0, relative)
    return (2 if relative.count("/") == 1 else 1, relative)


def _path(url: str) -> str:
    return fsspec.core.url_to_fs(url)[1]
