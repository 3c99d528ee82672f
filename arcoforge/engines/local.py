"""The embedded engine: a pool of forked worker processes on this machine."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, Future, wait
from typing import TYPE_CHECKING, Any

import cloudpickle

from ..errors import ArcoforgeError
from .base import Engine, call, task_label, unwrap

if TYPE_CHECKING:  # imported when a pool starts: a bake of a few inputs runs without one
    from concurrent.futures import ProcessPoolExecutor

log = logging.getLogger("arcoforge")


class LocalEngine(Engine):
    """Run tasks on ``workers`` processes; ``workers=1`` runs them in this process.

    At most ``2 * workers`` tasks are in flight, so memory on the driver does not grow
    with the number of tasks. A worker process that dies (killed, out of memory) takes
    the pool with it: the pool is started again and the tasks that were in flight run
    again, each at most ``retries`` more times (tasks are idempotent).
    """

    name = "local"
    forks = "fork" in mp.get_all_start_methods()

    def __init__(self, workers: int | None = None, retries: int = 2):
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.retries = retries
        self.worker_losses = 0
        self._pool: ProcessPoolExecutor | None = None

    def map(self, func: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
        if self.workers == 1 or len(items) <= 1:
            self.release()
            yield from (func(item) for item in items)
            return
        todo, suspects = deque(range(len(items))), deque()
        running: dict[Future, int] = {}
        deaths = [0] * len(items)
        try:
            while todo or suspects or running:
                self._fill(func, items, todo, suspects, running)
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                broken = [f for f in done if isinstance(f.exception(), BrokenExecutor)]
                for future in done.difference(broken):
                    del running[future]
                    yield unwrap(future.result())
                if broken:
                    suspects.extend(sorted(running.values()))
                    self._recover(running, deaths, items)
        finally:
            for future in running:
                future.cancel()

    def _fill(self, func, items, todo: deque, suspects: deque, running: dict) -> None:
        """Submit tasks up to the limit; the tasks in flight when a worker died run one at
        a time, so that a task that kills its worker is known for sure."""
        while (todo or suspects) and len(running) < (1 if suspects else 2 * self.workers):
            queue = suspects or todo
            index = queue.popleft()
            payload = cloudpickle.dumps((func, items[index]))
            try:
                running[self._get_pool().submit(_call, payload)] = index
            except BrokenExecutor:  # a worker died since the last look
                queue.appendleft(index)
                if not running:  # ... while idle: no task to blame
                    self._recover(running, [], items)
                return

    def _recover(self, running: dict, deaths: list[int], items: Sequence[Any]) -> None:
        """Start a new pool after a worker died, or give up on a task that keeps dying."""
        self.worker_losses += 1
        self._stop(terminate=True)
        if len(running) == 1:
            (index,) = running.values()
            deaths[index] += 1
            if deaths[index] > self.retries:
                raise ArcoforgeError(
                    f"{task_label(items[index])}: its worker process died each of the "
                    f"{deaths[index]} times it ran alone (killed, or out of memory)"
                )
        log.warning("a worker process died; running its %d tasks in flight again", len(running))
        running.clear()

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            from concurrent.futures import ProcessPoolExecutor

            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context(method))
        return self._pool

    def _stop(self, terminate: bool) -> None:
        if self._pool is None:
            return
        if terminate:
            for process in list(self._pool._processes.values()):  # no public API in 3.11
                process.terminate()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None

    def release(self) -> None:
        self._stop(terminate=False)

    def close(self) -> None:
        self._stop(terminate=False)

    def abort(self) -> None:
        """Terminate the workers: tasks already queued to them would otherwise run to the
        end, and a Ctrl-C would wait for them (tasks are idempotent, so a re-run redoes
        what they left half done)."""
        self._stop(terminate=True)


def _call(payload: bytes) -> Any:
    return call(*cloudpickle.loads(payload))
