"""kerchunk Parquet references: a folder of Parquet files that fsspec's
``ReferenceFileSystem`` reads lazily, one record at a time, and :class:`ParquetFormat`,
which stages such a folder beside the published one and renames it into place (on an
object store, uploads its records, then its ``.zmetadata``, and copies them into place in
that order).

The records are built from the manifest's arrays in bulk: chunk keys and references are
formatted per array, not looked up per chunk in a dict (as are JSON references,
:mod:`.json`, which share :func:`metadata` and :func:`rows`).
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from arcoforge.core import ledger as ledgers
from arcoforge.errors import require
from arcoforge.references.formats.base import KerchunkFormat
from arcoforge.references.manifest import NO_FILE, ArrayRefs, Manifest, grid_of


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
    each, in the C order of the array's chunk grid. They are written with pyarrow, with
    the pandas metadata that gives fastparquet (the engine fsspec reads them with) the
    columns' types.

    With ``previous`` (an append), records whose rows all lie in the rows an array shares
    with the previous store are kept by ``previous`` (hard links to its files, or copies
    on an object store), not written again.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"metadata": metadata(manifest, attrs), "record_size": record_size}
    (folder / ".zmetadata").write_text(json.dumps(meta, allow_nan=True))
    paths = _path_array(manifest.paths)
    for name, refs in manifest.arrays.items():
        (folder / name).mkdir(exist_ok=True)
        kept = previous.kept(name, record_size, refs.files.size) if previous else 0
        for record, rows in enumerate(_records(refs, record_size, kept)):
            target = folder / name / f"refs.{record}.parq"
            if rows is None:
                previous.keep(name, target)
            else:
                _write_record(_columns(*rows, paths), target)


@dataclass(frozen=True)
class Previous:
    """A published Parquet store and, per array, how many leading rows the new one shares."""

    folder: Path
    rows: dict[str, int]

    @functools.cached_property
    def record_size(self) -> int | None:
        """The record size of the published store (read once)."""
        return json.loads(self._zmetadata()).get("record_size")

    def _zmetadata(self) -> bytes:
        return (self.folder / ".zmetadata").read_bytes()

    def kept(self, name: str, record_size: int, rows: int) -> int:
        """Records of ``name`` (of ``rows`` rows now) that can be linked rather than
        written: the whole ones it shares, and the last one too if it is unchanged."""
        if self.record_size != record_size:
            return 0
        shared = self.rows.get(name, 0)
        return -(-shared // record_size) if shared == rows else shared // record_size

    def keep(self, name: str, target: Path) -> None:
        """Put the published record of array ``name`` named as ``target`` at ``target``."""
        os.link(self.folder / name / target.name, target)


def _records(refs: ArrayRefs, record_size: int, kept: int = 0):
    """The references of one array in records of ``record_size`` rows: files, offsets,
    lengths and inline chunks (or None) of each, or None for each of the first ``kept``
    records, which are not built (an append's cost does not grow with them)."""
    total = refs.files.size
    grids = [refs.files, refs.offsets, refs.lengths, refs.raw]
    flat = [None if grid is None else grid.ravel() for grid in grids]
    for start in range(0, max(total, 1), record_size):
        if start < kept * record_size:
            yield None
            continue
        yield [None if f is None else f[start : start + record_size] for f in flat]


def _columns(files, offsets, lengths, raw, paths) -> dict:
    """A record's columns as Arrow arrays, built from their buffers: converting Python
    objects, pyarrow would first load its pandas shim (some 7 ms a process)."""
    pa, _ = pyarrow_modules()
    inline = np.zeros(files.size, bool) if raw is None else np.not_equal(raw, None)
    return {
        "path": _paths(files, paths),
        "offset": _numbers(offsets),
        "size": _numbers(lengths),
        "raw": _strings(pa.binary(), [] if raw is None else list(raw[inline]), inline),
    }


def _path_array(paths: list[str]):
    """The manifest's paths as an Arrow array, which the rows of every record index."""
    pa, _ = pyarrow_modules()
    return _strings(pa.string(), [p.encode() for p in paths], np.ones(len(paths), bool))


def _paths(files: np.ndarray, paths):
    """The path of each row's file (``paths`` an array of them; null where there is no
    file), looked up by Arrow."""
    pa, _ = pyarrow_modules()
    stored = files != NO_FILE
    if not stored.any():
        return _strings(pa.string(), [], stored)
    index = pa.py_buffer(np.where(stored, files, 0).astype(np.int32))
    nulls = int(files.size - np.count_nonzero(stored))
    indices = pa.Array.from_buffers(pa.int32(), files.size, [_bitmap(stored), index], nulls)
    return pa.DictionaryArray.from_arrays(indices, paths).dictionary_decode()


def _numbers(values: np.ndarray):
    pa, _ = pyarrow_modules()
    data = pa.py_buffer(np.ascontiguousarray(values, dtype=np.int64))
    return pa.Array.from_buffers(pa.int64(), values.size, [None, data])


def _strings(kind, items: list[bytes], present: np.ndarray):
    """A string or binary array of ``items`` at the rows where ``present``, null elsewhere."""
    pa, _ = pyarrow_modules()
    sizes = np.zeros(present.size, np.int64)
    sizes[present] = [len(item) for item in items]
    offsets = np.zeros(present.size + 1, np.int32)
    offsets[1:] = np.cumsum(sizes)
    buffers = [_bitmap(present), pa.py_buffer(offsets), pa.py_buffer(b"".join(items))]
    nulls = int(present.size - np.count_nonzero(present))
    return pa.Array.from_buffers(kind, present.size, buffers, null_count=nulls)


def _bitmap(present: np.ndarray):
    pa, _ = pyarrow_modules()
    return pa.py_buffer(np.packbits(present, bitorder="little"))


def _write_record(columns: dict, path: Path) -> None:
    pa, pq = pyarrow_modules()
    table = pa.table(columns, schema=_schema())
    pq.write_table(table, str(path), compression="zstd", write_statistics=False)


COLUMNS = ("path", "offset", "size", "raw")


@functools.cache
def _schema():
    """The columns of a record, and the pandas metadata by which fastparquet reads the
    offsets and sizes as integers, not as floats."""
    pa, _ = pyarrow_modules()
    types = {  # arrow type, pandas type, numpy type
        "path": (pa.string(), "unicode", "object"),
        "offset": (pa.int64(), "int64", "int64"),
        "size": (pa.int64(), "int64", "int64"),
        "raw": (pa.binary(), "bytes", "object"),
    }
    columns = [
        {"name": k, "field_name": k, "pandas_type": kind, "numpy_type": numpy}
        for k, (_, kind, numpy) in types.items()
    ]
    pandas = {"index_columns": [], "column_indexes": [], "columns": columns}
    fields = [pa.field(k, t[0], nullable=k in ("path", "raw")) for k, t in types.items()]
    return pa.schema(fields, metadata={"pandas": json.dumps(pandas)})


def pyarrow_modules():
    """pyarrow and its Parquet module, which Parquet references are written and checked with."""
    pyarrow = require("pyarrow", "Parquet references")
    return pyarrow, require("pyarrow.parquet", "Parquet references")


def preload() -> None:
    """Load what writing and reading records takes: pyarrow's Parquet module."""
    pyarrow_modules()


def read_overlapping(folder: str, dim: str, spans, fs=None) -> dict:
    """The metadata of the Parquet references in ``folder`` (on ``fs``, else local) and
    the references of the chunks that meet ``spans`` along ``dim`` (every chunk of arrays
    without ``dim``), by key, as fsspec's ``ReferenceFileSystem`` takes them: only the
    records that hold them are read."""
    read = fs.cat_file if fs is not None else (lambda p: Path(p).read_bytes())
    body = read(f"{folder}/.zmetadata")
    zmeta = json.loads(body)
    meta, size = zmeta["metadata"], zmeta["record_size"]
    refs: dict = {".zmetadata": body, **{k: json.dumps(v) for k, v in meta.items()}}
    for key, zarray in meta.items():
        name = key.removesuffix("/.zarray")
        if name == key:
            continue
        dims = meta[f"{name}/.zattrs"]["_ARRAY_DIMENSIONS"]
        grid = grid_of(tuple(zarray["shape"]), tuple(zarray["chunks"])) if dims else ()
        per_row = math.prod(grid[1:])
        wanted = np.asarray(
            [r * per_row + k for r in rows(zarray, dims, dim, spans) for k in range(per_row)],
            dtype=np.int64,
        )
        for record in np.unique(wanted // size).tolist():
            path = f"{folder}/{name}/refs.{record}.parq"
            found = wanted[wanted // size == record]
            refs.update(_record_refs(read, path, name, grid, found, record * size))
    return refs


def _record_refs(read, path: str, name: str, grid, flat: np.ndarray, start: int) -> dict:
    """The references of the chunks at ``flat`` indices of one record (whose first row is
    chunk ``start``), as fsspec reads them: inline bytes, [url] for a whole file, else
    [url, offset, size]; none for a row without a path."""
    _, pq = pyarrow_modules()
    try:  # not pq.read_table, which imports pyarrow's dataset API (0.02 s); one thread for
        # a record or two (Arrow's pool would start for them)
        record = pq.ParquetFile(io.BytesIO(read(path)))
        table = record.read(columns=list(COLUMNS), use_threads=False)
    except FileNotFoundError:
        return {}
    flat = flat[flat - start < table.num_rows]
    found = _rows(table, flat - start)
    index = np.unravel_index(flat, grid) if grid else [np.zeros(flat.size, int)]
    digits = [list(map(str, a.tolist())) for a in index]
    keys = (f"{name}/{'.'.join(i)}" for i in zip(*digits, strict=True))
    refs = {}
    for key, url, offset, size, raw in zip(keys, *found.values(), strict=True):
        if raw is not None:
            refs[key] = raw
        elif url is not None:
            refs[key] = [url] if offset == size == 0 else [url, offset, size]
    return refs


def _rows(table, rows: np.ndarray) -> dict[str, list]:
    """The columns of ``table`` at ``rows`` (increasing), a run of rows at a time (a
    ``take`` would load pyarrow's pandas shim)."""
    found: dict[str, list] = {name: [] for name in table.column_names}
    for run in np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1):
        if run.size:
            for name, values in table.slice(int(run[0]), run.size).to_pydict().items():
                found[name] += values
    return found


def rows(zarray: dict, dims: list[str], dim: str, spans) -> list[int]:
    """The leading rows of chunks that hold ``spans`` along ``dim`` (all, unless ``dim``
    is the leading one)."""
    count = -(-zarray["shape"][0] // zarray["chunks"][0]) if dims else 1
    if not dims or dims[0] != dim:
        return list(range(count))
    step = zarray["chunks"][0]
    return sorted({i for a, b in spans for i in range(a // step, (b - 1) // step + 1)})


@dataclass(frozen=True)
class ParquetFormat(KerchunkFormat):
    """A folder of Parquet references, ``record_size`` references a record."""

    record_size: int = 100_000
    consolidated = False  # its .zmetadata is its own, not Zarr's

    @classmethod
    def for_writer(
        cls, writer, url: str, staging: str, storage_options: dict | None = None
    ) -> ParquetFormat:
        return cls(url, staging, storage_options, writer.record_size)

    def preload(self) -> None:
        preload()

    def write_local(self, manifest: Manifest, attrs: dict, shared: dict[str, int] | None):
        """Written in place, the records an append shares with the published folder
        hard-linked from it."""
        previous = None
        if shared and os.path.isdir(self.url):
            previous = Previous(Path(self.url), shared)
        write_parquet(manifest, self.staging, self.record_size, attrs, previous)

    def upload_staged(self, manifest: Manifest, attrs: dict, shared: dict[str, int] | None):
        """Written in a local temporary folder and uploaded under the staging name: the
        records (those it keeps copied from the published store on the server) before its
        ``.zmetadata``."""
        fs = self.fs
        with tempfile.TemporaryDirectory(prefix="arcoforge-refs-") as temp:
            local = f"{temp}/{self.url.rsplit('/', 1)[-1]}"
            previous = None
            if shared and fs.isfile(f"{self.url}/.zmetadata"):
                previous = CopiedPrevious(self.url, shared, fs, self.staging)
            write_parquet(manifest, local, self.record_size, attrs, previous)
            records = sorted(str(p) for p in Path(local).rglob("*.parq"))
            if records:
                fs.put(records, [self.staging + r.removeprefix(local) for r in records])
            fs.put_file(f"{local}/.zmetadata", f"{self.staging}/.zmetadata")

    def read_overlapping(self, dim: str | None, spans) -> dict:
        return read_overlapping(self.staging, dim, spans, self.fs if self.remote else None)

    def publish_local(self) -> None:
        """The published folder renamed aside, the staged one renamed into its place, then
        the one aside removed."""
        if not os.path.isdir(self.staging):
            return
        old = f"{ledgers.Ledger(self.url).folder}/{ledgers.REPLACED}"
        if os.path.exists(self.url):
            shutil.rmtree(old, ignore_errors=True)
            os.rename(self.url, old)
        os.rename(self.staging, self.url)
        shutil.rmtree(old, ignore_errors=True)

    def publish_remote(self) -> None:
        """The staged records that differ copied into place first, then ``.zmetadata``,
        then the records the store no longer has removed. Objects are named one by one:
        fsspec would take ``[`` in a name for a glob."""
        fs = self.fs
        staged = _listing(fs, self.staging)
        if not staged:
            return  # published already
        published = _listing(fs, self.url)
        for key, tag in staged.items():
            if key != ".zmetadata" and published.get(key) != tag:
                fs.cp_file(f"{self.staging}/{key}", f"{self.url}/{key}")
        fs.cp_file(f"{self.staging}/.zmetadata", f"{self.url}/.zmetadata")
        for key in published.keys() - staged.keys():
            fs.rm_file(f"{self.url}/{key}")
        _remove(fs, self.staging)


@dataclass(frozen=True)
class CopiedPrevious(Previous):
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
