"""The registry of products: which one bakes a recipe, found from its writer step."""

from __future__ import annotations

from arcoforge.core.plan import Plan
from arcoforge.core.product import Product
from arcoforge.errors import RecipeError
from arcoforge.recipe.steps import Recipe
from arcoforge.references.product import REFERENCES
from arcoforge.zarr.product import ZARR

PRODUCTS: tuple[Product, ...] = (ZARR, REFERENCES)


def product_for(recipe: Recipe) -> Product:
    """The product whose writer step ends ``recipe``."""
    for product in PRODUCTS:
        if isinstance(recipe.writer, product.writer):
            return product
    raise RecipeError(f"no product writes {type(recipe.writer).__name__}")


def make_plan(
    recipe: Recipe,
    target_root: str,
    *,
    cache: str | None,
    workers: int,
    storage_options: dict | None = None,
    skip_failed: bool = False,
) -> Plan:
    """Turn a checked recipe into the plan of its product; touches nothing."""
    recipe.check()
    return product_for(recipe).plan(
        recipe,
        target_root,
        cache=cache,
        workers=workers,
        storage_options=storage_options,
        skip_failed=skip_failed,
    )
