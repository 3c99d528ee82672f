"""Tiny protocol shared by the contestant scripts (stdlib only: runs in every venv).

Each contestant script is started by ``benchmarks/run.py`` as its own process:

    python contestants/<name>.py --paths-file PATHS.txt --out OUT_DIR --result RESULT.json

It imports what it needs, then times only the bake itself (pipeline/cluster construction
included, interpreter start-up and imports excluded) and writes ``{"seconds": ...}`` (plus
any notes) to RESULT.json.  The parent measures the whole process's wall time and the peak
RSS of the process tree separately.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def parse_args(extra=None) -> argparse.Namespace:
    """The common arguments; ``extra(parser)`` may add a script's own."""
    p = argparse.ArgumentParser()
    p.add_argument("--paths-file", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--result", required=True, type=Path)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--engine", default="local", help="arcoforge's engine (arcoforge only)")
    if extra is not None:
        extra(p)
    args = p.parse_args()
    args.paths = [Path(line) for line in args.paths_file.read_text().split() if line]
    return args


class Timer:
    def __enter__(self) -> Timer:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.t0


def write_result(path: Path, seconds: float, **notes) -> None:
    path.write_text(json.dumps({"seconds": seconds, **notes}, indent=2, default=str))


def daily_pattern(paths: list[str]):
    """arcoforge's FilePattern of one netCDF4 file a day, concatenated along time."""
    from arcoforge import ConcatDim, FilePattern

    return FilePattern(
        lambda time: paths[time],
        ConcatDim("time", list(range(len(paths))), nitems_per_file=1),
        file_type="netcdf4",
    )
