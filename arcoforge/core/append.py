"""What appends of both products share: which inputs are new, and whether their steps
along the concat dim continue the store's."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from arcoforge.core.plan import Plan
from arcoforge.errors import AppendError
from arcoforge.recipe.patterns import Input


def held_identities(published: dict) -> list[dict | None]:
    """The identity the manifest records for each input of the store, None where it has
    none (a store baked before identities were recorded)."""
    found = published.get("identities") or []
    return [*found, *[None] * (len(published["inputs"]) - len(found))]


def new_inputs(plan: Plan, published: dict, dim: str) -> list[Input]:
    """The recipe's inputs that the published store lacks, checked to follow the ones it
    holds along ``dim``; none when the store is up to date."""
    held = set(published["inputs"])
    gone = held - {i.url for i in plan.inputs}
    if gone:
        raise AppendError(f"cannot append: {plan.url} holds {min(gone)}, which the recipe lacks")
    new = [i for i in plan.inputs if i.url not in held]
    if not new:
        if published["fingerprint"] == plan.fingerprint:
            return []
        raise AppendError(
            f"nothing to append to {plan.url}, but its inputs were in another order; "
            "bake it afresh with --force"
        )
    check_order(plan, new, held, dim)
    return new


def check_order(plan: Plan, new: list[Input], held: set[str], dim: str) -> None:
    old = [i for i in plan.inputs if i.url in held]
    if not new or not old:
        return
    last = max(old, key=lambda i: i.pos(dim))
    early = min(new, key=lambda i: i.pos(dim))
    if early.pos(dim) <= last.pos(dim):
        raise AppendError(
            f"cannot append {early.url}: it comes before {last.url}, which {plan.url} "
            f"already holds; appends must follow the store along {dim!r}"
        )


def moved(item: Input, dim: str, by: int) -> Input:
    position = tuple((d, p + by if d == dim else p) for d, p in item.position)
    return replace(item, position=position)


def check_steps(held: np.ndarray, values: np.ndarray, dim: str, input_at) -> None:
    """Raise :class:`AppendError` unless ``values`` continue ``held`` along ``dim``: after
    its last value, at its regular step (if it has one). ``input_at(i)`` is the
    input that holds ``values[i]``."""
    first = input_at(0).url
    last = held[-1]
    if values[0] <= last:
        how = "is already in" if values[0] in held else "overlaps"
        raise AppendError(
            f"cannot append {first}: {dim} {value_text(values[0])} {how} the store, whose last "
            f"{dim} is {value_text(last)}"
        )
    step = regular_step(held)
    if step is None:
        return
    joined = np.concatenate([held[-1:], values])
    gaps = np.flatnonzero(np.diff(joined) != step)
    if len(gaps):
        i = int(gaps[0])
        raise AppendError(
            f"cannot append {input_at(i).url}: {dim} {value_text(joined[i + 1])} leaves a gap after "
            f"{dim} {value_text(joined[i])} (the store's steps are {value_text(step)})"
        )


def regular_step(values: np.ndarray) -> Any:
    """The constant step of ``values``, or None if they are too few or irregular."""
    if len(values) < 2 or values.dtype == object:
        return None
    steps = np.diff(values)
    return steps[0] if (steps == steps[0]).all() else None


def value_text(value: Any) -> str:
    """A coordinate value or step as people write it: ``1981-09-07 12:00:00``, ``1 day``."""
    if isinstance(value, np.datetime64):
        return str(pd.Timestamp(value))
    if isinstance(value, np.timedelta64):
        days = pd.Timedelta(value) / pd.Timedelta(days=1)
        return f"{days:g} day{'s' * (days != 1)}" if days == int(days) else str(pd.Timedelta(value))
    return str(value)
