"""Spark: tasks on a SparkSession, local (``local[N]``) or on a cluster's master."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import cloudpickle
from pyspark.sql import SparkSession

from .base import Engine, call, unwrap


class SparkEngine(Engine):
    """Run tasks on the Spark master at ``master`` (``spark://host:port``, ``yarn``,
    ``k8s://...``), by default ``local[workers]``; ``conf`` passes Spark settings through.

    Each task is its own Spark job of one partition, with up to twice the cluster's
    parallelism in flight, so results (and progress) come back as tasks finish. A task
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
            **({"spark.driver.host": "127.0.0.1", "spark.ui.enabled": "false"} if local else {}),
        }
        self.conf = {**defaults, **{k: str(v) for k, v in (conf or {}).items()}}
        self._session: SparkSession | None = None

    def map(self, func: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
        if not items:
            return
        sc = self.session().sparkContext
        payloads = [cloudpickle.dumps(item) for item in items]
        rdd = sc.parallelize(payloads, len(payloads)).map(_task(func))
        pool = ThreadPoolExecutor(max(2, 2 * sc.defaultParallelism))
        pending: set[Future] = {
            pool.submit(sc.runJob, rdd, list, [i]) for i in range(len(payloads))
        }
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield unwrap(cloudpickle.loads(future.result()[0]))
        finally:
            for future in pending:
                future.cancel()
            if pending:
                sc.cancelAllJobs()
            pool.shutdown(wait=True)

    def session(self) -> SparkSession:
        """The session, started on first use."""
        if self._session is None:
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # read by SparkContext
            builder = SparkSession.builder.master(self.master).appName("arcoforge")
            for key, value in self.conf.items():
                builder = builder.config(key, value)
            self._session = builder.getOrCreate()
            self._session.sparkContext.setLogLevel("ERROR")
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.stop()
            self._session = None


def _task(func: Callable[[Any], Any]) -> Callable[[bytes], bytes]:
    def run(payload: bytes) -> bytes:
        return cloudpickle.dumps(call(func, cloudpickle.loads(payload)))

    return run
