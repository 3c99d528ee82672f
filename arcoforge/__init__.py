"""arcoforge: bake archives of scientific files into analysis-ready, cloud-optimized stores."""

from arcoforge.bake import BakeResult, bake
from arcoforge.errors import ArcoforgeError
from arcoforge.recipe import (
    ConcatDim,
    FilePattern,
    MergeDim,
    OpenURLWithFSSpec,
    OpenWithKerchunk,
    OpenWithXarray,
    Preprocess,
    Recipe,
    StoreToZarr,
    WriteCombinedReference,
    pattern_from_file_sequence,
)
from arcoforge.version import __version__

__all__ = [
    "ArcoforgeError",
    "BakeResult",
    "ConcatDim",
    "FilePattern",
    "MergeDim",
    "OpenURLWithFSSpec",
    "OpenWithKerchunk",
    "OpenWithXarray",
    "Preprocess",
    "Recipe",
    "StoreToZarr",
    "WriteCombinedReference",
    "__version__",
    "bake",
    "pattern_from_file_sequence",
]
