"""Dimension coordinates of a scanned input, refused when values are missing.

A value is missing where xarray reads NaN (or NaT): NaN itself, or a ``_FillValue`` or
``missing_value`` (masked as xarray masks them; not scaled, which keeps NaN where it is).
The Zarr product refuses such inputs in its scan, and ``arcoforge validate`` flags such a
store; the references product refuses them in its scan too, in the same words, before
anything is written. The scanners check every dimension coordinate (a 1-d variable named
for its dim) from the values they hold: concat coordinates and small coordinates are
inline; a larger one is read once. GRIB coordinates are not checked: cfgrib builds them
from message keys, which have no fill values.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd
import xarray as xr
from xarray.coding.variables import CFMaskCoder, SerializationWarning

from arcoforge.core.report import incomplete
from arcoforge.errors import SchemaError
from arcoforge.references.manifest import ArrayRefs

MASKS = ("_FillValue", "missing_value")  # the attributes xarray masks values by
SPECIAL = {"NaN", "Infinity", "-Infinity"}  # how Zarr v2 metadata holds such fill values


class IncompleteCoordinate(SchemaError):
    """A dimension coordinate has missing values (the scan adds which input)."""


def check_coordinate(
    name: str, refs: ArrayRefs, attrs: dict, read: Callable[[], np.ndarray]
) -> None:
    """Refuse dimension coordinate ``name`` if values are missing: its values inline in
    ``refs``, else ``read()``; ``attrs`` holds its fill values (``MASKS``) as stored."""
    values = refs.inline_values
    values = np.asarray(read() if values is None else values)
    fills = {k: _number(attrs[k]) for k in MASKS if attrs.get(k) is not None}
    decoded = _masked(values, fills)
    if decoded.dtype.kind in "fcmMO":
        missing = np.flatnonzero(pd.isna(decoded))
        if missing.size:
            raise IncompleteCoordinate(incomplete(name, missing, values.size))


def _masked(values: np.ndarray, fills: dict) -> np.ndarray:
    """``values`` with their fill values masked as xarray masks them (NaN in floats)."""
    if values.dtype.kind not in "iufc" or not fills:
        return values
    with warnings.catch_warnings():  # two fill values: both masked, as xarray does
        warnings.simplefilter("ignore", SerializationWarning)
        return CFMaskCoder().decode(xr.Variable(("x",), values, fills)).values


def _number(fill):
    """A fill value as a number: Zarr v2 metadata holds NaN and infinities as strings."""
    return float(fill) if isinstance(fill, str) and fill in SPECIAL else fill
