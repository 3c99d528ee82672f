"""The one interface every engine implements."""

from __future__ import annotations

import contextlib
import gc
import importlib
import pickle
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from arcoforge.core import worklog
from arcoforge.errors import ArcoforgeError, one_line

if TYPE_CHECKING:
    from arcoforge.core.progress import Reporter
    from arcoforge.zarr.plan import BakeState, Plan

# name -> (module of the engine, its class, a module it needs, the extra that installs it)
ENGINES = {
    "local": ("local", "LocalEngine", None, None),
    "dask": ("dask", "DaskEngine", "distributed", "dask"),
    "spark": ("spark", "SparkEngine", "pyspark", "spark"),
    "beam": ("beam", "BeamEngine", "apache_beam", "beam"),
}


class Engine(ABC):
    """Runs ``func`` over items and yields results as they finish (in any order)."""

    name = "engine"
    worker_losses = 0  # times a worker died and its tasks ran again
    forks = False  # its workers are forked from this process (and so share its imports)

    @abstractmethod
    def map(self, func: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
        """Yield ``func(item)`` for every item; raise the first task error."""

    def run(self, plan: Plan, reporter: Reporter) -> tuple[BakeState, dict[str, float]]:
        """Run the plan's stages one after the other: the items of each on workers, its
        reduce here. Returns the final state and each stage's seconds. Engines that build
        one job for the whole plan override this."""
        from arcoforge.zarr.plan import BakeState

        state, timings = BakeState(), {}
        for stage in plan.stages:
            t0 = time.perf_counter()
            items = stage.items(state)
            reporter.stage_started(stage.name, len(items), stage.description)
            if not stage.func:
                self.release()
            results = self.map(stage.func, items) if stage.func else iter(())
            stage.reduce(state, counted(results, reporter, stage.name))
            timings[stage.name] = time.perf_counter() - t0
            reporter.stage_done(stage.name, timings[stage.name])
        return state, timings

    def release(self) -> None:  # noqa: B027 - engines without workers need not override it
        """Stop idle workers before the driver works alone (the next map starts them again),
        so that they do not hold memory meanwhile."""

    def close(self) -> None:  # noqa: B027 - engines without workers need not override it
        """Release workers."""

    def abort(self) -> None:
        """Stop workers without waiting for their tasks (after an error or Ctrl-C)."""
        self.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def task_label(item: Any) -> str:
    """How errors name a task: its ``label`` (the inputs it reads), or its type."""
    return getattr(item, "label", None) or f"a {type(item).__name__}"


def counted(results: Iterable, reporter: Reporter, name: str) -> Iterator:
    """``results``, advancing the stage's progress by one for each."""
    for result in results:
        yield result
        reporter.advanced(name)


@dataclass(frozen=True)
class Failed:
    """A task's error, returned as its result: engines retry tasks whose worker died,
    not tasks that failed (inputs have their own retries), and the driver raises it."""

    error: Exception


def call(func: Callable[[Any], Any], item: Any, relay: int | None = None) -> Any:
    """``func(item)`` on a worker, or its error made fit to cross back to the driver, with
    the lines it logged; those are sent as they are logged to ``relay``, a pipe to the
    driver, if the worker has one (see :mod:`.worklog`)."""
    with worklog.captured(task_label(item), relay) as task:
        try:
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


def ready_worker() -> str:
    """Run on each worker as its engine starts: import what tasks use, so that the first
    tasks do not wait for it; the worker's arcoforge version."""
    import xarray as xr

    from arcoforge import __version__

    xr.backends.list_engines()
    for module in ("netCDF4", "dask.array"):  # xarray's netCDF backend; Zarr writes import dask
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    settle()
    return __version__


def settle() -> None:
    """Once in a worker process: take what it holds by now (its imported modules, mostly)
    out of the garbage collector's full collections. Spark's Python workers run one after
    every task, which walked some 160,000 objects each time (0.1 s a task)."""
    if not gc.get_freeze_count():
        gc.collect()
        gc.freeze()


def check_workers(engine: str, versions: dict[str, str]) -> None:
    """Fail at start-up, naming a worker, if workers run another arcoforge than this one."""
    from arcoforge import __version__

    for worker, version in sorted(versions.items()):
        if version != __version__:
            raise ArcoforgeError(
                f"{engine} worker {worker} has arcoforge {version}, this process {__version__}: "
                "install the same version everywhere"
            )


def get_engine(name: str = "local", **options: Any) -> Engine:
    """The engine called ``name``, configured by ``options``."""
    if name not in ENGINES:
        raise ArcoforgeError(f"engine {name!r} is not known (available: {', '.join(ENGINES)})")
    module, cls, needs, extra = ENGINES[name]
    if needs is not None:
        try:
            importlib.import_module(needs)
        except ImportError:
            raise ArcoforgeError(
                f'engine {name!r} is not installed: pip install "arcoforge[{extra}]"'
            ) from None
    engine = getattr(importlib.import_module(f"{__package__}.{module}"), cls)
    return engine(**options)


def portable(exc: Exception) -> Exception:
    """``exc`` without its chain, or as a one-line error if it cannot cross processes."""
    exc.__context__ = exc.__cause__ = None
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return ArcoforgeError(one_line(exc))
    return exc
