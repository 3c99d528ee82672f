"""File patterns and recipe composition: pure, nothing is opened."""

from __future__ import annotations

import pickle

import pandas as pd
import pytest

from arcoforge import (
    ConcatDim,
    FilePattern,
    MergeDim,
    OpenURLWithFSSpec,
    OpenWithXarray,
    StoreToZarr,
    pattern_from_file_sequence,
)
from arcoforge.errors import RecipeError
from arcoforge.recipe.steps import Preprocess


def make_url(variable, time):
    return f"https://data.example/{variable}/{time:%Y%m%d}.nc"


def test_inputs_follow_key_order_with_positions():
    dates = pd.date_range("2000-01-01", periods=3)
    pattern = FilePattern(make_url, MergeDim("variable", ["sst", "ice"]), ConcatDim("time", dates))
    inputs = list(pattern.inputs())
    assert len(pattern) == len(inputs) == 6
    assert inputs[0].url == "https://data.example/sst/20000101.nc"
    assert inputs[4].url == "https://data.example/ice/20000102.nc"
    assert inputs[4].pos("variable") == 1 and inputs[4].pos("time") == 1
    assert pattern.dims == {"variable": 2, "time": 3}
    assert pattern.merge_dim.name == "variable"
    assert [d.name for d in pattern.concat_dims] == ["time"]
    assert next(iter(pattern.items())) == (inputs[0].position, inputs[0].url)


def test_a_pattern_without_combine_dims_is_one_input():
    (only,) = FilePattern(lambda: "https://data.example/all.nc").inputs()
    assert (only.url, only.position, only.keys) == ("https://data.example/all.nc", (), ())


def test_prune_keeps_the_first_keys_of_concat_dims_only():
    dates = pd.date_range("2000-01-01", periods=10)
    pattern = FilePattern(make_url, MergeDim("variable", ["sst", "ice"]), ConcatDim("time", dates))
    pruned = pattern.prune(2)
    assert pruned.dims == {"variable": 2, "time": 2}
    assert [i.url for i in pruned.inputs()][:2] == [
        "https://data.example/sst/20000101.nc",
        "https://data.example/sst/20000102.nc",
    ]


def test_file_sequence_pattern_is_picklable():
    pattern = pattern_from_file_sequence(["a.nc", "b.nc"], "time", nitems_per_file=2)
    assert [i.url for i in pickle.loads(pickle.dumps(pattern)).inputs()] == ["a.nc", "b.nc"]
    assert pattern.concat_dims[0].nitems_per_file == 2


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: FilePattern(make_url, file_type="nc"), "file_type"),
        (lambda: ConcatDim("time", []), "no keys"),
        (lambda: ConcatDim("time", [1], nitems_per_file=0), "nitems_per_file"),
        (lambda: FilePattern(make_url, ConcatDim("t", [1]), ConcatDim("t", [2])), "repeat"),
    ],
)
def test_bad_patterns_say_why(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_recipe_composition_and_checks():
    pattern = pattern_from_file_sequence(["a.nc"], "time")
    recipe = (
        pattern | OpenURLWithFSSpec() | OpenWithXarray() | (lambda ds: ds) | StoreToZarr("x.zarr")
    )
    assert isinstance(recipe.steps[2], Preprocess)
    assert recipe.check().writer.store_name == "x.zarr"
    assert recipe.file_type == "netcdf4"
    with pytest.raises(RecipeError, match="last step"):
        recipe | OpenWithXarray()
    with pytest.raises(RecipeError, match="no OpenWithXarray"):
        (pattern | StoreToZarr("x.zarr")).check()
    with pytest.raises(RecipeError, match="no StoreToZarr"):
        (pattern | OpenWithXarray()).check()
    with pytest.raises(RecipeError, match="after OpenWithXarray"):
        (pattern | (lambda ds: ds) | OpenWithXarray() | StoreToZarr("x.zarr")).check()
    with pytest.raises(RecipeError, match="zarr_format"):
        StoreToZarr("x.zarr", zarr_format=4)
    with pytest.raises(RecipeError, match="not a step"):
        pattern | 42
