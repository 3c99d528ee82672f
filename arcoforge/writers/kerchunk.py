"""Write a combined manifest as kerchunk Parquet references: a folder of Parquet files
that fsspec's ``ReferenceFileSystem`` reads lazily, one record at a time (JSON references:
:mod:`.kerchunk_json`).

Both build their output from the manifest's arrays in bulk: chunk keys and references are
formatted per array, not looked up per chunk in a dict.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..references.manifest import ArrayRefs, Manifest


def metadata(manifest: Manifest, attrs: dict | None = None) -> dict[str, dict]:
    """The Zarr v2 metadata objects of the dataset, by key."""
    meta = {".zgroup": {"zarr_format": 2}, ".zattrs": {**manifest.attrs, **(attrs or {})}}
    for name, refs in manifest.arrays.items():
        meta[f"{name}/.zarray"] = refs.meta
        meta[f"{name}/.zattrs"] = refs.attrs
    return meta


def write_parquet(
    manifest: Manifest,
    folder: str | Path,
    record_size: int,
    attrs: dict | None = None,
    previous: Previous | None = None,
) -> None:
    """Write Parquet references into ``folder``: ``.zmetadata`` (metadata and record size)
    and ``NAME/refs.N.parq`` with columns path, offset, size, raw, ``record_size`` rows
    each, in the C order of the array's chunk grid (written with fastparquet, the engine
    fsspec reads them with).

    With ``previous`` (an append), records whose rows all lie in the rows an array shares
    with the previous store are kept by ``previous`` (hard links to its files, or copies
    on an object store), not written again.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"metadata": metadata(manifest, attrs), "record_size": record_size}
    (folder / ".zmetadata").write_text(json.dumps(meta, allow_nan=True))
    paths = np.asarray([*manifest.paths, None], dtype=object)
    for name, refs in manifest.arrays.items():
        (folder / name).mkdir(exist_ok=True)
        kept = previous.kept(name, record_size, refs.files.size) if previous else 0
        for record, frame in enumerate(_records(refs, paths, record_size, kept)):
            target = folder / name / f"refs.{record}.parq"
            if frame is None:
                previous.keep(name, target)
            else:
                _write_frame(frame, target)


@dataclass(frozen=True)
class Previous:
    """A published Parquet store and, per array, how many leading rows the new one shares."""

    folder: Path
    rows: dict[str, int]

    def record_size(self) -> int | None:
        """The record size of the published store."""
        return json.loads((self.folder / ".zmetadata").read_text()).get("record_size")

    def kept(self, name: str, record_size: int, rows: int) -> int:
        """Records of ``name`` (of ``rows`` rows now) that can be linked rather than
        written: the whole ones it shares, and the last one too if it is unchanged."""
        if self.record_size() != record_size:
            return 0
        shared = self.rows.get(name, 0)
        return -(-shared // record_size) if shared == rows else shared // record_size

    def keep(self, name: str, target: Path) -> None:
        """Put the published record of array ``name`` named as ``target`` at ``target``."""
        os.link(self.folder / name / target.name, target)


def _records(refs: ArrayRefs, paths: np.ndarray, record_size: int, kept: int = 0):
    """The references of one array as data frames of ``record_size`` rows (None for the
    first ``kept`` records, which are not built: an append's cost does not grow with them)."""
    import pandas as pd

    total = refs.files.size
    skip = min(kept * record_size, total)
    files = refs.files.ravel()[skip:]
    columns = {
        "path": paths[files],  # NO_FILE (-1) picks the trailing None
        "offset": refs.offsets.ravel()[skip:].astype(np.int64),
        "size": refs.lengths.ravel()[skip:].astype(np.int64),
        "raw": refs.raw.ravel()[skip:]
        if refs.raw is not None
        else np.full(files.size, None, object),
    }
    for start in range(0, max(total, 1), record_size):
        if start < skip:
            yield None
            continue
        rows = slice(start - skip, start - skip + record_size)
        yield pd.DataFrame({k: v[rows] for k, v in columns.items()}, copy=False)


def _write_frame(frame, path: Path) -> None:
    import fastparquet

    fastparquet.write(
        str(path),
        frame,
        compression="ZSTD",
        write_index=False,
        stats=False,
        object_encoding={"path": "utf8", "raw": "bytes"},
        has_nulls=["path", "raw"],
    )
