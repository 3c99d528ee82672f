"""The OISST-like bake of benchmarks/run.py on every engine, in one run:

    python benchmarks/engines.py [--repeat 3] [--days 60 --ny 720 --nx 1440]

local (2 workers, and 1: how far this machine lets 2 workers go), dask (1 and 2 workers,
a LocalCluster), spark (local[2]) and beam (DirectRunner, 2 processes). Each run is a
subprocess measured and verified by run.py's harness (same archive, same checks); the
table goes to benchmarks/results-engines.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys

from run import (
    MB,
    QUIET_WAIT,
    WORK,
    Contestant,
    RunResult,
    compile_bytecode,
    get_archive,
    log,
    run_contestant,
    warm_page_cache,
)

BENCH = os.path.dirname(os.path.abspath(__file__))
TARGET_SLOWDOWN = 1.3  # dask and spark within this of the local engine
TARGET_SPEEDUP = 1.7  # 2 workers at least this much faster than 1


def contestant(engine: str, workers: int) -> Contestant:
    return Contestant(
        f"{engine}-{workers}",
        f"{engine} ({workers} worker{'s' * (workers > 1)})",
        "arcoforge_local.py",
        "zarr",
        args=("--engine", engine, "--workers", str(workers)),
    )


RUNS = [
    contestant(*c)
    for c in (("local", 2), ("local", 1), ("dask", 1), ("dask", 2), ("spark", 2), ("beam", 2))
]


def median(runs: list[RunResult]) -> float | None:
    """The median bake seconds, if every run passed."""
    values = sorted(r.seconds for r in runs if r.ok)
    return values[len(values) // 2] if values and all(r.ok for r in runs) else None


def render(results: dict[str, list[RunResult]], archive, repeat: int) -> str:
    base = median(results["local-2"])
    lines = [
        f"## arcoforge engines: {archive.days} daily OISST-like files, {archive.ny}x{archive.nx}",
        "",
        f"{archive.input_bytes / MB:.0f} MB uncompressed input; Zarr v3, time chunks of 30, "
        f"Blosc(zstd, 3, shuffle). {os.cpu_count()} CPUs; median of {repeat} run(s). "
        "Bake seconds with the engine already started (a running cluster); its start-up apart.",
        "",
        "| engine | bake s | vs local (2) | start-up s | peak RSS MB | verified |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for c in RUNS:
        runs = results[c.key]
        seconds = median(runs)
        if seconds is None:
            why = next((r.error for r in runs if r.error), "did not run")[:120].replace("|", "/")
            lines.append(f"| {c.label} | failed: {why} | | | | no |")
            continue
        startup = sorted(r.notes.get("startup_seconds", 0.0) for r in runs)[len(runs) // 2]
        rss = sorted(r.peak_rss for r in runs)[len(runs) // 2]
        lines.append(
            f"| {c.label} | {seconds:.2f} | {seconds / base:.2f}x | {startup:.1f} | "
            f"{rss / MB:.0f} | yes |"
        )
    lines += ["", *targets(results, base)]
    return "\n".join(lines) + "\n"


def targets(results: dict[str, list[RunResult]], base: float | None) -> list[str]:
    out = ["| target | measured | met |", "| --- | --- | --- |"]
    for key in ("dask-2", "spark-2"):
        s = median(results[key])
        ratio = s / base if s and base else None
        out.append(_target(f"{key} within {TARGET_SLOWDOWN}x of local (2)", ratio, "x", True))
    for engine in ("dask", "local"):  # the local engine's: what this machine allows
        one, two = median(results[f"{engine}-1"]), median(results[f"{engine}-2"])
        speedup = one / two if one and two else None
        name = f"{engine} 2 workers >= {TARGET_SPEEDUP}x faster than 1"
        out.append(_target(name, speedup, "x", False))
    return out


def _target(name: str, value: float | None, unit: str, at_most: bool) -> str:
    if value is None:
        return f"| {name} | n/a | n/a |"
    limit = TARGET_SLOWDOWN if at_most else TARGET_SPEEDUP
    met = value <= limit if at_most else value >= limit
    return f"| {name} | {value:.2f}{unit} | {'yes' if met else 'no'} |"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeat", type=int, default=1, help="runs of each engine; medians")
    p.add_argument("--days", type=int, default=60)
    p.add_argument("--ny", type=int, default=720)
    p.add_argument("--nx", type=int, default=1440)
    p.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    p.add_argument("--quiet-wait", type=float, default=QUIET_WAIT)
    args = p.parse_args(argv)
    args.workers = 2  # run_contestant's default; each contestant sets its own
    WORK.mkdir(parents=True, exist_ok=True)
    compile_bytecode()
    archive = get_archive(args.days, args.ny, args.nx)
    results: dict[str, list[RunResult]] = {c.key: [] for c in RUNS}
    for rep in range(args.repeat):
        for c in RUNS:
            warm_page_cache(archive)
            tag = f"engines-{archive.days}d-r{rep}"
            results[c.key].append(run_contestant(c, sys.executable, archive, tag, args))
            shutil.rmtree(WORK / "out" / f"{c.key}-{tag}", ignore_errors=True)
    table = render(results, archive, args.repeat)
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    print(table)
    with open(os.path.join(BENCH, "results-engines.md"), "w") as fh:
        fh.write(
            table + f"\n_Run {stamp} by `python benchmarks/engines.py --repeat {args.repeat}`._\n"
        )
    log("wrote benchmarks/results-engines.md")
    return 0 if all(r.ok for runs in results.values() for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
