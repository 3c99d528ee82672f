"""kerchunk version-1 JSON references, in a layout that can be appended to and read in
part without parsing the whole file.

The file is ``{"version":1,"refs":{BODY,TAIL}}``: BODY holds the chunk references of the
arrays that only point into files, array by array, a leading row of chunks at a time in C
order; TAIL starts at the ``.zgroup`` key and holds the metadata (consolidated in
``.zmetadata``) and the arrays with inline chunks. An append copies the BODY of the
published file, adds the new rows after it and writes a new TAIL; a check finds the TAIL
and the rows it needs by their keys.

:class:`JsonFormat` stages such a file beside the published one and swaps the two (on an
object store, uploads it and copies it into place).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import functools
import itertools
import json
import mmap
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from arcoforge.core import ledger as ledgers
from arcoforge.references.formats.base import KerchunkFormat
from arcoforge.references.formats.parquet import metadata, rows
from arcoforge.references.manifest import NO_FILE, ArrayRefs, Manifest

HEAD = b'{"version":1,"refs":{'
TAIL = b'".zgroup":'
BLOCK = 1 << 16  # chunk references formatted at a time
NEAR = 1 << 20  # bytes searched first, after the last row found and before the TAIL


def write_json(
    manifest: Manifest,
    path: str | Path,
    attrs: dict | None = None,
    previous: str | Path | None = None,
    shared: dict[str, int] | None = None,
) -> None:
    """Write ``manifest`` to ``path``. With ``previous`` (a published file in this layout)
    and ``shared`` (per array, its leading references that file holds), the BODY of that
    file is copied and only the references after the shared ones are formatted."""
    quoted = [json.dumps(p) for p in manifest.paths]
    body = {n: r for n, r in manifest.arrays.items() if r.raw is None}
    end, old = _body_end(previous) if previous else (-1, set())
    if not body or not old <= set(body) or not set(body) <= set(shared or {}):
        end = -1
    starts = {name: shared[name] if end > 0 else 0 for name in body}
    reuse = end > 0 and os.path.isfile(path)
    with open(path, "r+b" if reuse else "wb") as out:
        first = end <= 0
        if first:
            out.write(HEAD)
        else:
            _copy(previous, out, end)
        for name, refs in body.items():
            for text in _entries(name, refs, quoted, starts[name]):
                out.write(text if first else b"," + text)
                first = False
        out.write(b"" if first else b",")
        out.write(_tail(manifest, attrs, quoted))
        out.write(b"}}")
        out.truncate()


def _copy(source: str | Path, out, size: int) -> None:
    """The first ``size`` bytes of ``source`` written at the start of ``out`` (in the
    kernel, over the blocks of a file written before where ``out`` is one: that spares
    allocating new ones), and ``out`` positioned after them."""
    with open(source, "rb") as src:
        if hasattr(os, "copy_file_range"):
            done = 0
            while done < size:
                copied = os.copy_file_range(src.fileno(), out.fileno(), size - done, done, done)
                if not copied:
                    raise OSError(f"{source}: shorter than {size} bytes")
                done += copied
        else:
            shutil.copyfileobj(src, out)
    out.seek(size)


def _body_end(path: str | Path) -> tuple[int, set[str]]:
    """Where the BODY of the file at ``path`` ends and the arrays it holds (-1 if the
    file is not in this layout)."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            end = mm.rfind(b"," + TAIL)
            if mm[: len(HEAD)] != HEAD or end < 0:
                return -1, set()
            tail = json.loads(b"{" + mm[end + 1 : -1])
    except (OSError, ValueError):
        return -1, set()
    return end, _arrays(tail) - _inline(tail)


def _arrays(refs: dict) -> set[str]:
    """The arrays of the consolidated metadata in ``refs``."""
    meta = json.loads(refs[".zmetadata"])["metadata"]
    return {k.removesuffix("/.zarray") for k in meta if k.endswith("/.zarray")}


def _inline(refs: dict) -> set[str]:
    """The arrays with chunk keys in ``refs`` (those of a TAIL: with inline chunks)."""
    return {k.rsplit("/", 1)[0] for k in refs if not k.rsplit("/", 1)[-1].startswith(".")}


def _tail(manifest: Manifest, attrs: dict | None, quoted: list[str]) -> bytes:
    meta = metadata(manifest, attrs)
    meta[".zmetadata"] = {"zarr_consolidated_format": 1, "metadata": dict(meta)}
    entries = [
        f"{json.dumps(k)}:{json.dumps(json.dumps(v, allow_nan=True))}" for k, v in meta.items()
    ]
    for name, refs in manifest.arrays.items():
        if refs.raw is not None:
            entries += [t.decode() for t in _entries(name, refs, quoted)]
    return ",".join(entries).encode()


def _entries(name: str, refs: ArrayRefs, quoted: list[str], start: int = 0) -> Iterator[bytes]:
    """``"NAME/KEY":REFERENCE`` of the array's chunks from flat index ``start`` on, in C
    order, joined by commas in blocks of about ``BLOCK`` chunks."""
    grid = refs.grid
    rows = grid[0] if grid else 1
    suffixes = _suffixes(grid)
    files, offsets, lengths = (a.reshape(-1) for a in (refs.files, refs.offsets, refs.lengths))
    raw = refs.raw.reshape(-1) if refs.raw is not None else None
    prefix = json.dumps(name)[1:-1]
    step = max(1, BLOCK // len(suffixes))
    for row in range(start // len(suffixes), rows, step):
        lo = max(start, row * len(suffixes))
        hi = min(rows, row + step) * len(suffixes)
        keys = (f"{i}{s}" if grid else "0" for i in range(row, row + step) for s in suffixes)
        block = _block(
            prefix,
            itertools.islice(keys, lo - row * len(suffixes), None),
            files[lo:hi].tolist(),
            offsets[lo:hi].tolist(),
            lengths[lo:hi].tolist(),
            raw[lo:hi].tolist() if raw is not None else itertools.repeat(None),
            quoted,
        )
        if block:
            yield block.encode()


def _suffixes(grid: tuple[int, ...]) -> list[str]:
    """The key suffixes of one leading row of chunks (``.0.0`` ...; one empty one for
    arrays of one or no dimension)."""
    if len(grid) <= 1:
        return [""]
    return ["." + ".".join(k) for k in itertools.product(*[map(str, range(n)) for n in grid[1:]])]


def _block(prefix: str, keys, files, offsets, lengths, raw, quoted: list[str]) -> str:
    lines = []
    for key, f, o, n, r in zip(keys, files, offsets, lengths, raw, strict=False):
        if r is not None:
            lines.append(f'"{prefix}/{key}":"base64:{base64.b64encode(r).decode()}"')
        elif f != NO_FILE:
            lines.append(f'"{prefix}/{key}":[{quoted[f]},{o},{n}]')
    return ",".join(lines)


def read_overlapping(path: str | Path, dim: str, spans) -> dict:
    """The TAIL of the file at ``path`` and the BODY references of the chunks that meet
    ``spans`` along ``dim`` (every chunk of arrays without ``dim`` first), found by key
    without parsing the rest."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        return overlapping(mm, dim, spans, str(path))


def overlapping(data: bytes | mmap.mmap, dim: str, spans, where: str) -> dict:
    """:func:`read_overlapping` of a file's bytes (``where`` names the file in errors)."""
    start = data.rfind(TAIL)
    if data[: len(HEAD)] != HEAD or start < 0:
        raise ValueError(f"{where}: not JSON references as arcoforge writes them")
    refs = json.loads(b"{" + data[start:-1])
    meta = json.loads(refs[".zmetadata"])["metadata"]
    inline = _inline(refs)
    at = 0
    for key, zarray in meta.items():
        name = key.removesuffix("/.zarray")
        if name == key or name in inline:
            continue  # not an array, or one with inline chunks, in the TAIL
        dims = meta[f"{name}/.zattrs"]["_ARRAY_DIMENSIONS"]
        for row in rows(zarray, dims, dim, spans):
            found, at = _row_refs(data, name, row, len(dims), at)
            refs.update(found)
    return refs


def _row_refs(mm: bytes | mmap.mmap, name: str, row: int, ndim: int, at: int) -> tuple[dict, int]:
    """The references of one leading row of an array's chunks (consecutive entries from
    the first whose key starts with ``NAME/ROW``) and where they lie. The search looks
    near ``at``, where the previous row was found (the rows sought are in the order
    written), then at the end of the BODY (where the last append put its rows), then
    from ``at`` on, wrapping around."""
    key = f"{name}/{row if ndim else 0}"
    needle = ('"' + json.dumps(key)[1:-1] + ("." if ndim > 1 else '":')).encode()
    size = len(mm)
    windows = ((at, at + NEAR), (size - NEAR, size), (at, size), (0, at + len(needle)))
    found = next((f for lo, hi in windows if (f := mm.find(needle, max(lo, 0), hi)) >= 0), -1)
    if found < 0:
        return {}, at
    size = 1 << 16
    while True:
        text = mm[found : found + size].decode()
        try:
            return _parse_row(text, key), found
        except (ValueError, IndexError):
            if found + size >= len(mm):
                raise
            size *= 4


def _parse_row(text: str, key: str) -> dict:
    """Entries from the start of ``text`` while their keys are ``key`` or ``key.*``."""
    decoder, found, i = json.JSONDecoder(), {}, 0
    while True:
        name, i = json.decoder.scanstring(text, i + 1)
        if name != key and not name.startswith(key + "."):
            return found
        if text[i] != ":":
            raise ValueError(f"':' expected after {name!r}")
        found[name], i = decoder.raw_decode(text, i + 1)
        if text[i] != ",":
            return found
        i += 1


@dataclass(frozen=True)
class JsonFormat(KerchunkFormat):
    """A kerchunk JSON file in the layout above."""

    def write_local(self, manifest: Manifest, attrs: dict, shared: dict[str, int] | None):
        """Written in the spare file where there is one (an append), the BODY the published
        file shares copied from it."""
        previous = self.url if shared and os.path.isfile(self.url) else None
        if previous:
            self._reuse_spare()
        write_json(manifest, self.staging, attrs, previous, shared)

    def upload_staged(self, manifest: Manifest, attrs: dict, shared: dict[str, int] | None):
        """Written in a local temporary folder (appended to a copy of the published file)
        and uploaded as one object."""
        fs = self.fs
        with tempfile.TemporaryDirectory(prefix="arcoforge-refs-") as temp:
            local = f"{temp}/{self.url.rsplit('/', 1)[-1]}"
            previous = None
            if shared and fs.isfile(self.url):
                previous = f"{temp}/published.json"
                fs.get_file(self.url, previous)
            write_json(manifest, local, attrs, previous, shared)
            fs.put_file(local, self.staging)

    def read_overlapping(self, dim: str | None, spans) -> dict:
        if self.remote:
            return overlapping(self.fs.cat_file(self.staging), dim, spans, self.staging)
        return read_overlapping(self.staging, dim, spans)

    def publish_local(self) -> None:
        """The staged file is swapped with the published one where the system can (a
        rename over a file would have ext4 write the new one to disk first), and the one
        replaced is kept as :attr:`spare`."""
        if not os.path.exists(self.staging):
            return
        if os.path.isfile(self.url) and exchange(self.staging, self.url):
            os.replace(self.staging, self.spare)  # the version replaced
        else:
            if os.path.isfile(self.url):
                _link(self.url, self.spare)
            os.replace(self.staging, self.url)

    def publish_remote(self) -> None:
        """The staged object copied into place, then removed."""
        fs = self.fs
        if fs.isfile(self.staging):
            fs.cp_file(self.staging, self.url)
            fs.rm_file(self.staging)

    @property
    def spare(self) -> str:
        """Where a local file's previous version is kept (in the ledger's folder beside
        it), for the next append to write over: an append then neither allocates nor frees
        a file the size of the references (which takes as long as writing it)."""
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


def exchange(a: str, b: str) -> bool:
    """Swap the files at ``a`` and ``b`` atomically (Linux's ``renameat2`` with
    ``RENAME_EXCHANGE``); False where the system or the file system cannot."""
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
