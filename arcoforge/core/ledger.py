"""What a bake has finished, recorded beside the store, and the lock that keeps two bakes
of one store apart."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec

from arcoforge.core import locks, statefile
from arcoforge.core.locks import LockedError as LockedError
from arcoforge.errors import ArcoforgeError, TargetError, one_line

VERSION = 1
STATE_KIND = "staging state"
log = logging.getLogger("arcoforge")


class NotOursError(ArcoforgeError):
    """A store or staging name holds something arcoforge did not make."""


STAGED = "staging/manifest.json"  # the manifest of the bake in progress, in the folder
REPLACED = "replaced"  # where a published local store steps aside, in the folder
SEAL_FILES = ("zarr.json", ".zmetadata", ".zgroup", ".zattrs")
SAMPLE = 1 << 16  # bytes read at each end of a file to seal it
MOVE_IT = "move it away or choose another store name"


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
        except ValueError as exc:
            raise ArcoforgeError(f"{self.folder}/{name}: not valid JSON") from exc
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
        only (see :mod:`arcoforge.core.statefile`), of the dataclasses ``types`` at most."""
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
        """Forget the bake in progress: its staging store (only if our staging manifest
        vouches for it, see :meth:`check_staging`), then its records, the manifest last."""
        self.check_staging()
        fs, _ = _fs(self.folder, self.storage_options)
        for url in (self.staging_store, f"{self.folder}/staging"):
            path = fs._strip_protocol(url)
            if fs.exists(path):
                remove(fs, path)

    def check_staging(self) -> None:
        """Raise :class:`NotOursError` if something is at the staging name without our
        staging manifest. Bakes write that manifest before they create the staging store
        and remove it after the store, so a crash cannot leave a staging store of ours
        without it."""
        if exists(self.staging_store, self.storage_options) and self.read(STAGED) is None:
            raise NotOursError(
                f"{self.staging_store}: not made by arcoforge (no staging manifest of ours "
                f"in {self.folder}/staging); {MOVE_IT}"
            )

    def check_store(self, bears: Callable[[str], bool]) -> None:
        """Raise :class:`NotOursError` unless what is at :attr:`store`, if anything, is
        the store this ledger records; ``bears(seal)`` tells whether it is the store a
        manifest sealed (see :func:`seal`). Vouched for: the published store; the store
        an interrupted publish was putting in place (a complete staging manifest whose
        staging store is still there, or whose seal it bears); the one a bake in
        progress created in place (an Icechunk repository: ``fresh``)."""
        if not exists(self.store, self.storage_options):
            return
        published = self.read()
        if published is not None and (not published.get("seal") or bears(published["seal"])):
            return  # a manifest without a seal was written before seals: trusted
        staged = self.read(STAGED) or {}
        if staged.get("fresh") or (
            staged.get("status") == "complete"
            and (
                exists(self.staging_store, self.storage_options)
                or bool(staged.get("seal") and bears(staged["seal"]))
            )
        ):
            return
        if published is None:
            cause = f"no manifest of ours in {self.folder}"
        else:
            cause = f"it is not the store {self.folder}/manifest.json records"
        raise NotOursError(f"{self.store}: not made by arcoforge ({cause}); {MOVE_IT}")

    @contextmanager
    def lock(self, run: str | None = None) -> Iterator[None]:
        """Hold this store for one bake (run ``run``); a second bake is refused with
        :class:`LockedError` naming the holder and the lock's URL.

        On a local disk the lock is an ``flock`` the kernel drops when the process dies,
        so a killed bake never leaves a stale lock. Elsewhere it is a lock object taken
        atomically, naming its owner and kept alive by a heartbeat; one whose owner
        stopped beating is taken over (see :mod:`arcoforge.core.locks`).
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
        with suppress(FileNotFoundError):  # an object of that name as well as a folder
            fs.rm_file(path)
        fs.invalidate_cache(path)
    else:
        fs.rm(path, recursive=True)


def exists(url: str, storage_options: dict | None = None) -> bool:
    """Whether anything is at ``url``."""
    fs, path = _fs(url, storage_options)
    return fs.exists(path)


def seal(url: str, storage_options: dict | None = None) -> str | None:
    """A digest that tells the store or file at ``url`` from another, cheaply: of a
    folder, its root metadata (``zarr.json``, ``.zmetadata``, ``.zgroup``, ``.zattrs``);
    of a file, its size and its first and last 64 KiB. None when nothing is there.
    Recorded in the manifest when a store is published, so that a store put in its place
    by someone else is not taken for it."""
    fs, path = _fs(url, storage_options)
    fs.invalidate_cache(path)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return None
    digest = hashlib.sha256(info["type"].encode())
    if info["type"] == "directory":
        for name in SEAL_FILES:
            try:
                data = fs.cat_file(f"{path}/{name}")
            except FileNotFoundError:
                continue
            digest.update(b"\0%s\0%d\0%s" % (name.encode(), len(data), data))
    else:
        size = int(info["size"])
        digest.update(b"\0%d\0" % size)
        digest.update(fs.cat_file(path, start=0, end=min(size, SAMPLE)))
        if size > SAMPLE:
            digest.update(fs.cat_file(path, start=max(SAMPLE, size - SAMPLE), end=size))
    return digest.hexdigest()[:32]


def check_folder(folder: str, storage_options: dict | None, ours: Iterable[str] = ()) -> None:
    """Raise :class:`NotOursError` if ``folder``, where arcoforge puts files of its own
    (references and their records), is a file or holds anything not ours: ours are the
    names in ``ours``, ledger folders (``.NAME.arcoforge``), and the ``NAME`` and
    ``.NAME.partial`` beside them."""
    fs, path = _fs(folder, storage_options)
    fs.invalidate_cache(path)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return
    if info["type"] != "directory":
        raise NotOursError(f"{folder}: not made by arcoforge (a file, not a folder); {MOVE_IT}")
    names = {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)}
    for name in sorted(names - set(ours)):
        if not _listed(name, names):
            raise NotOursError(
                f"{folder}: not made by arcoforge (it holds {name}, which is not ours); {MOVE_IT}"
            )


def _listed(name: str, names: set[str]) -> bool:
    """Whether ``name`` is a ledger folder, or a store or staging store beside one."""
    if name.startswith(".") and name.endswith(".arcoforge"):
        return True
    if name.startswith(".") and name.endswith(".partial"):
        return f"{name.removesuffix('.partial')}.arcoforge" in names
    return f".{name}.arcoforge" in names


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
    """A stable digest of a recipe's inputs and settings (functions by their source).

    Dataclass fields marked ``metadata={"added": True}`` are left out at their default,
    so that what was fingerprinted before they were added keeps its fingerprint.
    """
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
        fields = {
            k: getattr(value, k)
            for k, f in value.__dataclass_fields__.items()
            if not (f.metadata.get("added") and getattr(value, k) == f.default)
        }
        return f"{type(value).__name__}{_stable(fields)}"
    return repr(value)
