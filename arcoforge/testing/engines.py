"""Helpers for tests of the engines: a worker that dies once, a Spark standalone cluster."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import xarray as xr

PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class KillWorker:
    """A preprocessing step that SIGKILLs the worker process it runs in: at its
    ``after``-th call outside the driver, once (or, with ``every``, at that call and every
    one after it). Calls are counted in files under ``folder``."""

    folder: str
    after: int = 1
    every: bool = False
    driver: int = field(default_factory=os.getpid)
    __name__ = "kill_worker"

    def __call__(self, ds: xr.Dataset) -> xr.Dataset:
        if os.getpid() != self.driver:
            calls = Path(self.folder, "calls")
            with calls.open("a") as fh:
                fh.write(".")
            if calls.stat().st_size >= self.after and (self._first() or self.every):
                os.kill(os.getpid(), signal.SIGKILL)
        return ds

    def _first(self) -> bool:
        try:
            os.close(os.open(Path(self.folder, "killed"), os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return False
        return True

    @property
    def killed(self) -> bool:
        """Whether a worker was killed."""
        return Path(self.folder, "killed").exists()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SparkStandalone:
    """A Spark standalone master and one worker (``cores`` cores) on 127.0.0.1, started
    with pyspark's bundled ``spark-class``; logs go to ``folder``."""

    def __init__(self, folder: str | os.PathLike, cores: int = 2, timeout: float = 120.0):
        import pyspark

        self.folder = Path(folder)
        self.cores, self.timeout = cores, timeout
        self.home = Path(pyspark.__file__).parent
        self.port, self.ui_port = free_port(), free_port()
        self.processes: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    def start(self) -> SparkStandalone:
        """Start the master and the worker; wait (bounded) until the worker registered."""
        self.folder.mkdir(parents=True, exist_ok=True)
        master = ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1"]
        self._spawn("master", *master, "--port", str(self.port), "--webui-port", str(self.ui_port))
        worker = ["org.apache.spark.deploy.worker.Worker", self.url, "--host", "127.0.0.1"]
        self._spawn(
            "worker",
            *worker,
            *("--cores", str(self.cores), "--memory", "2g", "--webui-port", str(free_port())),
            *("--work-dir", str(self.folder / "work")),
        )
        self._wait_for_worker()
        return self

    def _spawn(self, name: str, *args: str) -> None:
        env = {**os.environ, "SPARK_HOME": str(self.home), "SPARK_LOCAL_IP": "127.0.0.1"}
        with open(self.folder / f"{name}.log", "wb") as log:
            self.processes.append(
                subprocess.Popen(
                    [str(self.home / "bin" / "spark-class"), *args],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    preexec_fn=_own_session_ending_with_parent,
                )
            )

    def _wait_for_worker(self) -> None:
        deadline = time.monotonic() + self.timeout
        for _ in range(int(self.timeout / 0.5)):
            if self.alive_workers() >= 1:
                return
            if any(p.poll() is not None for p in self.processes) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the Spark standalone cluster did not start; logs in {self.folder}")

    def alive_workers(self) -> int:
        """Workers the master counts as alive (0 while it does not answer)."""
        try:
            url = f"http://127.0.0.1:{self.ui_port}/json/"
            with urllib.request.urlopen(url, timeout=2) as answer:
                return int(json.load(answer).get("aliveworkers", 0))
        except (OSError, ValueError):
            return 0

    def stop(self, timeout: float = 10.0) -> None:
        """End the worker (and its executors) and the master: TERM, then KILL."""
        for process in reversed(self.processes):
            _end_group(process, timeout)
        self.processes.clear()

    def __enter__(self) -> SparkStandalone:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _own_session_ending_with_parent() -> None:
    """In the child: a session of its own, and SIGTERM when the process that started it
    dies (Linux), so that a killed test run leaves no cluster behind."""
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _end_group(process: subprocess.Popen, timeout: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue
