"""Task wrapping: how a task runs on a worker and how its result or error comes back to
the driver, with the lines it logged; and what a worker process does as it starts."""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import xarray as xr

from arcoforge.core import worklog
from arcoforge.errors import ArcoforgeError, Traced, format_chain, one_line, quiet
from arcoforge.sources.secrets import redact_remembered
from arcoforge.version import __version__


def task_label(item: Any) -> str:
    """How errors name a task: its ``label`` (the inputs it reads), or its type."""
    return getattr(item, "label", None) or f"a {type(item).__name__}"


@dataclass(frozen=True)
class Failed:
    """A task's error, returned as its result: engines retry tasks whose worker died,
    not tasks that failed (inputs have their own retries), and the driver raises it."""

    error: Exception

    def __reduce__(self):
        """Pickled with its error's cause, which pickling an exception drops."""
        return (_failed, (self.error, self.error.__cause__))


def _failed(error: Exception, cause: BaseException | None) -> Failed:
    error.__cause__ = cause
    return Failed(error)


def call(func: Callable[[Any], Any], item: Any, relay: int | None = None) -> Any:
    """``func(item)`` on a worker, or its error made fit to cross back to the driver, with
    the lines it logged; those are sent as they are logged to ``relay``, a pipe to the
    driver, if the worker has one (see :mod:`.worklog`)."""
    with worklog.captured(task_label(item), relay) as task:
        try:
            with quiet():
                result = func(item)
        except Exception as exc:
            result = Failed(portable(exc))
    return worklog.with_lines(result, task)


def unwrap(result: Any) -> Any:
    """A task's result, or its error raised here; the lines it logged are logged here."""
    result = worklog.replay(result)
    if isinstance(result, Failed):
        raise result.error
    return result


def portable(exc: Exception) -> Exception:
    """``exc`` fit to cross processes in a :class:`Failed`: its cause becomes a
    :class:`.Traced` holding its own traceback and chain as text (which pickles, and which
    the driver's ``--debug`` prints), with the secrets this process knows masked; an error
    that does not pickle becomes that :class:`.Traced` itself."""
    text = redact_remembered(f"In process {os.getpid()}:\n{format_chain(exc)}")
    cause = Traced(redact_remembered(one_line(exc)), text)
    exc.__context__ = exc.__cause__ = None  # what pickles with it (with tblib's pickling)
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return cause
    exc.__cause__ = cause
    return exc


def ready_worker() -> str:
    """Run on each worker as its engine starts: import what tasks use, so that the first
    tasks do not wait for it; the worker's arcoforge version."""
    xr.backends.list_engines()
    for module in ("netCDF4", "dask.array"):  # xarray's netCDF backend; Zarr writes import dask
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    freeze_imports()
    return __version__


def freeze_imports() -> None:
    """Once in a worker process: take what it holds by now (its imported modules, mostly)
    out of the garbage collector's full collections, which Spark's Python workers run
    after every task."""
    if not gc.get_freeze_count():
        gc.collect()
        gc.freeze()


def check_workers(engine: str, versions: dict[str, str]) -> None:
    """Fail at start-up, naming a worker, if workers run another arcoforge than this one."""

    for worker, version in sorted(versions.items()):
        if version != __version__:
            raise ArcoforgeError(
                f"{engine} worker {worker} has arcoforge {version}, this process {__version__}: "
                "install the same version everywhere"
            )
