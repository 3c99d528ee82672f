"""Dask: tasks on a ``distributed`` cluster, given by its scheduler's address or started
here as a LocalCluster of worker processes."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import dask
from distributed import Client, LocalCluster, as_completed

from arcoforge.core.open import preload
from arcoforge.core.tasks import call, check_workers, ready_worker, unwrap
from arcoforge.engines.base import Engine
from arcoforge.errors import ArcoforgeError, one_line


class DaskEngine(Engine):
    """Run tasks on the cluster at ``scheduler``, or on a LocalCluster of ``workers``
    processes (``threads_per_worker`` threads, ``memory_limit`` each) on loopback.

    A task whose worker dies is run again on another, up to ``allowed_failures`` times
    (for a remote cluster, its scheduler's setting of that name applies).
    """

    name = "dask"

    def __init__(
        self,
        workers: int | None = None,
        scheduler: str | None = None,
        threads_per_worker: int = 1,
        memory_limit: str | float | None = "auto",
        allowed_failures: int = 3,
    ):
        self.scheduler = scheduler
        self.workers = max(1, workers or 1)
        self.threads_per_worker = threads_per_worker
        self.memory_limit = memory_limit
        self.allowed_failures = allowed_failures
        self._client: Client | None = None
        self._cluster: LocalCluster | None = None

    def map(self, func: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
        if not items:
            return
        client = self.client()
        futures = client.map(functools.partial(call, func), list(items), pure=False)
        try:
            for future in as_completed(futures, loop=client.loop):
                yield unwrap(future.result())
                future.release()
        finally:
            client.cancel([f for f in futures if not f.done()])

    def client(self) -> Client:
        """The client, connected on first use (starting the LocalCluster if need be)."""
        if self._client is None:
            preload(forking=False)
            if self.scheduler:
                self._client = Client(self.scheduler, set_as_default=False)
            else:
                self._cluster = self._local_cluster()
                self._client = Client(self._cluster, set_as_default=False)
            check_workers(self.name, _on_workers(self._client))
        return self._client

    def _local_cluster(self) -> LocalCluster:
        settings = {
            "distributed.scheduler.allowed-failures": self.allowed_failures,
            # dask sets it to trim memory sooner; it makes glibc map and unmap every large
            # buffer afresh, which slows a write task by half
            "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
            # a sampling profiler and monitors for the dashboard, which is not started here
            # (every process checked its event loop every 20 ms): 10% of a bake on 2 cores
            "distributed.worker.profile.enabled": False,
            "distributed.admin.system-monitor.interval": "2s",
            "distributed.admin.tick.interval": "200ms",
        }
        with dask.config.set(settings), _unset("MALLOC_TRIM_THRESHOLD_"):
            return LocalCluster(
                n_workers=self.workers,
                threads_per_worker=self.threads_per_worker,
                memory_limit=self.memory_limit,
                processes=True,
                host="127.0.0.1",
                protocol="tcp://",
                dashboard_address=None,
            )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None


def _on_workers(client: Client) -> dict[str, str]:
    """Each worker's arcoforge version, its task modules imported."""
    try:
        return client.run(ready_worker)
    except Exception as exc:
        raise ArcoforgeError(f"dask workers cannot run arcoforge: {one_line(exc)}") from exc


@contextlib.contextmanager
def _unset(name: str) -> Iterator[None]:
    """Without the environment variable ``name`` inside (workers started here inherit the
    environment; a LocalCluster started before in this process leaves dask's setting in it)."""
    value = os.environ.pop(name, None)
    try:
        yield
    finally:
        if value is not None:
            os.environ[name] = value
