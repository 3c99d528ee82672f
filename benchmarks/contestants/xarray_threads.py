"""Contestant: xarray's defaults, ``xarray.open_mfdataset(paths, engine="h5netcdf",
parallel=True).to_zarr(out)`` on dask's threaded scheduler (no distributed cluster), as a
user writes it first: every other argument xarray's and zarr's default (one dask chunk per
file, the sources' encodings kept: int16 with scale_factor, their _FillValue, time units),
so the output is compared with arcoforge's defaults (``arcoforge_local.py --defaults``),
sizes too.

The one deviation, ``engine="h5netcdf"``: xarray's default engine for these files is
netcdf4, and with it ``open_mfdataset(parallel=True)`` on dask threads crashes the process
(SIGSEGV or SIGBUS in 5 of 5 tries on the 60-day archive; netCDF4 1.7.5, netCDF-C 4.10.1,
xarray 2026.9.0), a known open xarray bug (pydata/xarray#7079, #11088): its netCDF4 backend
holds its lock while it opens a file and reads array data but not while it reads the
variables and attributes, and netCDF-C is not thread-safe.  h5netcdf reads through h5py,
which serialises every HDF5 call under its own lock.  Both engines decode these files alike
(same dims, dtypes, encodings and preferred chunks): the store is byte for byte the one that
``open_mfdataset(paths, parallel=False)`` with the default engine writes (checked on the
60-day archive).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Timer, parse_args, write_result


def main() -> None:
    args = parse_args()
    import dask
    import xarray as xr

    paths = [str(p) for p in args.paths]
    with dask.config.set(scheduler="threads"), Timer() as t:
        xr.open_mfdataset(paths, engine="h5netcdf", parallel=True).to_zarr(args.out / "oisst.zarr")
    write_result(args.result, t.seconds, store="oisst.zarr", engine="h5netcdf", scheduler="threads")


if __name__ == "__main__":
    main()
