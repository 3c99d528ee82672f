"""A product: one kind of output (a Zarr copy, references), behind one interface."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from arcoforge.core.plan import Plan


@dataclass(frozen=True)
class Product:
    """What a bake needs of a product, found from the recipe's writer step.

    ``plan`` turns a recipe into a :class:`~arcoforge.core.plan.Plan`; ``append``,
    ``retry`` and ``refresh`` derive from a plan the plans that add the inputs its
    published store lacks, fill in the inputs it skipped, and bake again what changed
    inputs feed; ``describe`` says what a plan would do, for ``--dry-run``.
    """

    name: str
    writer: type
    plan: Callable[..., Plan]
    append: Callable[[Plan], Plan]
    retry: Callable[[Plan], Plan]
    refresh: Callable[[Plan, dict, list[str], list[dict]], Plan]
    describe: Callable[[Plan], dict[str, Any]]
