"""Spark: tasks on a SparkSession, local (``local[N]``) or on a cluster's master."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import cloudpickle
from pyspark.sql import SparkSession

from arcoforge.core.open import preload
from arcoforge.core.tasks import call, check_workers, freeze_imports, ready_worker, unwrap
from arcoforge.engines.base import Engine
from arcoforge.errors import ArcoforgeError, one_line

# local mode: the driver is the only node; nothing listens beyond loopback, no web UI, and
# its JVM only schedules the Python tasks: its optimizing compiler (C2) took 1.6 CPU s of
# a 15 s bake from them, for code that runs too little to gain from it
LOCAL = {
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.ui.enabled": "false",
    "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1",
}


class SparkEngine(Engine):
    """Run tasks on the Spark master at ``master`` (``spark://host:port``, ``yarn``,
    ``k8s://...``), by default ``local[workers]``; ``conf`` passes Spark settings through.

    Tasks go in up to four times the cluster's parallelism partitions, each run as its
    own Spark job with up to twice the parallelism of jobs in flight, so results (and
    progress) come back as partitions finish and a job costs little per task. A task
    whose Python worker or executor dies is run again, up to ``max_failures`` attempts
    (``spark.task.maxFailures``; ``local[N,F]`` in local mode). Python workers run
    ``$PYSPARK_PYTHON``, by default this interpreter.
    """

    name = "spark"

    def __init__(
        self,
        workers: int | None = None,
        master: str | None = None,
        conf: dict[str, Any] | None = None,
        max_failures: int = 4,
    ):
        self.workers = max(1, workers or 1)
        self.master = master or f"local[{self.workers},{max_failures}]"
        local = self.master.startswith("local")
        defaults = {
            "spark.task.maxFailures": str(max_failures),
            "spark.ui.showConsoleProgress": "false",
            **(LOCAL if local else {}),
        }
        self.conf = {**defaults, **{k: str(v) for k, v in (conf or {}).items()}}
        self._session: SparkSession | None = None

    def map(self, func: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
        if not items:
            return
        sc = self.session().sparkContext
        parts = min(len(items), 4 * sc.defaultParallelism)
        payloads = [cloudpickle.dumps(item) for item in items]
        rdd = sc.parallelize(payloads, parts).map(_task(func))
        pool = ThreadPoolExecutor(max(2, 2 * sc.defaultParallelism))
        pending: set[Future] = {pool.submit(sc.runJob, rdd, list, [i]) for i in range(parts)}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield from (unwrap(cloudpickle.loads(r)) for r in future.result())
        finally:
            for future in pending:
                future.cancel()
            if pending:
                sc.cancelAllJobs()
            pool.shutdown(wait=True)

    def session(self) -> SparkSession:
        """The session, started on first use."""
        if self._session is None:
            preload(forking=False)
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # read by SparkContext
            builder = SparkSession.builder.master(self.master).appName("arcoforge")
            for key, value in self.conf.items():
                builder = builder.config(key, value)
            self._session = builder.getOrCreate()
            if self._session.sparkContext.master != self.master:
                running = self._session.sparkContext.master
                self._session = None
                raise ArcoforgeError(
                    f"spark: this process already has a SparkSession on {running}, "
                    f"not {self.master}; stop it first"
                )
            self._session.sparkContext.setLogLevel("ERROR")
            check_workers(self.name, _on_workers(self._session.sparkContext))
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.stop()
            self._session = None


def _task(func: Callable[[Any], Any]) -> Callable[[bytes], bytes]:
    def run(payload: bytes) -> bytes:
        result = cloudpickle.dumps(call(func, cloudpickle.loads(payload)))
        freeze_imports()  # in a worker the start-up check did not reach, after its first task
        return result

    return run


def _on_workers(sc) -> dict[str, str]:
    """The arcoforge version of each Python worker of one task per core (their task modules
    imported: workers are reused by later jobs)."""
    slots = sc.defaultParallelism
    try:
        found = sc.parallelize(range(slots), slots).map(_ready).collect()
    except Exception as exc:
        why = one_line(exc).splitlines()[0][:300]
        raise ArcoforgeError(f"spark workers cannot run arcoforge: {why}") from exc
    return dict(found)


def _ready(_: int) -> tuple[str, str]:
    return f"{socket.gethostname()}:{os.getpid()}", ready_worker()
