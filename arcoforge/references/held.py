"""The files of the manifest kept beside a reference store for appends.

Each is a state file (see :mod:`arcoforge.core.statefile`): a JSON header describing the
manifest, then its arrays as raw buffers, each at a 64-byte boundary. A local file is
mapped, not read, and its arrays are views of the mapping, so loading the manifest of a
large store costs what an append touches of it. Files kept as pickles by an earlier
arcoforge are refused, never unpickled.
"""

from __future__ import annotations

import mmap
import os
from typing import Any

import fsspec

from arcoforge.core import ledger as ledgers
from arcoforge.core.statefile import ALIGN, StateFileError, dumps_binary, loads_binary
from arcoforge.references.manifest import ArrayRefs, Manifest

__all__ = ["ALIGN", "dumps", "load", "loads"]

KIND = "held references"
TYPES = (Manifest, ArrayRefs)


def dumps(value: tuple[list[str], Manifest]) -> bytes:
    """``(urls, manifest)`` as the bytes of a held file."""
    return dumps_binary(value, KIND, TYPES)


def loads(data, url: str = "held references") -> Any:
    """The ``(urls, manifest)`` of a held file's bytes (or mapping), its arrays views of
    them; a file that is not one is a one-line error naming ``url``, saying to bake the
    store again."""
    try:
        return loads_binary(data, url, KIND, TYPES)
    except StateFileError as exc:
        raise StateFileError(f"{exc}; bake the store again with --force") from exc


def load(url: str, storage_options: dict | None = None) -> Any | None:
    """The value held at ``url``, or None if there is none (a local file is mapped)."""
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    if not ledgers.is_local(fs):
        data = ledgers.get(url, storage_options)
        return None if data is None else loads(data, url)
    try:
        with open(path, "rb") as f:
            if not os.fstat(f.fileno()).st_size:
                return None
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        return None
    return loads(mapped, url)
