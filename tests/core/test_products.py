"""Products are found from the recipe's writer step, and targets from the store's URL."""

from __future__ import annotations

import pytest

from arcoforge import (
    OpenURLWithFSSpec,
    OpenWithKerchunk,
    OpenWithXarray,
    StoreToZarr,
    WriteCombinedReference,
    pattern_from_file_sequence,
)
from arcoforge.core.plan import Plan
from arcoforge.core.targets import LocalFolder, ObjectStore, target_at
from arcoforge.errors import AppendError, RecipeError
from arcoforge.products import PRODUCTS, make_plan, product_for
from arcoforge.references.plan import ReferencePlan, ReferenceState
from arcoforge.zarr.plan import ZarrPlan, ZarrState


def recipes(paths) -> dict:
    pattern = pattern_from_file_sequence([str(p) for p in paths], "time", nitems_per_file=1)
    return {
        "zarr": pattern | OpenURLWithFSSpec() | OpenWithXarray() | StoreToZarr("out.zarr"),
        "references": pattern | OpenWithKerchunk() | WriteCombinedReference("refs"),
    }


@pytest.mark.parametrize(
    "name,plan_type,state_type",
    [("zarr", ZarrPlan, ZarrState), ("references", ReferencePlan, ReferenceState)],
)
def test_the_writer_step_picks_the_product(tmp_path, small_archive, name, plan_type, state_type):
    recipe = recipes(small_archive)[name]
    product = product_for(recipe)
    assert product.name == name and isinstance(recipe.writer, product.writer)
    plan = make_plan(recipe, str(tmp_path / "out"), cache=None, workers=2)
    assert type(plan) is plan_type and isinstance(plan, Plan)
    assert type(plan.new_state()) is state_type
    assert isinstance(plan.target, LocalFolder)
    assert not (tmp_path / "out").exists(), "planning writes nothing"
    # with no store yet, an append is the bake itself
    assert product.append(plan) is plan


def test_references_have_no_skipped_inputs_to_retry(tmp_path, small_archive):
    recipe = recipes(small_archive)["references"]
    plan = make_plan(recipe, str(tmp_path / "out"), cache=None, workers=1)
    with pytest.raises(AppendError, match=r"^references hold no skipped inputs to retry$"):
        product_for(recipe).retry(plan)


def test_a_recipe_without_a_writer_has_no_product(small_archive):
    recipe = recipes(small_archive)["zarr"]
    recipe = type(recipe)(recipe.pattern, recipe.steps[:-1])
    with pytest.raises(RecipeError, match=r"^the recipe has no StoreToZarr step"):
        product_for(recipe)
    assert [p.name for p in PRODUCTS] == ["zarr", "references"]


def test_targets_follow_the_url(tmp_path, s3, bucket):
    local = target_at(str(tmp_path / "a.zarr"), 2)
    assert type(local) is LocalFolder and local.zarr_format == 2
    assert local.zarr_store() == str(tmp_path / "a.zarr")
    assert type(target_at(f"file://{tmp_path}/a.zarr")) is LocalFolder
    remote = target_at(f"{bucket}/a.zarr", storage_options=s3)
    assert type(remote) is ObjectStore and remote.storage_options == s3
    assert remote.zarr_store().path.endswith("a.zarr")
