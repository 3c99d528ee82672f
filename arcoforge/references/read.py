"""The variables of a netCDF input as stored (neither masked nor scaled), as the check of a
reference bake reads them: netCDF-4 files through h5py, HDF5's own reader, which the scan
has loaded already; netCDF-3 files (and netCDF-4 files whose variables lack dimension
scales) through the netCDF library.

Dimension names come from the dimension scales each variable's ``DIMENSION_LIST`` points
to, as the netCDF library names them; the scan reads them another way (by netCDF-4's
dimension ids), so the check compares two readings.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from arcoforge.core.open import open_netcdf
from arcoforge.errors import SourceError, ValidationError, one_line
from arcoforge.references.manifest import json_value

# attributes the netCDF library keeps to itself
HIDDEN = {
    "DIMENSION_LIST",
    "REFERENCE_LIST",
    "CLASS",
    "NAME",
    "_Netcdf4Dimid",
    "_Netcdf4Coordinates",
    "_nc3_strict",
    "_NCProperties",
}
PURE_DIMENSION = b"This is a netCDF dimension but not a netCDF variable"


@dataclass(frozen=True)
class Variable:
    """One variable of an input: ``data`` reads it (an h5py dataset, or a netCDF4 variable
    that does not mask nor scale); ``dataset`` is its HDF5 dataset, if read by h5py."""

    name: str
    dims: tuple[str, ...]
    dtype: np.dtype
    attrs: dict[str, Any]
    data: Any
    dataset: Any = None

    def values(self, where: str, region: tuple[slice, ...] | None = None) -> np.ndarray:
        """The values (in ``region``) as stored."""
        try:
            return np.asarray(self.data[region or ...])
        except (RuntimeError, OSError, ValueError) as exc:
            raise ValidationError(f"{where}: cannot read {self.name!r}: {one_line(exc)}") from exc


@contextmanager
def stored_variables(
    path: str, where: str, attrs: Collection[str] | None = None
) -> Iterator[list[Variable]]:
    """The variables of the netCDF file at ``path`` (``where`` names it in errors), with
    their attributes named in ``attrs`` (all by default)."""
    try:
        with open(path, "rb") as f:
            classic = f.read(3) == b"CDF"
    except OSError as exc:
        raise SourceError(f"{where}: cannot open: {one_line(exc)}") from exc
    if not classic:
        try:
            h5 = h5py.File(path, "r")
        except OSError as exc:
            raise SourceError(f"{where}: cannot open: {one_line(exc)}") from exc
        with h5:
            variables = _hdf5_variables(h5, attrs)
            if variables is not None:
                yield variables
                return
    with _netcdf_variables(path, where, attrs) as variables:
        yield variables


def _hdf5_variables(h5, names: Collection[str] | None) -> list[Variable] | None:
    """The netCDF variables of the root group, or None if one lacks dimension scales."""

    found = []
    for name, ds in h5.items():
        if not isinstance(ds, h5py.Dataset):
            continue
        keys = list(ds.attrs)
        scale = "CLASS" in keys and ds.attrs["CLASS"] == b"DIMENSION_SCALE"
        if scale and PURE_DIMENSION in ds.attrs.get("NAME", b""):
            continue
        if scale and ds.ndim == 1:
            dims = (name,)
        elif "DIMENSION_LIST" in keys or ds.ndim == 0:
            refs = ds.attrs["DIMENSION_LIST"] if ds.ndim else []
            if any(len(r) != 1 for r in refs):
                return None
            paths = (h5py.h5r.get_name(r[0], h5.id).decode() for r in refs)  # no objects made
            dims = tuple(path.rsplit("/", 1)[-1] for path in paths)
        else:
            return None
        read = [k for k in keys if k not in HIDDEN and (names is None or k in names)]
        attrs = {k: json_value(ds.attrs[k]) for k in read}
        strings = h5py.check_string_dtype(ds.dtype)
        if strings is not None and strings.length is None:  # as the references hold them
            data = ds.asstr(strings.encoding, "surrogateescape")
            found.append(Variable(name, dims, np.dtype(object), attrs, data))
            continue
        found.append(Variable(name, dims, ds.dtype, attrs, ds, ds))
    return found


@contextmanager
def _netcdf_variables(
    path: str, where: str, names: Collection[str] | None
) -> Iterator[list[Variable]]:
    with open_netcdf(path, where) as nc:
        yield [
            Variable(
                name,
                tuple(var.dimensions),
                var.dtype,
                {
                    k: json_value(var.getncattr(k))
                    for k in var.ncattrs()
                    if names is None or k in names
                },
                var,
            )
            for name, var in nc.variables.items()
        ]
