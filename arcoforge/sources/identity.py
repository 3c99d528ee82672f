"""Input identities: what tells that an input is still the file a store was baked from.

An identity is what the input's file system says about it, cheaply (one ``info`` call,
no read): its size and, as available, its modification time (local files, in
nanoseconds), ETag and Last-Modified (HTTP servers, object stores). A remote input read
through the cache adds the sha256 of the copy baked from, and its identity is the one
the server gave when that copy was downloaded. :mod:`arcoforge.sources.lookup` looks
them up.
"""

from __future__ import annotations

COMPARED = ("size", "mtime_ns", "etag", "modified")  # the sha256 is kept, not compared


class Gone(Exception):
    """An input that is no longer there (a missing file, HTTP 404)."""


def from_info(info: dict) -> dict:
    """The identity fields of an fsspec ``info`` result, whatever its file system."""
    found = {
        "size": info.get("size"),
        "etag": info.get("ETag") or info.get("etag"),
        "modified": info.get("Last-Modified")
        or info.get("LastModified")
        or info.get("last_modified")
        or info.get("updated")
        or info.get("mtime"),
    }
    if info.get("type") == "directory":
        found.pop("size")
    return {k: v if isinstance(v, int) else str(v) for k, v in found.items() if v is not None}


def changed(recorded: dict, now: dict) -> bool | None:
    """Whether the identity ``now`` differs from the ``recorded`` one; None when they have
    no field in common to compare."""
    common = [k for k in COMPARED if k in recorded and k in now]
    if not common:
        return None
    return any(recorded[k] != now[k] for k in common)
