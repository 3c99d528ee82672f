"""Contestant 1: arcoforge, local engine, ``--workers`` (2) workers.

FilePattern | OpenURLWithFSSpec | OpenWithXarray | StoreToZarr(target_chunks={"time": 30});
arcoforge writes decoded float32 (NaN fill), Zarr v3.  The codec is set explicitly to the one
every contestant uses, Blosc(zstd, 3, shuffle): arcoforge's own default is zstd level 1,
which is faster and would not be a like-for-like comparison.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Timer, parse_args, write_result


def main() -> None:
    args = parse_args()
    from zarr.codecs import BloscCodec

    from arcoforge import (
        ConcatDim,
        FilePattern,
        OpenURLWithFSSpec,
        OpenWithXarray,
        StoreToZarr,
        bake,
    )

    codec = BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")
    encoding = {name: {"compressors": (codec,)} for name in ("sst", "anom", "err", "ice")}
    paths = [str(p) for p in args.paths]
    with Timer() as t:
        pattern = FilePattern(
            lambda time: paths[time],
            ConcatDim("time", list(range(len(paths))), nitems_per_file=1),
            file_type="netcdf4",
        )
        recipe = (
            pattern
            | OpenURLWithFSSpec()
            | OpenWithXarray()
            | StoreToZarr(store_name="oisst.zarr", target_chunks={"time": 30}, encoding=encoding)
        )
        result = bake(recipe, target_root=str(args.out), workers=args.workers)
    write_result(args.result, t.seconds, store="oisst.zarr", bake_result=repr(result)[:2000])


if __name__ == "__main__":
    main()
