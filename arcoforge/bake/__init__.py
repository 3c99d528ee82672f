"""A bake: a recipe's plan run on an engine, resumed, appended or refreshed as its store needs."""

from arcoforge.bake.run import BakeResult, bake

__all__ = ["BakeResult", "bake"]
