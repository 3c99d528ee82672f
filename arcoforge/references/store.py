"""Where references are written: a kerchunk JSON file, a Parquet folder or an Icechunk
repository, each staged under another name (or branch) and published at once."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import xarray as xr

from ..errors import RecipeError
from ..writers import kerchunk, kerchunk_json
from .manifest import Manifest

ICECHUNK = "icechunk://"

# fsspec reads Parquet references with pandas' fastparquet engine, which pandas 3 deprecates
warnings.filterwarnings("ignore", message="The 'fastparquet' engine is deprecated")
warnings.filterwarnings("ignore", message="The 'future.infer_string' option is deprecated")


@dataclass(frozen=True)
class ReferenceStore:
    """The references at ``url`` (a local path), in ``kind`` json, parquet or icechunk,
    staged at ``staging`` until published."""

    url: str
    staging: str
    kind: str
    record_size: int = 100_000

    def clear_staging(self) -> None:
        """Remove what an interrupted bake staged."""
        if self.kind == "icechunk":
            from ..writers import icechunk

            icechunk.drop_staging(self.url)
        elif os.path.isdir(self.staging):
            shutil.rmtree(self.staging)
        elif os.path.exists(self.staging):
            os.remove(self.staging)

    def write_staged(
        self, manifest: Manifest, attrs: dict, message: str, shared: dict[str, int] | None = None
    ) -> None:
        """Write ``manifest`` under the staging name (an Icechunk branch: one commit).
        ``shared`` counts, per array, the leading references it shares with the published
        store, which a Parquet store links rather than writes again."""
        Path(self.staging).parent.mkdir(parents=True, exist_ok=True)
        if self.kind == "json":
            previous = self.url if shared and os.path.isfile(self.url) else None
            kerchunk_json.write_json(manifest, self.staging, attrs, previous, shared)
        elif self.kind == "parquet":
            previous = None
            if shared and os.path.isdir(self.url):
                previous = kerchunk.Previous(Path(self.url), shared)
            kerchunk.write_parquet(manifest, self.staging, self.record_size, attrs, previous)
        else:
            from ..writers import icechunk

            icechunk.commit_staged(self.url, manifest, attrs, message, shared)

    @contextmanager
    def open_staged(self, dim: str | None = None, spans=()) -> Iterator[xr.Dataset]:
        """The staged references opened by xarray. Of a JSON file, only the metadata and
        the references of the chunks along ``dim`` that meet ``spans`` (and of the arrays
        without ``dim``) are read, which spares parsing and indexing all of them."""
        if self.kind == "icechunk":
            from ..writers import icechunk

            with icechunk.open_dataset(self.url, icechunk.STAGING) as ds:
                yield ds
            return
        with open_references(self.staged_references(dim, spans)) as ds:
            yield ds

    def staged_references(self, dim: str | None = None, spans=()) -> str | dict:
        """What fsspec's ``ReferenceFileSystem`` reads the staged JSON or Parquet references
        from: of a JSON file, with ``dim``, the references :meth:`open_staged` reads."""
        if self.kind == "json" and dim is not None:
            return {"version": 1, "refs": kerchunk_json.read_meeting(self.staging, dim, spans)}
        return self.staging

    def publish(self) -> None:
        """Put the staged references at ``url``; repeatable."""
        if self.kind == "icechunk":
            from ..writers import icechunk

            icechunk.publish_staged(self.url)
        elif os.path.isdir(self.staging):
            old = f"{self.url}.replaced"
            if os.path.exists(self.url):
                shutil.rmtree(old, ignore_errors=True)
                os.rename(self.url, old)
            os.rename(self.staging, self.url)
            shutil.rmtree(old, ignore_errors=True)
        elif os.path.exists(self.staging):
            os.replace(self.staging, self.url)


def reference_store(target_root: str, writer, staging_name: str) -> ReferenceStore:
    """The store a :class:`~arcoforge.recipe.WriteCombinedReference` writes under ``target_root``."""
    if target_root.startswith(ICECHUNK):
        root = target_root.removeprefix(ICECHUNK)
        url = f"{os.path.abspath(root)}/{writer.store_name}"
        return ReferenceStore(url, url, "icechunk")
    if "://" in target_root and not target_root.startswith("file://"):
        raise RecipeError(
            f"WriteCombinedReference writes to local folders or icechunk://PATH, not {target_root}"
        )
    return ReferenceStore(
        f"{target_root.removeprefix('file://')}/{writer.store_name}/{writer.output_file_name}",
        staging_name,
        writer.format,
        writer.record_size,
    )


def store_location(target_root: str, writer) -> str:
    """The path of the references a recipe writes under ``target_root``."""
    if target_root.startswith(ICECHUNK):
        return f"{os.path.abspath(target_root.removeprefix(ICECHUNK))}/{writer.store_name}"
    root = target_root.removeprefix("file://")
    return f"{root}/{writer.store_name}/{writer.output_file_name}"


def is_reference_url(url: str) -> bool:
    """Whether ``url`` names references: a .json file, a Parquet reference folder or an
    Icechunk repository."""
    if url.startswith(ICECHUNK) or is_icechunk_repository(url):
        return True
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
def open_references(url: str | dict, **kwargs) -> Iterator[xr.Dataset]:
    """Open kerchunk references (JSON or Parquet, or a dict of them) or an Icechunk
    repository with xarray."""
    if isinstance(url, dict):
        with _open_kerchunk(url, True, **kwargs) as ds:
            yield ds
        return
    if is_icechunk_repository(url):
        url = ICECHUNK + url.removeprefix("file://")
    if url.startswith(ICECHUNK):
        from ..writers import icechunk

        with icechunk.open_dataset(url.removeprefix(ICECHUNK), "main", **kwargs) as ds:
            yield ds
        return
    path = url.removeprefix("file://")
    # JSON holds consolidated .zmetadata; Parquet's .zmetadata is its own
    with _open_kerchunk(path, os.path.isfile(path), **kwargs) as ds:
        yield ds


@contextmanager
def _open_kerchunk(fo: str | dict, consolidated: bool, **kwargs) -> Iterator[xr.Dataset]:
    options = {"fo": fo, "remote_options": {"asynchronous": True}}
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
