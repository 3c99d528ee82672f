"""A per-host limit on concurrent connections that holds across worker processes."""

from __future__ import annotations

import fcntl
import os
import re
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

_SLOTS = Path(tempfile.gettempdir()) / "arcoforge-host-slots"


@contextmanager
def host_slot(host: str, limit: int, poll: float = 0.02):
    """Hold one of ``limit`` slots for ``host`` while the block runs.

    Slots are lock files, so every process on this machine shares the same limit and a
    crashed process frees its slot when the kernel closes its files.
    """
    if limit <= 0:
        yield
        return
    _SLOTS.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", host) or "local"
    paths = [_SLOTS / f"{stem}.{i}.lock" for i in range(limit)]
    while True:
        for path in paths:
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            return
        time.sleep(poll)
