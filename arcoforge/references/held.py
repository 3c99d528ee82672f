"""The files of the manifest kept beside a reference store for appends.

Each is a pickle (protocol 5) whose arrays are stored out of band, after it, each at a
64-byte boundary: a local file is mapped, not read, and its arrays are views of the
mapping, so loading the manifest of a large store costs what an append touches of it.
"""

from __future__ import annotations

import mmap
import os
import pickle
import struct
from typing import Any

import fsspec

from .. import ledger as ledgers

MAGIC = b"arcoforge-held-1"
ALIGN = 64
_SIZE = struct.Struct("<Q")


def dumps(value: Any) -> bytes:
    """``value`` as the bytes of a held file."""
    buffers: list[pickle.PickleBuffer] = []
    main = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    parts = [main, *(b.raw() for b in buffers)]
    out = bytearray(MAGIC + _SIZE.pack(len(parts)))
    for part in parts:
        out += _SIZE.pack(part.nbytes if isinstance(part, memoryview) else len(part))
        out += bytes(-len(out) % ALIGN)
        out += part
    return bytes(out)


def loads(data) -> Any:
    """The value of a held file's bytes (or mapping), its arrays views of them."""
    view = memoryview(data)
    if bytes(view[: len(MAGIC)]) != MAGIC:  # as arcoforge 0.1 kept it: one plain pickle
        return pickle.loads(view)
    at = len(MAGIC)
    (count,) = _SIZE.unpack_from(view, at)
    at += _SIZE.size
    parts = []
    for _ in range(count):
        (size,) = _SIZE.unpack_from(view, at)
        at += _SIZE.size
        at += -at % ALIGN
        parts.append(view[at : at + size])
        at += size
    return pickle.loads(parts[0], buffers=parts[1:])


def load(url: str, storage_options: dict | None = None) -> Any | None:
    """The value held at ``url``, or None if there is none (a local file is mapped)."""
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    if not ledgers.is_local(fs):
        data = ledgers.get(url, storage_options)
        return None if data is None else loads(data)
    try:
        with open(path, "rb") as f:
            if not os.fstat(f.fileno()).st_size:
                return None
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        return None
    return loads(mapped)
