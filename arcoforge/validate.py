"""Validation: compare a baked store with its sources, read directly by xarray."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from .errors import ValidationError
from .openers import open_input

if TYPE_CHECKING:
    from .plan import Plan
    from .schema import DatasetSchema


def sample_positions(n: int, k: int = 3) -> list[int]:
    """First, last and evenly spaced inputs in between: ``k`` of ``n`` at most."""
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def validate_sample(plan: Plan, schema: DatasetSchema, k: int = 3) -> int:
    """Check every variable of a sample of inputs against the store; return how many."""
    out = open_store(plan.target)
    try:
        chosen = [plan.inputs[i] for i in sample_positions(len(plan.inputs), k)]
        for item in chosen:
            with open_input(item.url, plan.open) as src:
                compare(src, out.isel(schema.region_of(item)), plan.open.redact(item.url))
    finally:
        out.close()
    return len(chosen)


def open_store(target) -> xr.Dataset:
    """Open a store as xarray sees it, without consolidated metadata."""
    return xr.open_dataset(
        target.url, engine="zarr", chunks=None, consolidated=False,
        storage_options=target.storage_options,
    )  # fmt: skip


def compare(source: xr.Dataset, output: xr.Dataset, where: str) -> None:
    """Raise :class:`ValidationError` at the first value of ``source`` that ``output`` lacks."""
    for name, var in source.variables.items():
        if name not in output.variables:
            raise ValidationError(f"{where}: variable {name!r} is missing from the store")
        got = output.variables[name].transpose(*var.dims).values
        want = var.values
        if got.shape != want.shape:
            raise ValidationError(f"{where}: {name!r} has shape {got.shape} in the store, not {want.shape}")
        same = _equal_mask(got, want)
        if not same.all():
            index = tuple(int(i) for i in np.argwhere(~same)[0])
            raise ValidationError(
                f"{where}: {name!r} differs at {dict(zip(var.dims, index, strict=True))}: "
                f"store has {got[index]}, source has {want[index]}"
            )


def _equal_mask(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "fc" or b.dtype.kind in "fc":
        return (a == b) | (np.isnan(a) & np.isnan(b))
    if a.dtype.kind == "M":
        return (a == b) | (np.isnat(a) & np.isnat(b))
    return np.asarray(a == b)
