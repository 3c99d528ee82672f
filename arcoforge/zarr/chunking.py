"""Chunking: output chunk lengths from a recipe's target_chunks."""

from __future__ import annotations

import math
import re

import numpy as np

from arcoforge.errors import RecipeError
from arcoforge.zarr.scan import DatasetSchema

DEFAULT_CHUNK_BYTES = 100 * 2**20
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
}


def parse_bytes(text: str | int) -> int:
    """``"100MB"`` -> 100_000_000."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([\d.]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise RecipeError(f"target_chunks: {text!r} is not a size such as '100MB'")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def resolve_chunks(
    schema: DatasetSchema, target: dict[str, int] | str | int | None
) -> dict[str, int]:
    """Chunk length of every output dim.

    A dict fixes dims by name (others stay whole, concat dims default to one input's
    steps); a size chooses the length along the first concat dim so that the largest
    variable's chunks come near that size.
    """
    chunks = dict(schema.dims)
    if isinstance(target, dict):
        for dim, n in target.items():
            if dim not in schema.dims:
                have = ", ".join(schema.dims)
                raise RecipeError(
                    f"target_chunks: dim {dim!r} is not in the dataset (dims: {have})"
                )
            if not isinstance(n, int | np.integer) or n < 1:
                raise RecipeError(f"target_chunks: {dim}={n!r} must be a positive integer")
            chunks[dim] = min(int(n), schema.dims[dim])
        for dim in schema.concat_dims:
            if dim not in target:
                chunks[dim] = max(schema.counts[dim])
        return chunks
    budget = parse_bytes(target if target is not None else DEFAULT_CHUNK_BYTES)
    return _chunks_for_size(schema, chunks, budget)


def _chunks_for_size(schema: DatasetSchema, chunks: dict[str, int], budget: int) -> dict[str, int]:
    concat = schema.concat_dims
    for dim in concat[1:]:
        chunks[dim] = 1
    per_step = max(
        (
            np.dtype(v.dtype).itemsize * math.prod(chunks[d] for d in v.dims if d != concat[0])
            for v in schema.variables.values()
            if concat[0] in v.dims
        ),
        default=1,
    )
    if per_step > budget:
        chunks[concat[0]] = 1
        big = max((d for d in schema.dims if d not in concat), key=schema.dims.get, default=None)
        if big is not None:
            chunks[big] = max(1, math.ceil(schema.dims[big] / math.ceil(per_step / budget)))
    else:
        chunks[concat[0]] = max(1, min(schema.dims[concat[0]], budget // per_step))
    return chunks
