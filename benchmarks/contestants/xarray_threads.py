"""Contestant: xarray's defaults, ``xarray.open_mfdataset(paths, parallel=True).to_zarr(out)``
on dask's threaded scheduler (no distributed cluster), as a user writes it first: every
other argument xarray's and zarr's default (one dask chunk per file, the sources'
encodings kept: int16 with scale_factor, their _FillValue, time units), so the output
is compared with arcoforge's defaults (``arcoforge_local.py --defaults``), sizes too.
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
        xr.open_mfdataset(paths, parallel=True).to_zarr(args.out / "oisst.zarr")
    write_result(args.result, t.seconds, store="oisst.zarr", scheduler="threads")


if __name__ == "__main__":
    main()
