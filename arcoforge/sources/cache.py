"""A content-verified cache of input files, safe with concurrent workers."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path
from urllib.parse import urlsplit

from arcoforge.errors import SourceError


class Cache:
    """Input files kept under ``root``, each with a sidecar recording its size, sha256 and
    how many attempts its download took.

    Entries are written to a temporary name and renamed into place, the data before its
    sidecar, so a reader never takes a partial file for a complete one.
    """

    def __init__(self, root: str | os.PathLike):
        root = str(root)
        if root.startswith("file://"):
            root = root[len("file://") :]
        elif "://" in root:
            raise SourceError(f"cache {root}: only local cache folders are supported")
        self.root = Path(root)

    def path_for(self, url: str) -> Path:
        """Where ``url`` (without secrets) is cached."""
        digest = hashlib.sha256(url.encode()).hexdigest()[:20]
        name = os.path.basename(urlsplit(url).path) or "input"
        return self.root / f"{digest}-{name}"

    def lookup(self, url: str) -> Path | None:
        """The cached file for ``url`` if present and intact, else ``None``."""
        path = self.path_for(url)
        try:
            meta = json.loads(_sidecar(path).read_text())
            if path.stat().st_size != meta["size"] or file_sha256(path) != meta["sha256"]:
                return None
        except (OSError, ValueError, KeyError):
            return None
        return path

    def entry(self, url: str) -> dict | None:
        """The sidecar of the cached copy of ``url`` (its size, sha256 and ``source``, the
        identity its server gave when it was downloaded), or ``None``."""
        try:
            return json.loads(_sidecar(self.path_for(url)).read_text())
        except (OSError, ValueError):
            return None

    def forget(self, url: str) -> None:
        """Drop the cached copy of ``url`` (its input changed), sidecar first."""
        path = self.path_for(url)
        _sidecar(path).unlink(missing_ok=True)
        path.unlink(missing_ok=True)

    def store(
        self, url: str, tmp: Path, sha256: str, attempts: int = 1, source: dict | None = None
    ) -> Path:
        """Move the verified download ``tmp`` into place for ``url``; ``source`` is the
        identity of the input its server gave (see :mod:`arcoforge.sources.identity`)."""
        path = self.path_for(url)
        meta = {"url": url, "size": tmp.stat().st_size, "sha256": sha256, "attempts": attempts}
        meta["source"] = source or {}
        os.replace(tmp, path)
        side_tmp = _sidecar(tmp)
        side_tmp.write_text(json.dumps(meta))
        os.replace(side_tmp, _sidecar(path))
        return path

    def retries(self, urls: Iterable[str], since: float) -> int:
        """How many times the downloads of ``urls`` stored after ``since`` were retried."""
        count = 0
        for url in urls:
            sidecar = _sidecar(self.path_for(url))
            with suppress(OSError, ValueError, KeyError):
                if sidecar.stat().st_mtime >= since:
                    count += json.loads(sidecar.read_text()).get("attempts", 1) - 1
        return count

    def temp_path(self, url: str) -> Path:
        """A fresh temporary name beside the entry for ``url``."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.path_for(url)
        return final.with_name(f".{final.name}.{os.getpid()}.{os.urandom(4).hex()}.part")


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()
