"""Contestant 2: pangeo-forge-recipes 0.10.8 on Beam's DirectRunner (runs in .venvs/pgf).

Recipe as in the pgf docs: Create(pattern.items()) | OpenURLWithFSSpec | OpenWithXarray |
StoreToZarr(target_chunks={"time": 30}).  One extra user-level step, ``DropSourceEncoding``,
clears the int16/scale_factor encoding that pgf would otherwise copy from the source files,
so that pgf writes decoded float32 (NaN fill) like the other contestants; StoreToZarr's
``encoding`` sets the same Blosc(zstd, 3, SHUFFLE) codec.  pgf 0.10.8 writes Zarr v2
(it requires zarr<3).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Timer, parse_args, write_result

DATA_VARS = ("sst", "anom", "err", "ice")


def drop_source_encoding(item):
    # self-contained: Beam pickles this function by value for its worker processes
    index, ds = item
    for name in ("sst", "anom", "err", "ice"):
        ds[name].encoding = {}
    return index, ds


def main() -> None:
    args = parse_args()
    mode = os.environ.get("ARCOFORGE_BENCH_PGF_MODE", "multi_processing")

    import apache_beam as beam
    import numcodecs
    from apache_beam.options.pipeline_options import PipelineOptions
    from pangeo_forge_recipes.patterns import ConcatDim, FilePattern
    from pangeo_forge_recipes.transforms import (
        OpenURLWithFSSpec,
        OpenWithXarray,
        StoreToZarr,
    )

    paths = [str(p) for p in args.paths]
    codec = numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.SHUFFLE)
    encoding = {name: {"compressor": codec} for name in DATA_VARS}

    with Timer() as t:
        pattern = FilePattern(
            lambda time: paths[time],
            ConcatDim("time", list(range(len(paths))), nitems_per_file=1),
            file_type="netcdf4",
        )
        options = PipelineOptions(
            runner="DirectRunner",
            direct_num_workers=args.workers,
            direct_running_mode=mode,
        )
        with beam.Pipeline(options=options) as p:
            (
                p
                | beam.Create(pattern.items())
                | OpenURLWithFSSpec()
                | OpenWithXarray(file_type=pattern.file_type)
                | "DropSourceEncoding" >> beam.Map(drop_source_encoding)
                | StoreToZarr(
                    target_root=str(args.out),
                    store_name="oisst.zarr",
                    combine_dims=pattern.combine_dim_keys,
                    target_chunks={"time": 30},
                    encoding=encoding,
                )
            )
    write_result(args.result, t.seconds, store="oisst.zarr", running_mode=mode)


if __name__ == "__main__":
    main()
