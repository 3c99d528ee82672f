"""What CF conventions say of a coordinate: which axis it is, and its values as text."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

AXES = {"T": "time", "X": "x", "Y": "y", "Z": "z"}
X_NAMES = {"longitude", "grid_longitude", "projection_x_coordinate"}
Y_NAMES = {"latitude", "grid_latitude", "projection_y_coordinate"}
Z_NAMES = {"altitude", "height", "depth", "air_pressure", "model_level_number"}
EAST = {"degrees_east", "degree_east", "degree_e", "degrees_e", "degreee", "degreese"}
NORTH = {"degrees_north", "degree_north", "degree_n", "degrees_n", "degreen", "degreesn"}


def units(var: xr.Variable) -> str | None:
    """The units of ``var``: its attribute, or for decoded times the encoding's."""
    found = var.attrs.get("units", var.encoding.get("units"))
    return None if found is None else str(found)


def is_time(var: xr.Variable) -> bool:
    """Whether ``var`` holds dates: datetime64 or cftime values."""
    if np.issubdtype(var.dtype, np.datetime64):
        return True
    return var.dtype == object and var.size > 0 and hasattr(var.values.flat[0], "calendar")


def kind(var: xr.Variable) -> str:
    """``time``, ``x``, ``y``, ``z`` or ``other``: from the CF ``axis``, else the
    ``standard_name``, else the units (``degrees_east``, ``... since ...``), else ``positive``."""
    axis = str(var.attrs.get("axis", "")).upper()
    if axis in AXES:
        return AXES[axis]
    standard = str(var.attrs.get("standard_name", ""))
    unit = (units(var) or "").lower()
    if standard == "time" or " since " in unit or is_time(var):
        return "time"
    if standard in X_NAMES or unit in EAST:
        return "x"
    if standard in Y_NAMES or unit in NORTH:
        return "y"
    if standard in Z_NAMES or var.attrs.get("positive") in ("up", "down"):
        return "z"
    return "other"


def is_longitude(var: xr.Variable) -> bool:
    """Whether ``var`` holds geographic longitudes in degrees."""
    unit = (units(var) or "").lower()
    return var.attrs.get("standard_name") == "longitude" or unit in EAST


def is_latitude(var: xr.Variable) -> bool:
    """Whether ``var`` holds geographic latitudes in degrees."""
    unit = (units(var) or "").lower()
    return var.attrs.get("standard_name") == "latitude" or unit in NORTH


def text(value) -> str | None:
    """One coordinate value as text: dates in ISO form (the day alone at midnight), numbers
    as short as they stay exact in their dtype; None for NaT and NaN."""
    if isinstance(value, np.datetime64):
        if np.isnat(value):
            return None
        value = pd.Timestamp(value)
    if hasattr(value, "strftime"):
        midnight = (value.hour, value.minute, value.second) == (0, 0, 0)
        return value.strftime("%Y-%m-%d" if midnight else "%Y-%m-%dT%H:%M:%S")
    if isinstance(value, np.floating | float):
        if np.isnan(value):
            return None
        return np.format_float_positional(value, unique=True, trim="-")
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value.item() if isinstance(value, np.generic) else value)
