"""The Zarr product as a bake finds it: from a recipe that ends in ``StoreToZarr``."""

from arcoforge.core.product import Product
from arcoforge.recipe.steps import StoreToZarr
from arcoforge.zarr.append import plan_append, plan_changed, plan_retry
from arcoforge.zarr.plan import describe, make_zarr_plan

ZARR = Product(
    name="zarr",
    writer=StoreToZarr,
    plan=make_zarr_plan,
    append=plan_append,
    retry=plan_retry,
    refresh=plan_changed,
    describe=describe,
)
