"""Virtual-references peer: kerchunk, ``SingleHdf5ToZarr`` per file + ``MultiZarrToZarr``.

Scanning is parallel over ``--workers`` (2) processes: a ``ProcessPoolExecutor`` maps
``SingleHdf5ToZarr(path).translate()`` over the files and returns each file's reference dict
to the parent, which combines them with ``MultiZarrToZarr(concat_dims=["time"],
identical_dims=["lat", "lon"])``.  JSON: ``translate(filename=...)``.  Parquet: the
combined references converted with ``kerchunk.df.refs_to_dataframe`` (record size 100,000).
kerchunk's streaming route, ``MultiZarrToZarr(..., out=LazyReferenceMapper.create(...))``,
fails here (kerchunk 0.2.10, fsspec 2026.9) with ``KeyError: 'lat/.zarray'``: an identical
dimension's chunk key is written before its metadata (as in kerchunk issue 345).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Timer, parse_args, write_result


def _extra(p) -> None:
    p.add_argument("--format", choices=("json", "parquet"), required=True)


def scan(path: str) -> dict:
    """One file's kerchunk references (spec 1 dict)."""
    from kerchunk.hdf import SingleHdf5ToZarr

    return SingleHdf5ToZarr(path, inline_threshold=500).translate()


def combine(refs: list[dict], output: str, fmt: str) -> None:
    """MultiZarrToZarr over the per-file references, written as JSON or Parquet."""
    from kerchunk.combine import MultiZarrToZarr

    kwargs = {
        "concat_dims": ["time"],
        "identical_dims": ["lat", "lon"],
        "remote_protocol": "file",
    }
    if fmt == "json":
        MultiZarrToZarr(refs, **kwargs).translate(filename=output)
        return
    from kerchunk.df import refs_to_dataframe

    combined = MultiZarrToZarr(refs, **kwargs).translate()
    refs_to_dataframe(combined, output, record_size=100_000)


def main() -> None:
    args = parse_args(_extra)
    from concurrent.futures import ProcessPoolExecutor

    import kerchunk

    paths = [str(p) for p in args.paths]
    output = str(args.out / f"reference.{args.format}")
    with Timer() as t:
        with Timer() as t_scan, ProcessPoolExecutor(max_workers=args.workers) as pool:
            refs = list(pool.map(scan, paths, chunksize=16))
        combine(refs, output, args.format)
    phases = {
        "scan": round(t_scan.seconds, 2),
        "combine+write": round(t.seconds - t_scan.seconds, 2),
    }
    write_result(
        args.result, t.seconds, output=output, kerchunk=kerchunk.__version__, phases=phases
    )


if __name__ == "__main__":
    main()
