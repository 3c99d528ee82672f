"""Value comparison: what a store holds against what its sources hold, NaN equal to NaN,
packed variables compared as stored."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from arcoforge.errors import ValidationError


def sample_positions(n: int, k: int = 2) -> list[int]:
    """First, last and evenly spaced inputs in between: ``k`` of ``n`` at most."""
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def compare_stored(source: xr.Dataset, stored: xr.Dataset, where: str) -> None:
    """Raise :class:`ValidationError` at the first value of ``source`` (decoded) that
    ``stored`` (as stored, undecoded) lacks: packed variables are compared exactly as
    stored, the source encoded with the store's packing; the others decoded."""
    decoded = xr.decode_cf(stored)
    for name, var in source.variables.items():
        if name not in stored.variables:
            raise ValidationError(f"{where}: variable {name!r} is missing from the store")
        raw = stored.variables[name]
        if _PACKED & set(raw.attrs):
            got, want = raw.transpose(*var.dims).values, _encoded(var, raw)
        else:
            got, want = decoded.variables[name].transpose(*var.dims).values, var.values
        compare_values(got, want, name, var.dims, where)


_PACKED = {"scale_factor", "add_offset"}


def _encoded(var: xr.Variable, stored: xr.Variable) -> np.ndarray:
    """The values of ``var`` packed as ``stored`` is."""
    keys = ("scale_factor", "add_offset", "_FillValue", "missing_value", "_Unsigned")
    encoding = {k: stored.attrs[k] for k in keys if k in stored.attrs}
    plain = xr.Variable(var.dims, var.values, encoding={**encoding, "dtype": stored.dtype})
    return xr.conventions.encode_cf_variable(plain).values


def compare(source: xr.Dataset, output: xr.Dataset, where: str) -> None:
    """Raise :class:`ValidationError` at the first value of ``source`` that ``output`` lacks."""
    for name, var in source.variables.items():
        if name not in output.variables:
            raise ValidationError(f"{where}: variable {name!r} is missing from the store")
        out = output.variables[name]
        got = out.transpose(*var.dims).values
        compare_values(got, var.values, name, var.dims, where, _tolerance(out))


def compare_values(
    got: np.ndarray, want: np.ndarray, name: str, dims, where: str, tolerance: float = 0.0
) -> None:
    """Raise :class:`ValidationError` unless ``got`` (the store's values of ``name``) equals
    ``want`` (the source's), NaN equal to NaN, within ``tolerance``."""
    if got.shape != want.shape:
        raise ValidationError(
            f"{where}: {name!r} has shape {got.shape} in the store, not {want.shape}"
        )
    same = _equal_mask(got, want, tolerance)
    if not same.all():
        index = tuple(int(i) for i in np.argwhere(~same)[0])
        raise ValidationError(
            f"{where}: {name!r} differs at {dict(zip(dims, index, strict=True))}: "
            f"store has {got[index]}, source has {want[index]}"
        )


def _tolerance(var: xr.Variable) -> float:
    """Half a step of a packed (scale_factor) encoding; zero for lossless ones."""
    return abs(float(var.encoding.get("scale_factor", 0.0))) / 2


def _equal_mask(a: np.ndarray, b: np.ndarray, tolerance: float = 0.0) -> np.ndarray:
    if a.dtype.kind in "fc" and b.dtype.kind in "fc":
        a = a.astype(b.dtype, copy=False)
        close = (a == b) if not tolerance else np.abs(a - b) <= tolerance * (1 + 1e-6)
        return close | (np.isnan(a) & np.isnan(b))
    if a.dtype.kind == "M":
        return (a == b) | (np.isnat(a) & np.isnat(b))
    if a.dtype.kind == "O" and b.dtype.kind == "O":  # masked chars: bytes, NaN where missing
        return np.asarray(a == b) | (pd.isna(a) & pd.isna(b))
    return np.asarray(a == b)
