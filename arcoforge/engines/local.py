"""The embedded engine: a pool of forked worker processes on this machine."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

import cloudpickle

from ..errors import ArcoforgeError, one_line
from .base import Engine


class LocalEngine(Engine):
    """Run tasks on ``workers`` processes; ``workers=1`` runs them in this process.

    At most ``2 * workers`` tasks are in flight, so memory on the driver does not grow
    with the number of tasks.
    """

    name = "local"

    def __init__(self, workers: int | None = None):
        self.workers = max(1, workers or os.cpu_count() or 1)
        self._pool: ProcessPoolExecutor | None = None

    def map(self, func: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
        if self.workers == 1 or len(items) <= 1:
            yield from (func(item) for item in items)
            return
        pool = self._get_pool()
        pending: set[Future] = set()
        queue = iter(items)
        try:
            for item in queue:
                pending.add(pool.submit(_call, cloudpickle.dumps((func, item))))
                if len(pending) >= 2 * self.workers:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    yield from (f.result() for f in done)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (f.result() for f in done)
        finally:
            for f in pending:
                f.cancel()

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context(method))
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def abort(self) -> None:
        """Terminate the workers: tasks already queued to them would otherwise run to the
        end, and a Ctrl-C would wait for them (tasks are idempotent, so a re-run redoes
        what they left half done)."""
        if self._pool is not None:
            for process in list(self._pool._processes.values()):  # no public API in 3.11
                process.terminate()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _call(payload: bytes) -> Any:
    func, item = cloudpickle.loads(payload)
    try:
        return func(item)
    except Exception as exc:
        raise portable(exc) from None


def portable(exc: Exception) -> Exception:
    """``exc`` without its chain, or as a one-line error if it cannot cross processes."""
    exc.__context__ = exc.__cause__ = None
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return ArcoforgeError(one_line(exc))
    return exc
