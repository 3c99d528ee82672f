"""Virtual-references peer: VirtualiZarr 2.x, ``open_virtual_dataset`` per file + ``xr.concat``.

The per-file opens run on VirtualiZarr's own parallel option, the executor that
``open_virtual_mfdataset(parallel=ProcessPoolExecutor)`` uses
(``virtualizarr.parallel.get_executor``: a process pool, forkserver start), with
``--workers`` (2) processes; the parent then concatenates the virtual datasets along time
with ``xr.concat(coords="minimal", compat="override")`` as VirtualiZarr's docs recommend,
and writes them with ``ds.vz.to_kerchunk(path, format="json" | "parquet")``.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Timer, parse_args, write_result


def _extra(p) -> None:
    p.add_argument("--format", choices=("json", "parquet"), required=True)


def open_one(url: str):
    """One file as a virtual dataset (coordinates loaded, data variables virtual)."""
    from obspec_utils.registry import ObjectStoreRegistry
    from obstore.store import LocalStore
    from virtualizarr import open_virtual_dataset
    from virtualizarr.parsers import HDFParser

    registry = ObjectStoreRegistry({"file://": LocalStore()})
    return open_virtual_dataset(url, registry=registry, parser=HDFParser())


def main() -> None:
    args = parse_args(_extra)
    from concurrent.futures import ProcessPoolExecutor

    import virtualizarr
    import xarray as xr
    from virtualizarr.parallel import get_executor

    urls = [p.resolve().as_uri() for p in args.paths]
    output = str(args.out / f"reference.{args.format}")
    with Timer() as t:
        make_executor = get_executor(parallel=ProcessPoolExecutor)
        with Timer() as t_open, make_executor(max_workers=args.workers) as pool:
            datasets = list(pool.map(open_one, urls, chunksize=16))
        with Timer() as t_concat:
            combined = xr.concat(
                datasets,
                dim="time",
                data_vars="all",
                coords="minimal",
                compat="override",
                combine_attrs="override",
            )
        combined.vz.to_kerchunk(output, format=args.format)
    phases = {
        "open": round(t_open.seconds, 2),
        "concat": round(t_concat.seconds, 2),
        "write": round(t.seconds - t_open.seconds - t_concat.seconds, 2),
    }
    write_result(
        args.result, t.seconds, output=output, virtualizarr=virtualizarr.__version__, phases=phases
    )


if __name__ == "__main__":
    main()
