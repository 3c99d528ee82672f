"""The real-file corpus: files nobody here wrote, found in installed packages (origins and
licenses in ``docs/corpus.md``; the files copied into the repository's ``tests/data`` are
listed in ``tests/data/SOURCES.md``).

Series are made from single files by :func:`split`, which copies each variable's raw stored
values (no masking, scaling or decoding), its attributes, its dtype and its file format, so
that the parts hold exactly the source's bytes of values; nothing is regenerated.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import netCDF4
import numpy as np


def package_file(package: str, *parts: str) -> Path:
    """A file shipped inside an installed package (``iris_sample_data``, ``scipy``, ...)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed (the test extra has it)")
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.exists():
        raise FileNotFoundError(path)
    return path


def iris(name: str) -> Path:
    """A file of iris-sample-data (UK Open Government Licence)."""
    return package_file("iris_sample_data", "sample_data", name)


def nemo_series() -> list[Path]:
    """NEMO's three monthly ocean files (360_day calendar, time bounds), in time order."""
    folder = iris("NEMO")
    return sorted(folder.glob("nemo_1m_*_grid-T.nc"))


def scipy_nc(name: str) -> Path:
    """A netCDF-3 file of scipy's tests (BSD-3-Clause)."""
    return package_file("scipy", "io", "tests", "data", name)


def xarray_data(name: str) -> Path:
    """A file of xarray's tests (Apache-2.0)."""
    return package_file("xarray", "tests", "data", name)


def split(
    source: Path, dim: str, sizes: Sequence[int], folder: Path, data_model: str | None = None
) -> list[Path]:
    """``source`` cut along ``dim`` into files of ``sizes`` steps, in ``folder``: the same
    format (or ``data_model``, e.g. ``NETCDF3_CLASSIC`` for a netCDF4-classic source: the
    same data model in netCDF-3's container), dims, dtypes, attributes, chunking and
    compression, each variable's raw values."""
    folder.mkdir(parents=True, exist_ok=True)
    paths, start = [], 0
    with netCDF4.Dataset(source) as src:
        if sum(sizes) != len(src.dimensions[dim]):
            raise ValueError(
                f"{source}: {dim} has {len(src.dimensions[dim])} steps, not {sum(sizes)}"
            )
        for k, n in enumerate(sizes):
            path = folder / f"{source.stem}.{k:02d}{source.suffix}"
            path.unlink(missing_ok=True)
            _write_part(src, path, dim, slice(start, start + n), data_model or src.data_model)
            paths.append(path)
            start += n
    return paths


def _write_part(src: netCDF4.Dataset, path: Path, dim: str, where: slice, model: str) -> None:
    with netCDF4.Dataset(path, "w", format=model) as out:
        out.setncatts({k: src.getncattr(k) for k in src.ncattrs()})
        for name, d in src.dimensions.items():
            size = None if d.isunlimited() else len(d)
            if name == dim and size is not None:
                size = where.stop - where.start
            out.createDimension(name, size)
        for var in src.variables.values():
            _copy_variable(var, out, dim, where)


def _copy_variable(var, out: netCDF4.Dataset, dim: str, where: slice) -> None:
    var.set_auto_maskandscale(False)
    var.set_auto_chartostring(False)
    kwargs = {}
    filters = var.filters() if out.data_model.startswith("NETCDF4") else None
    if filters:
        kwargs = {k: filters[k] for k in ("zlib", "shuffle", "fletcher32") if filters.get(k)}
        if filters.get("complevel"):
            kwargs["complevel"] = filters["complevel"]
        chunking = var.chunking()
        if chunking != "contiguous":
            kwargs["chunksizes"] = [
                min(c, where.stop - where.start) if d == dim else c
                for c, d in zip(chunking, var.dimensions, strict=True)
            ]
    attrs = {k: var.getncattr(k) for k in var.ncattrs()}
    fill = attrs.pop("_FillValue", None)
    dtype = var.datatype
    new = out.createVariable(var.name, dtype, var.dimensions, fill_value=fill, **kwargs)
    new.set_auto_maskandscale(False)
    new.set_auto_chartostring(False)
    new.setncatts(attrs)
    index = tuple(where if d == dim else slice(None) for d in var.dimensions)
    values = var[index] if var.dimensions else var.getValue()
    if var.dimensions:
        new[...] = np.asarray(values) if not isinstance(values, np.ndarray) else values
    else:
        new.assignValue(values)


def split_grib(source: Path, folder: Path, keys=("dataDate", "dataTime")) -> list[Path]:
    """``source``'s messages grouped by ``keys`` (one file per analysis time by default, in
    the file's order): a GRIB file is its messages end to end, so each part holds the
    source's bytes."""
    import eccodes

    folder.mkdir(parents=True, exist_ok=True)
    parts: dict[str, list[bytes]] = {}
    with open(source, "rb") as f:
        while (handle := eccodes.codes_grib_new_from_file(f)) is not None:
            try:
                value = "-".join(str(eccodes.codes_get(handle, key)) for key in keys)
                parts.setdefault(value, []).append(eccodes.codes_get_message(handle))
            finally:
                eccodes.codes_release(handle)
    paths = []
    for k, (value, messages) in enumerate(parts.items()):
        path = folder / f"{source.stem}.{k:02d}.{value}{source.suffix}"
        path.write_bytes(b"".join(messages))
        paths.append(path)
    return paths


def grib_messages(path: Path) -> int:
    """The number of messages in the GRIB file at ``path``."""
    import eccodes

    with open(path, "rb") as f:
        return eccodes.codes_count_in_file(f)
