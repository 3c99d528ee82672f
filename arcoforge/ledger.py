"""What a bake has finished, recorded beside the store, and the lock that keeps two bakes
of one store apart."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec

from . import locks, statefile
from .errors import ArcoforgeError, TargetError, one_line
from .locks import LockedError as LockedError  # where callers have always found it

VERSION = 1
STATE_KIND = "staging state"
log = logging.getLogger("arcoforge")


@dataclass(frozen=True)
class Ledger:
    """The bookkeeping of the store at ``store``, kept beside it in ``.NAME.arcoforge/``.

    ``manifest.json`` describes the published store: the recipe's fingerprint, the inputs
    it holds, its status. ``staging/`` belongs to the bake in progress: its manifest, what
    its scan learned, and one marker per finished write task. Keeping all of it beside the
    store leaves the store pure Zarr. Picklable, so write tasks carry it to workers.
    """

    store: str
    storage_options: dict | None = None

    @property
    def folder(self) -> str:
        parent, _, name = self.store.rstrip("/").rpartition("/")
        return f"{parent}/.{name}.arcoforge"

    @property
    def staging_store(self) -> str:
        parent, _, name = self.store.rstrip("/").rpartition("/")
        return f"{parent}/.{name}.partial"

    def read(self, name: str = "manifest.json") -> dict | None:
        """A manifest (the published one by default), or None if there is none."""
        data = get(f"{self.folder}/{name}", self.storage_options)
        if data is None:
            return None
        try:
            manifest = json.loads(data)
        except ValueError:
            raise ArcoforgeError(f"{self.folder}/{name}: not valid JSON") from None
        if manifest.get("version") != VERSION:
            raise ArcoforgeError(
                f"{self.folder}/{name}: unknown version {manifest.get('version')!r}"
            )
        return manifest

    def write(self, manifest: dict, name: str = "manifest.json") -> None:
        """Write a manifest atomically."""
        body = json.dumps({"version": VERSION, **manifest}, indent=1, default=str)
        put(f"{self.folder}/{name}", body.encode(), self.storage_options)

    @property
    def state_url(self) -> str:
        """Where the bake in progress keeps what its scan learned."""
        return f"{self.folder}/staging/state.json"

    def save_state(self, state: Any, types: Iterable[type] = ()) -> None:
        """Keep what the scan learned, so that a resumed bake need not scan again: data
        only (see :mod:`arcoforge.statefile`), of the dataclasses ``types`` at most."""
        try:
            body = statefile.dumps_json(state, STATE_KIND, types)
        except TypeError as exc:
            raise ArcoforgeError(f"{self.state_url}: cannot keep {exc}") from exc
        put(self.state_url, body, self.storage_options)

    def load_state(self, types: Iterable[type] = ()) -> Any | None:
        """What :meth:`save_state` kept, or None: also when it cannot be read (tampered
        with, truncated, or kept by another version), which is said in a warning, and the
        bake scans again."""
        data = get(self.state_url, self.storage_options)
        if data is None:
            return None
        try:
            return statefile.loads_json(data, self.state_url, STATE_KIND, types)
        except statefile.StateFileError as exc:
            log.warning("%s; scanning the inputs again", exc)
            return None

    def mark_done(self, units: Iterable[str], missing: dict[str, str] | None = None) -> None:
        """Record that ``units`` are written and checked, and which inputs they lack."""
        units = list(units)
        body = json.dumps({"units": units, "missing": missing or {}}).encode()
        task = hashlib.sha1("\n".join(units).encode()).hexdigest()[:20]
        put(f"{self.folder}/staging/done/{task}", body, self.storage_options)

    def finished(self) -> tuple[set[str], dict[str, str]]:
        """The units the bake in progress has finished, and the inputs they lack."""
        fs, path = _fs(f"{self.folder}/staging/done", self.storage_options)
        try:
            paths = [p for p in fs.find(path) if not p.rsplit("/", 1)[-1].startswith(".")]
        except FileNotFoundError:
            paths = []
        units: set[str] = set()
        missing: dict[str, str] = {}
        for body in fs.cat(paths).values() if paths else ():
            record = json.loads(body)
            units.update(record["units"])
            missing.update(record["missing"])
        return units, missing

    def clear_staging(self) -> None:
        """Forget the bake in progress: its staging store and its records."""
        fs, _ = _fs(self.folder, self.storage_options)
        for url in (self.staging_store, f"{self.folder}/staging"):
            path = fs._strip_protocol(url)
            if fs.exists(path):
                remove(fs, path)

    @contextmanager
    def lock(self, run: str | None = None) -> Iterator[None]:
        """Hold this store for one bake (run ``run``); a second bake is refused with
        :class:`LockedError` naming the holder and the lock's URL.

        On a local disk the lock is an ``flock`` the kernel drops when the process dies,
        so a killed bake never leaves a stale lock. Elsewhere it is a lock object taken
        atomically, naming its owner and kept alive by a heartbeat; one whose owner
        stopped beating is taken over (see :mod:`arcoforge.locks`).
        """
        with locks.held(f"{self.folder}/lock", self.store, self.storage_options, run):
            yield


def _fs(url: str, storage_options: dict | None):
    return fsspec.core.url_to_fs(url, **(storage_options or {}))


def put(url: str, data: bytes, storage_options: dict | None = None) -> None:
    """Write ``data`` to ``url`` whole or not at all (temp file and rename on local disks)."""
    fs, path = _fs(url, storage_options)
    if is_local(fs):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temp.write_bytes(data)
        os.replace(temp, path)
    else:
        try:
            fs.pipe_file(path, data)
        except OSError as exc:
            raise TargetError(f"{url}: cannot write it: {one_line(exc)}") from exc


def remove(fs, path: str) -> None:
    """Remove the file or folder at ``path`` and all under it. Objects of a path with glob
    characters (``[`` of a test's name, say) are removed one by one: ``fs.rm`` would take
    the path for a glob."""
    if is_local(fs):
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    elif any(c in path for c in "*?["):
        for found in fs.find(path):
            fs.rm_file(found)
        fs.invalidate_cache(path)
    else:
        fs.rm(path, recursive=True)


def get(url: str, storage_options: dict | None = None) -> bytes | None:
    """The bytes at ``url``, or None when there are none."""
    fs, path = _fs(url, storage_options)
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        return None


def is_local(fs) -> bool:
    """Whether ``fs`` is this machine's file system."""
    return "file" in fs.protocol or "local" in fs.protocol


def unit_key(name: str, region: Iterable[tuple[str, slice]]) -> str:
    """A name for one variable over one region, the unit whose completion is recorded."""
    span = ",".join(f"{d}={s.start}:{s.stop}" for d, s in region)
    return f"{name}[{span}]"


def fingerprint(*parts: Any) -> str:
    """A stable digest of a recipe's inputs and settings (functions by their source)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(_stable(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


_LEAVES = {str, int, float, type(None)}  # exact types: a fingerprint goes through every input
_SEQUENCES = {list, tuple}


def _stable(value: Any) -> str:
    kind = type(value)
    if kind in _LEAVES:
        return repr(value)
    if kind in _SEQUENCES:
        return "[" + ",".join([repr(v) if type(v) in _LEAVES else _stable(v) for v in value]) + "]"
    if isinstance(value, str | int | float | None):
        return repr(value)
    if callable(value) and not isinstance(value, type):
        try:
            return f"{getattr(value, '__qualname__', '')}:{inspect.getsource(value)}"
        except (OSError, TypeError):
            return getattr(value, "__qualname__", repr(value))
    if isinstance(value, dict):
        return "{" + ",".join(f"{k!r}:{_stable(v)}" for k, v in sorted(value.items())) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_stable(v) for v in value) + "]"
    if hasattr(value, "__dataclass_fields__"):
        fields = {k: getattr(value, k) for k in value.__dataclass_fields__}
        return f"{type(value).__name__}{_stable(fields)}"
    return repr(value)
