"""The references product as a bake finds it: from a recipe that ends in
``WriteCombinedReference``."""

from arcoforge.core.product import Product
from arcoforge.recipe.steps import WriteCombinedReference
from arcoforge.references.append import (
    plan_reference_append,
    plan_reference_refresh,
    plan_reference_retry,
)
from arcoforge.references.plan import describe, make_reference_plan

REFERENCES = Product(
    name="references",
    writer=WriteCombinedReference,
    plan=make_reference_plan,
    append=plan_reference_append,
    retry=plan_reference_retry,
    refresh=plan_reference_refresh,
    describe=describe,
)
