"""The one interface every engine implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..errors import ArcoforgeError


class Engine(ABC):
    """Runs ``func`` over items and yields results as they finish (in any order)."""

    name = "engine"
    worker_losses = 0  # times a worker died and its tasks ran again

    @abstractmethod
    def map(self, func: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
        """Yield ``func(item)`` for every item; raise the first task error."""

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


def get_engine(name: str = "local", **options: Any) -> Engine:
    """The engine called ``name``, configured by ``options``."""
    if name == "local":
        from .local import LocalEngine

        return LocalEngine(**options)
    raise ArcoforgeError(f"engine {name!r} is not known (available: local)")
