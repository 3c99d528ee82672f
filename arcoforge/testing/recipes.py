"""Small recipes that tests bake: files along time into Zarr, or into combined references."""

from __future__ import annotations

from arcoforge.recipe.patterns import FilePattern, pattern_from_file_sequence
from arcoforge.recipe.steps import (
    OpenURLWithFSSpec,
    OpenWithKerchunk,
    OpenWithXarray,
    Recipe,
    StoreToZarr,
    WriteCombinedReference,
)

FORMATS = ["reference.json", "reference.parquet"]
"""The output file names of the two kerchunk formats: JSON and Parquet references."""


def simple_recipe(urls, store="out.zarr", chunks=None, **pattern_kwargs) -> Recipe:
    """``urls`` concatenated along time, one step each, into ``store``."""
    pattern = pattern_from_file_sequence(
        [str(u) for u in urls], "time", nitems_per_file=1, **pattern_kwargs
    )
    return (
        pattern
        | OpenURLWithFSSpec(retry_delay=0.01)
        | OpenWithXarray()
        | StoreToZarr(store, target_chunks=chunks or {"time": 3})
    )


def ref_recipe(paths, name="reference.json", file_type="netcdf4", **writer) -> Recipe:
    """``paths`` combined along time into the references ``ref/<name>``."""
    pattern = pattern_from_file_sequence([str(p) for p in paths], "time", file_type=file_type)
    return (
        pattern
        | OpenWithKerchunk()
        | WriteCombinedReference("ref", output_file_name=name, **writer)
    )


def references_recipe(pattern: FilePattern, name: str) -> Recipe:
    """The inputs of ``pattern`` combined along its concat dims into ``ref/<name>``."""
    return pattern | OpenWithKerchunk() | WriteCombinedReference("ref", output_file_name=name)
