"""Audit a finished Zarr store: it opens, its coordinates are sound, every chunk is there
and decodes, and (given its recipe) it holds its sources' values.

Unlike the in-bake checks of :mod:`arcoforge.zarr.check`, which compare what each write
task wrote, an audit looks at a store from the outside, as a reader would, at any time.
"""

from __future__ import annotations

import functools

from arcoforge.core.report import StoreReport
from arcoforge.errors import quietly
from arcoforge.recipe.steps import Recipe
from arcoforge.validate.sources import check_sources
from arcoforge.zarr.check import check_store


@quietly
def validate_store(
    url: str,
    *,
    storage_options: dict | None = None,
    against: Recipe | None = None,
    full: bool = False,
    sample: int = 5,
    cache: str | None = None,
    decode_budget: int | None = None,
) -> StoreReport:
    """Audit the Zarr store (v2 or v3) at ``url``.

    Checks that it opens with xarray, that CF times decode, that every dimension
    coordinate is complete, sorted and without duplicates, that every chunk of every
    array is stored, and that ``sample`` chunks per array decode (all with ``full``).
    With ``against``, ``sample`` of the recipe's inputs (first, last, seeded random ones;
    all with ``full``) are opened as the bake opens them and compared with the store.
    ``decode_budget`` caps the decoded bytes of the chunks decoded, smallest first.
    Raises :class:`ValidationError` when ``url`` holds no Zarr store at all.
    """
    sampled = None if full else sample
    also = None
    if against is not None:
        also = functools.partial(check_sources, recipe=against, sample=sampled, cache=cache)
    return check_store(url, storage_options, sample=sampled, decode_budget=decode_budget, also=also)
