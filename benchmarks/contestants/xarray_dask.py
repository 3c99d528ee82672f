"""Contestant 3: xarray.open_mfdataset(parallel=True) + to_zarr on dask.distributed.

A LocalCluster of ``--workers`` (2) worker processes with 1 thread each; the files are opened
with chunks={"time": 1}, rechunked to time chunks of 30 (other dims whole), the source
encodings are dropped and the data variables are written as float32 (NaN fill) with
BloscCodec(zstd, 3, shuffle) to a Zarr v3 store via ``to_zarr(zarr_format=3)``.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Timer, parse_args, write_result


def main() -> None:
    args = parse_args()
    import xarray as xr
    from dask.distributed import Client, LocalCluster
    from zarr.codecs import BloscCodec

    paths = [str(p) for p in args.paths]
    with (
        Timer() as t,
        LocalCluster(
            n_workers=args.workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
        ) as cluster,
        Client(cluster),
    ):
        ds = xr.open_mfdataset(
            paths,
            engine="h5netcdf",
            chunks={"time": 1},
            parallel=True,
            combine="nested",
            concat_dim="time",
            data_vars="minimal",
            coords="minimal",
            compat="override",
        )
        ds = ds.chunk({"time": 30})
        for var in ds.variables.values():
            var.encoding = {}
        encoding = {
            name: {
                "dtype": "float32",
                "compressors": (BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"),),
            }
            for name in ds.data_vars
        }
        ds.to_zarr(
            args.out / "oisst.zarr",
            mode="w",
            zarr_format=3,
            encoding=encoding,
            consolidated=False,
        )
    write_result(args.result, t.seconds, store="oisst.zarr", zarr_format=3)


if __name__ == "__main__":
    main()
