"""What auditing a store costs next to the bake that wrote it.

    .venv/bin/python benchmarks/audit.py             # the 60-day 720x1440 OISST archive
    .venv/bin/python benchmarks/audit.py --repeat 3  # medians of 3

Bakes the benchmark archive (the one benchmarks/run.py generates and caches) with 2
workers, then times, on the baked store: the check a bake runs before it publishes
(`check_before_publish`), the default audit, the audit against the recipe's sample inputs,
and the full audit (every chunk decoded, every input compared). Prints a markdown table
of medians and of each one's share of the bake.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from run import get_archive, warm_page_cache  # noqa: E402

from arcoforge import (  # noqa: E402
    OpenURLWithFSSpec,
    OpenWithXarray,
    StoreToZarr,
    bake,
    pattern_from_file_sequence,
)
from arcoforge.validate.zarr import validate_store  # noqa: E402
from arcoforge.zarr.check import check_before_publish  # noqa: E402


def timed(func) -> float:
    t0 = time.perf_counter()
    func()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeat", type=int, default=1, help="runs of each step; medians")
    p.add_argument("--days", type=int, default=60)
    p.add_argument("--ny", type=int, default=720)
    p.add_argument("--nx", type=int, default=1440)
    args = p.parse_args(argv)

    archive = get_archive(args.days, args.ny, args.nx)
    warm_page_cache(archive)
    pattern = pattern_from_file_sequence([str(p) for p in archive.paths], "time", 1)
    recipe = (
        pattern
        | OpenURLWithFSSpec()
        | OpenWithXarray()
        | StoreToZarr("oisst.zarr", target_chunks={"time": 30})
    )
    steps = {
        "bake (2 workers)": None,
        "check_before_publish": lambda url: check_before_publish(url),
        "validate (default sample)": lambda url: validate_store(url),
        "validate --against (5 inputs)": lambda url: validate_store(url, against=recipe),
        "validate --against --full": lambda url: validate_store(url, against=recipe, full=True),
    }
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(dir=HERE / ".work") as root:
            url = ""

            def run_bake():
                nonlocal url
                url = bake(recipe, root, workers=2).url

            times["bake (2 workers)"].append(timed(run_bake))
            for name, step in steps.items():
                if step is not None:
                    times[name].append(timed(lambda step=step, url=url: step(url)))
    bake_s = statistics.median(times["bake (2 workers)"])
    print(f"\n{args.days} files of {args.ny}x{args.nx}, median of {args.repeat}\n")
    print("| step | seconds | share of the bake |")
    print("|---|---:|---:|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.3f} | {100 * median / bake_s:.1f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
