"""The one interface every engine implements."""

from __future__ import annotations

import importlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from arcoforge.core.plan import BakeState, Plan
from arcoforge.core.progress import Reporter
from arcoforge.errors import ArcoforgeError

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
        state, timings = plan.new_state(), {}
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


def counted(results: Iterable, reporter: Reporter, name: str) -> Iterator:
    """``results``, advancing the stage's progress by one for each."""
    for result in results:
        yield result
        reporter.advanced(name)


def get_engine(name: str = "local", **options: Any) -> Engine:
    """The engine called ``name``, configured by ``options``."""
    if name not in ENGINES:
        raise ArcoforgeError(f"engine {name!r} is not known (available: {', '.join(ENGINES)})")
    module, cls, needs, extra = ENGINES[name]
    if needs is not None:
        try:
            importlib.import_module(needs)
        except ImportError as exc:
            raise ArcoforgeError(
                f'engine {name!r} is not installed: pip install "arcoforge[{extra}]"'
            ) from exc
    engine = getattr(importlib.import_module(f"{__package__}.{module}"), cls)
    return engine(**options)
