"""The embedded engine: a pool of forked worker processes on this machine."""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing as mp
import os
import pickle
import signal
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, Future, wait
from typing import TYPE_CHECKING, Any

import cloudpickle

from arcoforge.core import worklog
from arcoforge.core.tasks import Failed, call, portable, task_label, unwrap
from arcoforge.engines.base import Engine
from arcoforge.errors import ArcoforgeError

if TYPE_CHECKING:  # imported when a pool starts: a bake of a few inputs runs without one
    from concurrent.futures import ProcessPoolExecutor

log = logging.getLogger("arcoforge")


class LocalEngine(Engine):
    """Run tasks on ``workers`` processes; ``workers=1`` runs them in this process.

    At most ``2 * workers`` tasks are in flight, so memory on the driver does not grow
    with the number of tasks. A worker process that dies (killed, out of memory) takes
    the pool with it: the pool is started again and the tasks that were in flight run
    again, each at most ``retries`` more times (tasks are idempotent). Forked workers send
    the lines they log through a pipe as they log them (see :class:`.worklog.Relay`).
    """

    name = "local"
    forks = "fork" in mp.get_all_start_methods()

    def __init__(self, workers: int | None = None, retries: int = 2):
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.retries = retries
        self.worker_losses = 0
        self._pool: ProcessPoolExecutor | None = None
        self._exiting: list[int] = []  # children forked for a map of few items
        self._frozen = False  # whether this engine froze the garbage collector's objects
        self._relay: worklog.Relay | None = None  # forked workers' log lines, as they log them

    @property
    def pool_pids(self) -> list[int] | None:
        """The pids of the worker processes of the engine's pool; None while it has no
        pool (a map of no more items than workers runs in forked children instead)."""
        if self._pool is None:
            return None
        return [process.pid for process in (self._pool._processes or {}).values()]

    @property
    def froze_collector(self) -> bool:
        """Whether this engine froze the garbage collector's objects (it thaws them on
        close); False when something else had frozen objects first."""
        return self._frozen

    def map(self, func: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
        if self.workers == 1 or len(items) <= 1:
            self.release()
            yield from (func(item) for item in items)
            return
        if self.forks and len(items) <= self.workers:
            self.release()
            yield from self._alongside(func, items)
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
                    yield self._unwrap(future.result())
                if broken:
                    suspects.extend(sorted(running.values()))
                    self._recover(running, deaths, items)
        finally:
            for future in running:
                future.cancel()

    def _alongside(self, func: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
        """A map of no more items than workers: the first runs here while a child forked for
        each other one runs it (quicker than a pool, which forks every worker, starts a
        thread and pickles each task). A child that dies has its item run here. The lines
        the first logs are named and relayed as the children's are."""
        self._freeze()
        relay = self._relay_fd()
        children = [_fork(func, item, relay) for item in items[1:]]
        heard = set()
        try:
            with worklog.captured(task_label(items[0]), relay) as task:
                first = func(items[0])  # its error is raised here, with its cause
            yield self._unwrap(worklog.with_lines(first, task))
            for (pid, fd), item in zip(children, items[1:], strict=True):
                result = _result(fd)
                heard.add(pid)
                if result is _LOST:
                    self.worker_losses += 1
                    log.warning("a worker process died; running its task here")
                    result = call(func, item)
                yield self._unwrap(result)
        finally:
            for pid, fd in children:
                os.close(fd)
                if pid not in heard:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            self._exiting.extend(pid for pid, _ in children)

    def _unwrap(self, result: Any) -> Any:
        """A task's result (see :func:`.base.unwrap`), after the lines its worker sent."""
        if self._relay is not None:
            self._relay.flush()
        return unwrap(result)

    def _relay_fd(self) -> int:
        """The pipe that forked workers send their log lines into (started on first use)."""
        if self._relay is None:
            self._relay = worklog.Relay()
        return self._relay.fd

    def _close_relay(self) -> None:
        if self._relay is not None:
            self._relay.close()
            self._relay = None

    def _freeze(self) -> None:
        """Before forking: put the driver's objects out of the garbage collector's reach
        until the engine closes, so that neither a child's collections nor the driver's
        later ones walk them (nor a child copies the pages they lie on). Left alone if
        something else froze objects already."""
        if self._frozen or not gc.get_freeze_count():
            gc.freeze()
            self._frozen = True

    def _thaw(self) -> None:
        if self._frozen:
            gc.unfreeze()
            self._frozen = False

    def _reap(self, wait: bool) -> None:
        """Collect the children that have exited (a child takes some milliseconds to exit,
        which a map need not wait for); with ``wait``, all of them."""
        self._exiting = [pid for pid in self._exiting if not _exited(pid, wait)]

    def _fill(self, func, items, todo: deque, suspects: deque, running: dict) -> None:
        """Submit tasks up to the limit; the tasks in flight when a worker died run one at
        a time, so that a task that kills its worker is known for sure."""
        while (todo or suspects) and len(running) < (1 if suspects else 2 * self.workers):
            queue = suspects or todo
            index = queue.popleft()
            pool = self._get_pool()
            relay = self._relay.fd if self._relay is not None else None
            payload = cloudpickle.dumps((func, items[index], relay))
            try:
                running[pool.submit(_call, payload)] = index
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
            if method == "fork":  # workers inherit the relay; spawned ones carry lines back
                self._freeze()
                self._relay_fd()
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
        self._reap(wait=False)

    def close(self) -> None:
        self._stop(terminate=False)
        self._reap(wait=True)
        self._close_relay()
        self._thaw()

    def abort(self) -> None:
        """Terminate the workers: tasks already queued to them would otherwise run to the
        end, and a Ctrl-C would wait for them (tasks are idempotent, so a re-run redoes
        what they left half done)."""
        self._stop(terminate=True)
        self._reap(wait=True)
        self._close_relay()
        self._thaw()


def _call(payload: bytes) -> Any:
    return call(*cloudpickle.loads(payload))


_LOST = object()  # what a child that died before sending its result gave


def _fork(func: Callable[[Any], Any], item: Any, relay: int) -> tuple[int, int]:
    """A child process running ``call(func, item, relay)`` and sending back the pickled
    result; its pid and the pipe to read it from."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: whatever happens, it leaves without running the driver's exit
        status = 1
        try:
            os.close(read)
            with open(write, "wb") as out:
                out.write(_pickled(call(func, item, relay)))
            status = 0
        finally:
            os._exit(status)
    os.close(write)
    return pid, read


def _pickled(result: Any) -> bytes:
    """``result`` pickled, or, if it cannot be, the error saying why (raised by the driver,
    as a pool's would be, not taken for a worker that died)."""
    try:
        return pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        return pickle.dumps(Failed(portable(exc)), protocol=pickle.HIGHEST_PROTOCOL)


def _result(fd: int) -> Any:
    """What the child writing to ``fd`` sent, or ``_LOST``."""
    with open(fd, "rb", closefd=False) as pipe:
        data = pipe.read()
    try:
        return pickle.loads(data)
    except Exception:  # nothing, or a part: the child died on the way
        return _LOST


def _exited(pid: int, wait: bool) -> bool:
    """Whether child ``pid`` has exited (and is reaped now); ``wait`` waits for it."""
    try:
        return os.waitpid(pid, 0 if wait else os.WNOHANG)[0] != 0
    except ChildProcessError:  # reaped already
        return True
