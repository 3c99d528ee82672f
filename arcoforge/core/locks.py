"""The lock that keeps two bakes of one store apart.

On a local disk it is an ``flock``, which the kernel drops when its process dies. On an
object store it is a lock object, taken by a conditional create (If-None-Match: ``*``,
atomic on S3, GCS and their kin) and naming its owner (host, pid, run id, start time). A
heartbeat thread rewrites it every ``ARCOFORGE_LOCK_BEAT_SECONDS`` while the bake runs; a
lock whose owner has not beaten for ``ARCOFORGE_LOCK_STALE_SECONDS`` (a bake that was
killed, say) is taken over, with a warning naming the old owner.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import fsspec

from arcoforge.errors import ArcoforgeError, TargetError, one_line

STALE_ENV, STALE_SECONDS = "ARCOFORGE_LOCK_STALE_SECONDS", 600.0
BEAT_ENV, BEAT_SECONDS = "ARCOFORGE_LOCK_BEAT_SECONDS", 30.0
ATTEMPTS = 3  # reads and takes of a lock that changes under us before giving up
_LOCK_FORMAT = "arcoforge-lock/1"
_CONFLICTS = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
log = logging.getLogger("arcoforge")


class LockedError(ArcoforgeError):
    """Another bake holds the store."""


@dataclass(frozen=True)
class Owner:
    """Who holds a lock, and when it last said it was alive (``beat``, Unix seconds)."""

    host: str
    pid: int
    run: str | None
    started: float
    beat: float
    token: str

    @classmethod
    def me(cls, run: str | None) -> Owner:
        now = time.time()
        pid = os.getpid()
        return cls(socket.gethostname(), pid, run, now, now, uuid.uuid4().hex)

    def body(self) -> bytes:
        return json.dumps({"format": _LOCK_FORMAT, **asdict(self)}).encode()

    @classmethod
    def parse(cls, data: bytes) -> Owner | None:
        """The owner a lock names, or None if it is not a lock of this format."""
        try:
            fields = json.loads(data)
            if fields.pop("format") != _LOCK_FORMAT:
                return None
            owner = cls(**fields)
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        valid = isinstance(owner.pid, int) and all(
            isinstance(t, int | float) for t in (owner.started, owner.beat)
        )
        return owner if valid else None

    def describe(self) -> str:
        """``pid 12 on host, run ID, since 2026-12-07T18:00:00Z``."""
        run = f", run {self.run}" if self.run else ""
        return f"pid {self.pid} on {self.host}{run}, since {_iso(self.started)}"


def settings() -> tuple[float, float]:
    """The seconds after which a silent lock is stale, and between two heartbeats."""
    stale, beat = _seconds(STALE_ENV, STALE_SECONDS), _seconds(BEAT_ENV, BEAT_SECONDS)
    if beat >= stale:
        raise ArcoforgeError(
            f"{BEAT_ENV}={beat:g} must be less than {STALE_ENV}={stale:g}: a live bake "
            "would look stale between two heartbeats"
        )
    return stale, beat


def _seconds(name: str, default: float) -> float:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ArcoforgeError(f"{name}={text!r}: not a number of seconds above 0")
    return value


@contextmanager
def held(url: str, store: str, storage_options: dict | None, run: str | None) -> Iterator[None]:
    """Hold the lock at ``url`` for a bake of ``store`` while the block runs; a second
    bake is refused with :class:`LockedError` naming the holder and the lock's URL."""
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    if "file" in fs.protocol or "local" in fs.protocol:
        with _flock(path, store, Owner.me(run)):
            yield
        return
    lock = ObjectLock(fs, path, url, store, run)
    try:
        lock.take()
    except OSError as exc:  # a store that refuses us (no such bucket, no right to write)
        raise TargetError(f"{url}: cannot take the lock: {one_line(exc)}") from exc
    try:
        yield
    finally:
        lock.release()


@contextmanager
def _flock(path: str, store: str, owner: Owner) -> Iterator[None]:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # flock's "held by another", which the message says
            holder = _holder(Path(path).read_bytes())
            raise LockedError(
                f"{store} is being baked by another process{holder}; wait for it to finish "
                f"(its lock {path} is released when it ends)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, owner.body())
        yield
    finally:
        os.close(fd)


class ObjectLock:
    """A lock object on an object store, with the heartbeat that keeps it alive."""

    def __init__(self, fs, path: str, url: str, store: str, run: str | None):
        self.fs, self.path, self.url, self.store = fs, path, url, store
        self.stale, self.beat = settings()
        self.owner = Owner.me(run)
        self.etag: str | None = None  # of the lock as we last wrote it (S3)
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    @property
    def s3(self) -> bool:
        return "s3" in self.fs.protocol

    def take(self) -> None:
        """Take the lock: create it if there is none, take it over if it is stale."""
        for _ in range(ATTEMPTS):
            found = self._read()
            if found is None:
                won, old = self._create(), None
            else:
                old = self._stale_owner(*found)
                won = self._overwrite(found[1])
            if won and self._mine():
                if old is not None:
                    log.warning(
                        "%s: took over the lock %s from %s, which had not beaten for %.0f s",
                        self.store,
                        self.url,
                        *old,
                    )
                self.thread = threading.Thread(target=self._beat, name="lock-beat", daemon=True)
                self.thread.start()
                return
        raise LockedError(
            f"{self.store}: the lock {self.url} changed {ATTEMPTS} times while this bake "
            "tried to take it; try again"
        )

    def release(self) -> None:
        """Stop beating and remove the lock, if it is still ours."""
        self.stopping.set()
        if self.thread is not None:
            self.thread.join()
        try:
            if self._mine():
                self.fs.rm_file(self.path)
        except OSError as exc:  # the bake's own outcome matters more: it is taken over later
            log.warning(
                "%s: the lock %s was not removed (%s); it is taken over %g s after its last beat",
                self.store,
                self.url,
                one_line(exc),
                self.stale,
            )

    def _read(self) -> tuple[bytes, str | None, float | None] | None:
        """The lock's bytes, ETag and time of last change, or None if there is none."""
        self.fs.invalidate_cache(self.path)
        try:
            info = self.fs.info(self.path)
            data = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        modified = info.get("LastModified")
        return data, info.get("ETag"), modified.timestamp() if modified else None

    def _stale_owner(self, data: bytes, etag, modified: float | None) -> tuple[str, float]:
        """Who held the stale lock and for how long it has been silent; raises
        :class:`LockedError` if it is not stale."""
        owner = Owner.parse(data)
        last = owner.beat if owner else modified
        age = None if last is None else time.time() - last
        if age is None or age < self.stale:
            silent = "" if age is None else f", last beat {max(age, 0):.0f} s ago"
            raise LockedError(
                f"{self.store} is being baked by another process{_holder(data, silent)}; wait "
                f"for it to finish, or remove the lock file {self.url} if that process is gone "
                f"(a lock silent for {self.stale:g} s is taken over)"
            )
        return (owner.describe() if owner else _holder(data).strip(" ()") or "unknown"), age

    def _create(self) -> bool:
        """Create the lock unless there is one (atomically where the store can)."""
        try:
            out = self.fs.pipe_file(self.path, self.owner.body(), mode="create")
        except FileExistsError:
            return False
        self.etag = _etag(out)
        return True

    def _overwrite(self, etag: str | None) -> bool:
        """Replace the lock we read (as ``etag``) with ours, unless it changed since."""
        if not (self.s3 and etag):  # no conditional overwrite: remove, then create
            self.fs.rm_file(self.path)
            return self._create()
        return self._put(self.owner.body(), etag)

    def _put(self, body: bytes, etag: str) -> bool:
        try:
            out = self.fs.pipe_file(self.path, body, IfMatch=etag)
        except OSError as exc:
            if _conflict(exc):
                return False
            raise
        self.etag = _etag(out)
        return True

    def _mine(self) -> bool:
        """Whether the lock is there and names us (read back: some S3-compatible stores
        do not apply a conditional create atomically)."""
        found = self._read()
        return found is not None and getattr(Owner.parse(found[0]), "token", None) == (
            self.owner.token
        )

    def _beat(self) -> None:
        """Rewrite the lock with the time, every ``beat`` seconds, until released."""
        while not self.stopping.wait(self.beat):
            try:
                alive = self._rewrite()
            except Exception as exc:  # a passing fault of the store: beat again later
                log.warning(
                    "%s: heartbeat of the lock %s failed: %s", self.store, self.url, one_line(exc)
                )
                continue
            if not alive:
                log.warning(
                    "%s: the lock %s was taken over by another bake; this one no longer holds it",
                    self.store,
                    self.url,
                )
                return

    def _rewrite(self) -> bool:
        body = replace(self.owner, beat=time.time()).body()
        if self.s3 and self.etag:
            return self._put(body, self.etag)
        if not self._mine():
            return False
        self.fs.pipe_file(self.path, body)
        return True


def _holder(data: bytes, more: str = "") -> str:
    """`` (OWNER, more)`` of a lock's bytes, as much as can be said."""
    owner = Owner.parse(data)
    text = owner.describe() if owner else data.decode("utf-8", "replace").strip()[:200]
    text = f"{text}{more}" if text else more.lstrip(", ")
    return f" ({text})" if text else ""


def _etag(response) -> str | None:
    return response.get("ETag") if isinstance(response, dict) else None


def _conflict(exc: BaseException) -> bool:
    """Whether ``exc`` (or its cause) is a store refusing a conditional write."""
    while exc is not None:
        error = getattr(exc, "response", None) or {}
        code = str(error.get("Error", {}).get("Code", ""))
        status = str(error.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        if code in _CONFLICTS or status in _CONFLICTS:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
