"""Engines: map a stage's function over its items somewhere, and hand back the results."""

from arcoforge.engines.base import Engine, get_engine

__all__ = ["Engine", "get_engine"]
