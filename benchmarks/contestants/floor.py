"""Contestant 4: the floor -- the least work that still produces the same encoded chunks.

h5py reads each variable's int16 values, they are unpacked to float32 (fill -> NaN), cut into
time chunks of 30 (other dims whole), encoded with numcodecs Blosc(zstd, 3, SHUFFLE) and each
encoded chunk is written to its own file ``OUT/<var>/<t>.0.0``.  No Zarr metadata, no
coordinates.  Work is split over a multiprocessing Pool of ``--workers`` (2) processes over
(variable, time-chunk) tasks.  Blosc's own threads are off so each process is one thread.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Timer, parse_args, write_result

DATA_VARS = ("sst", "anom", "err", "ice")
TIME_CHUNK = 30


def _init_worker() -> None:
    from numcodecs import blosc

    blosc.use_threads = False


def _scalar(value, dtype):
    import numpy as np

    return np.asarray(value, dtype=dtype).reshape(-1)[0]


def _bake_chunk(task):
    import h5py
    import numpy as np
    from numcodecs import Blosc

    var, t0, paths, out = task
    out_arr = None
    for i, path in enumerate(paths):
        with h5py.File(path, "r") as f:
            ds = f[var]
            if out_arr is None:
                out_arr = np.empty((len(paths), *ds.shape[1:]), dtype=np.float32)
                scale = _scalar(ds.attrs.get("scale_factor", 1.0), np.float32)
                offset = _scalar(ds.attrs.get("add_offset", 0.0), np.float32)
                fill = ds.attrs.get("_FillValue")
                fill = None if fill is None else _scalar(fill, ds.dtype)
            raw = ds[0]
        dst = out_arr[i]
        np.multiply(raw, scale, out=dst, dtype=np.float32)
        if offset:
            dst += offset
        if fill is not None:
            dst[raw == fill] = np.nan
    codec = Blosc(cname="zstd", clevel=3, shuffle=Blosc.SHUFFLE)
    encoded = codec.encode(out_arr)
    target = os.path.join(out, var, f"{t0 // TIME_CHUNK}.0.0")
    with open(target, "wb") as fh:
        fh.write(encoded)
    return var, t0, len(encoded)


def main() -> None:
    args = parse_args()
    from multiprocessing import get_context

    paths = [str(p) for p in args.paths]
    with Timer() as t:
        for var in DATA_VARS:
            os.makedirs(os.path.join(args.out, var), exist_ok=True)
        tasks = [
            (var, t0, paths[t0 : t0 + TIME_CHUNK], str(args.out))
            for t0 in range(0, len(paths), TIME_CHUNK)
            for var in DATA_VARS
        ]
        with get_context("fork").Pool(args.workers, initializer=_init_worker) as pool:
            written = sum(n for _, _, n in pool.imap_unordered(_bake_chunk, tasks))
    write_result(args.result, t.seconds, bytes_written=written, n_tasks=len(tasks))


if __name__ == "__main__":
    main()
