"""What a user writes: file patterns, the steps of a recipe, feedstocks and bake settings.

Nothing here reads inputs or writes outputs; the products turn a recipe into a plan."""

from arcoforge.recipe.patterns import (
    ConcatDim,
    FilePattern,
    Input,
    MergeDim,
    pattern_from_file_sequence,
)
from arcoforge.recipe.steps import (
    OpenURLWithFSSpec,
    OpenWithKerchunk,
    OpenWithXarray,
    Preprocess,
    Recipe,
    StoreToZarr,
    WriteCombinedReference,
)

__all__ = [
    "ConcatDim",
    "FilePattern",
    "Input",
    "MergeDim",
    "OpenURLWithFSSpec",
    "OpenWithKerchunk",
    "OpenWithXarray",
    "Preprocess",
    "Recipe",
    "StoreToZarr",
    "WriteCombinedReference",
    "pattern_from_file_sequence",
]
