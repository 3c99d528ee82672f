"""Virtual-references benchmark: arcoforge against kerchunk and VirtualiZarr, JSON and Parquet.

    python benchmarks/virtual.py [--files 1000] [--repeat 3] [--formats json,parquet]

An archive of ``--files`` small netCDF4 files (4 float32 variables of 1 x 160 x 160, each
in 10 x 10 = 100 zlib chunks of 1 x 16 x 16, about 1 kB compressed and so above every tool's
inlining threshold: 400 references a file), plus 10 more for the append, is generated
once under benchmarks/.work/.  Each contestant runs in its own subprocess (see
benchmarks/contestants/virtual_*.py), measured by ``run.measure`` (peak RSS of the process
tree, polled); every output is then opened through fsspec's reference filesystem with
xarray and checked against the sources.  Prints a markdown table with ratios and targets
and writes it to benchmarks/results-virtual.md (raw numbers: .work/results-virtual.json).
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import inspect
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # benchmarks/run.py: measuring, logging and formatting helpers
from run import BENCH, CONTESTANTS_DIR, MB, REPO, WORK, RunResult, log

VARS = ("tas", "pr", "uas", "vas")
NY = NX = 160
CHUNK = 16  # chunks of 1 x 16 x 16 (1 kB, above inlining thresholds): 100 a variable and file
APPEND_FILES = 10
FILL = -9999.0
FORMATS = ("json", "parquet")
SAMPLES = 24  # points checked per variable

TARGET_SPEEDUP = {"kerchunk": 3.0, "virtualizarr": 2.0}
TARGET_RSS = 500 * MB
TARGET_APPEND_FRACTION = 1 / 20


# --------------------------------------------------------------------------- the archive


def write_file(path: Path, index: int) -> None:
    """One netCDF4 file: day ``index``, 4 float32 variables chunked 1 x 16 x 16, zlib 1,
    _FillValue -9999 on a 5 x 5 corner; written to a temporary name, then renamed."""
    import netCDF4
    import numpy as np

    rng = np.random.default_rng(index)
    yy, xx = np.meshgrid(np.linspace(0, 3, NY), np.linspace(0, 6, NX), indexing="ij")
    tmp = path.with_suffix(".tmp")
    with netCDF4.Dataset(tmp, "w", format="NETCDF4") as nc:
        nc.createDimension("time", 1)
        nc.createDimension("lat", NY)
        nc.createDimension("lon", NX)
        t = nc.createVariable("time", "f8", ("time",))
        t.units, t.calendar, t.standard_name = "days since 2000-01-01", "standard", "time"
        t[:] = [index]
        lat = nc.createVariable("lat", "f4", ("lat",))
        lat.units, lat[:] = "degrees_north", np.linspace(-49.5, 49.5, NY)
        lon = nc.createVariable("lon", "f4", ("lon",))
        lon.units, lon[:] = "degrees_east", np.linspace(0.5, 99.5, NX)
        for k, name in enumerate(VARS):
            field = np.sin(yy + index / 30 + k) * np.cos(xx - k) * 10 + k
            field = (field + rng.normal(0, 0.1, field.shape)).astype("f4")
            field[:5, :5] = FILL
            v = nc.createVariable(
                name,
                "f4",
                ("time", "lat", "lon"),
                zlib=True,
                complevel=1,
                chunksizes=(1, CHUNK, CHUNK),
                fill_value=FILL,
            )
            v.units = "1"
            v[:] = field[None]
        nc.title = "arcoforge virtual-references benchmark"
    tmp.rename(path)


@dataclasses.dataclass
class VArchive:
    files: int  # in the full build; APPEND_FILES more are appended
    paths: list[Path]  # files + APPEND_FILES
    full_list: Path  # paths file: the first ``files``
    all_list: Path  # paths file: all of them
    times: Path  # .npy: the decoded time coordinate of all files, read with xarray
    disk_bytes: int


def _generator_version() -> str:
    return hashlib.sha256(inspect.getsource(write_file).encode()).hexdigest()[:10]


def get_archive(files: int) -> VArchive:
    """Generate the missing files (in 2 processes) and the cached expected time coordinate."""
    from multiprocessing import Pool

    root = WORK / "archives" / f"virtual-{_generator_version()}"
    (root / "files").mkdir(parents=True, exist_ok=True)
    total = files + APPEND_FILES
    paths = [root / "files" / f"day{i:05d}.nc" for i in range(total)]
    todo = [(p, i) for i, p in enumerate(paths) if not p.exists()]
    if todo:
        log(f"generating {len(todo)} netCDF4 files in {root} (cached for re-runs)")
        t0 = time.perf_counter()
        with Pool(2) as pool:
            pool.starmap(write_file, todo, chunksize=8)
        log(f"generated them in {time.perf_counter() - t0:.1f} s")
    full_list, all_list = root / f"paths-{files}.txt", root / f"paths-{total}.txt"
    full_list.write_text("\n".join(str(p) for p in paths[:files]) + "\n")
    all_list.write_text("\n".join(str(p) for p in paths) + "\n")
    times = root / f"times-{total}.npy"
    if not times.exists():
        _save_source_times(paths, times)
    return VArchive(files, paths, full_list, all_list, times, sum(p.stat().st_size for p in paths))


def _save_source_times(paths: list[Path], dest: Path) -> None:
    """The time coordinate of every file, decoded by xarray (once per archive size)."""
    from multiprocessing import Pool

    import numpy as np

    log(f"reading the time coordinate of {len(paths)} files with xarray (once)")
    with Pool(2) as pool:
        values = pool.map(_source_time, paths, chunksize=16)
    np.save(dest, np.concatenate(values))


def _source_time(path: Path):
    import xarray as xr

    with xr.open_dataset(path, engine="h5netcdf") as ds:
        return ds["time"].values.astype("datetime64[ns]")


# --------------------------------------------------------------------------- contestants


@dataclasses.dataclass(frozen=True)
class Contestant:
    key: str
    label: str
    script: str


ARCOFORGE = Contestant("arcoforge", "arcoforge (local, 2 workers)", "virtual_arcoforge.py")
KERCHUNK = Contestant(
    "kerchunk",
    "kerchunk SingleHdf5ToZarr (2 processes) + MultiZarrToZarr",
    "virtual_kerchunk.py",
)
VIRTUALIZARR = Contestant(
    "virtualizarr",
    "VirtualiZarr open_virtual_dataset (2 processes) + xr.concat + to_kerchunk",
    "virtual_virtualizarr.py",
)
ALL = {c.key: c for c in (ARCOFORGE, KERCHUNK, VIRTUALIZARR)}


def _env(python: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if Path(python) == Path(sys.executable):  # the dev venv: arcoforge from this work tree
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    else:  # another venv (e.g. one with another branch of arcoforge installed)
        env.pop("PYTHONPATH", None)
        env["VIRTUAL_ENV"] = str(Path(python).parent.parent)
    return env


def run_one(
    c: Contestant,
    python: Path,
    paths_file: Path,
    out: Path,
    tag: str,
    fmt: str,
    args: argparse.Namespace,
    append: bool = False,
) -> RunResult:
    """Run one contestant as a subprocess (measured by run.measure); fills seconds/notes."""
    logs = WORK / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    name = f"virtual-{c.key}-{fmt}-{tag}" + ("-append" if append else "")
    log_path, result_path = logs / f"{name}.log", logs / f"{name}.result.json"
    result_path.unlink(missing_ok=True)
    cmd = [
        str(python),
        str(CONTESTANTS_DIR / c.script),
        *("--paths-file", str(paths_file), "--out", str(out), "--result", str(result_path)),
        *("--workers", str(args.workers), "--format", fmt),
        *(["--append"] if append else []),
    ]
    log(f"running {c.key} {fmt}{' append' if append else ''} ...")
    key = c.key + ("-append" if append else "")
    res = run.measure(key, cmd, _env(python), log_path, result_path, args.timeout, args.quiet_wait)
    if res.ok:
        reported = json.loads(result_path.read_text())
        res.seconds = reported.pop("seconds")
        res.notes = reported
    return res


def measured(
    c: Contestant, python, paths_file, out, tag, fmt, args, append=False, prepare=None
) -> RunResult:
    """``run_one`` with run.py's busy-machine policy: a run during which other processes used
    over run.BUSY_RETRY of the CPUs is repeated (``--busy-retries``), keeping the quieter one.
    ``prepare()`` resets the output before each attempt."""
    res = None
    for attempt in range(args.busy_retries + 1):
        if prepare is not None:
            prepare()
        again = run_one(c, python, paths_file, out, tag, fmt, args, append)
        if res is None or (again.ok and again.foreign_cpu_share < res.foreign_cpu_share):
            res = again
        res.busy_retries = attempt
        if not res.ok or res.foreign_cpu_share <= run.BUSY_RETRY or attempt == args.busy_retries:
            break
        log(f"re-running {c.key}: the machine was busy (keeping the quieter run)")
    return res


# --------------------------------------------------------------------------- verification


def _open_refs(path: Path):
    """The references at ``path`` (JSON file or Parquet directory) opened with xarray through
    fsspec's reference filesystem."""
    import xarray as xr

    return xr.open_dataset(
        "reference://",
        engine="zarr",
        backend_kwargs={
            "consolidated": False,
            "storage_options": {"fo": str(path), "remote_protocol": "file"},
        },
        chunks=None,
    )


def count_references(path: Path) -> dict[str, int]:
    """Chunk references per data variable, read from the JSON or the Parquet files."""
    if path.is_file():
        refs = json.loads(path.read_text())
        refs = refs.get("refs", refs)
        return {v: sum(1 for k in refs if _is_chunk_key(k, v)) for v in VARS}
    import pandas as pd

    counts = {}
    for v in VARS:
        frames = [pd.read_parquet(f) for f in sorted((path / v).glob("refs.*.parq"))]
        if not frames:
            counts[v] = 0
            continue
        df = pd.concat(frames)
        present = df["path"].notna()
        if "raw" in df:
            present |= df["raw"].notna()
        counts[v] = int(present.sum())
    return counts


def _is_chunk_key(key: str, var: str) -> bool:
    head, _, leaf = key.partition("/")
    return head == var and not leaf.startswith(".") and leaf != "zarr.json"


def _sample(files: int, var: str):
    """Random (t, y, x) points plus the first and last file and one filled point."""
    import numpy as np

    rng = np.random.default_rng([zlib.crc32(var.encode()), files])
    n = SAMPLES - 3
    t = [*rng.integers(0, files, n).tolist(), 0, files - 1, int(rng.integers(0, files))]
    y = [*rng.integers(0, NY, n).tolist(), NY - 1, 0, 2]
    x = [*rng.integers(0, NX, n).tolist(), 0, NX - 1, 3]
    return t, y, x


def _source_value(path: Path, var: str, y: int, x: int) -> float:
    import xarray as xr

    with xr.open_dataset(path, engine="h5netcdf") as ds:
        return float(ds[var].values[0, y, x])


def verify(output: Path, archive: VArchive, files: int) -> dict:
    """Shape, chunking, reference count, full time coordinate and sampled values."""
    import numpy as np

    problems: list[str] = []
    if not output.exists():
        return {"ok": False, "problems": [f"no output at {output}"]}
    counts = count_references(output)
    for var, n in counts.items():
        if n != files * (NY // CHUNK) * (NX // CHUNK):
            problems.append(f"{var}: {n} chunk references, want {files * 100}")
    ds = _open_refs(output)
    try:
        want_times = np.load(archive.times)[:files]
        got = np.asarray(ds["time"].values).astype("datetime64[ns]")
        if got.shape != want_times.shape or not (got == want_times).all():
            problems.append("time coordinate differs from the sources")
        for var in VARS:
            if var not in ds or ds[var].shape != (files, NY, NX):
                problems.append(f"{var}: missing or shape {ds[var].shape if var in ds else None}")
                continue
            chunks = ds[var].encoding.get("chunks")
            if chunks is not None and tuple(chunks) != (1, CHUNK, CHUNK):
                problems.append(f"{var}: chunks {chunks}")
            bad = 0
            for t, y, x in zip(*_sample(files, var), strict=True):
                got_v = float(ds[var][t, y, x])
                want_v = _source_value(archive.paths[t], var, y, x)
                if not np.isclose(got_v, want_v, rtol=0, atol=0, equal_nan=True):
                    bad += 1
            if bad:
                problems.append(f"{var}: {bad}/{SAMPLES} sampled values differ from the sources")
    finally:
        ds.close()
    return {"ok": not problems, "problems": problems, "references": sum(counts.values())}


def _du(path: Path) -> int:
    return path.stat().st_size if path.is_file() else run._du(path)


def check(res: RunResult, archive: VArchive, files: int) -> RunResult:
    """Verify a finished run's output (outside its timing) and mark it ok or not."""
    if not res.ok:
        return res
    output = Path(res.notes["output"])
    run.judge(res, lambda: verify(output, archive, files))
    res.output_bytes = _du(output) if output.exists() else None
    log(
        f"{res.key}: {res.seconds:.2f} s timed ({res.process_seconds:.2f} s process), peak RSS "
        f"{res.peak_rss / MB:.0f} MB over {res.max_processes} processes, "
        f"verify {'ok' if res.ok else 'FAILED: ' + res.error}"
    )
    return res


# --------------------------------------------------------------------------- reporting


@dataclasses.dataclass
class Row:
    key: str  # contestant key, "-append" for arcoforge's append runs
    label: str
    fmt: str
    runs: list[RunResult]

    @property
    def ok(self) -> bool:
        return bool(self.runs) and all(r.ok for r in self.runs)

    def median(self, attr: str) -> float | None:
        return statistics.median(getattr(r, attr) for r in self.runs) if self.ok else None


def _find(rows: list[Row], key: str, fmt: str) -> Row | None:
    return next((r for r in rows if r.key == key and r.fmt == fmt and r.ok), None)


def _row_line(row: Row, base: Row | None) -> str:
    if not row.ok:
        reason = next((r.error for r in row.runs if r.error), "did not run") or ""
        return f"| {row.label} | {row.fmt} | failed: {reason[:150].replace('|', '/')} |" + " |" * 7
    values = {a: row.median(a) for a in ("seconds", "cpu_seconds", "peak_rss")}
    ratios = {a: run._ratio(v, base and base.median(a)) for a, v in values.items()}
    cells = [run._fmt(r, ".2f", "x") for r in ratios.values()]
    if row.key.endswith("-append"):  # compared with the full build it appends to
        cells[0] = f"append / full build: {run._fmt(ratios['seconds'], '.3f')}"
    return (
        f"| {row.label} | {row.fmt} | {values['seconds']:.2f} | {values['cpu_seconds']:.1f} | "
        f"{row.median('process_seconds'):.2f} | {values['peak_rss'] / MB:.0f} | "
        f"{row.median('output_bytes') / MB:.2f} | " + " | ".join(cells) + " |"
    )


def render(rows: list[Row], args: argparse.Namespace, archive: VArchive) -> tuple[str, list]:
    n = archive.files
    refs = n * len(VARS) * (NY // CHUNK) * (NX // CHUNK)
    lines = [
        f"## Virtual references: {n:,} netCDF4 files, {len(VARS)} variables x "
        f"{(NY // CHUNK) * (NX // CHUNK)} chunks ({refs:,} references)",
        "",
        f"Each file: {len(VARS)} float32 variables of 1 x {NY} x {NX} in zlib chunks of "
        f"1 x {CHUNK} x {CHUNK}; {archive.disk_bytes / MB / len(archive.paths) * 1000:.0f} kB "
        f"a file. Append: {APPEND_FILES} more files into arcoforge's output, "
        f"{args.append_repeat} times a run. {os.cpu_count()} CPUs; median of {args.repeat} "
        "run(s) (of every append, for the append rows); warm page cache; every output "
        "opened through fsspec's reference filesystem with xarray and checked against the "
        "sources.",
        "",
        "| contestant | format | wall s | CPU s | process s | peak RSS MB | output MB "
        "| time ratio vs arcoforge | CPU ratio | RSS ratio |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        base = _find(rows, "arcoforge", row.fmt)
        lines.append(_row_line(row, base))
    lines += [
        "",
        "wall s: the contestant's timed section, from building the recipe/pool to the "
        "reference file(s) written (interpreter start-up and imports excluded); process s: the "
        "whole subprocess. peak RSS: sum over the contestant's process tree (its workers "
        f"included), polled every {run.POLL_SECONDS * 1000:.0f} ms. CPU s: user + system "
        "seconds of the contestant's processes (less sensitive than wall s to other "
        "processes on the machine). Ratios: contestant / "
        "arcoforge in the same format (a time ratio of 3 means arcoforge is 3x faster); the "
        "append row is compared with arcoforge's full build.",
        "",
        "### Targets",
        "",
    ]
    targets = evaluate_targets(rows, args.formats)
    for t in targets:
        mark = {True: "met", False: "NOT met", None: "n/a"}[t["met"]]
        lines.append(f"- {t['target']}: {t['measured']} — **{mark}**")
    lines += ["", "### Details", "", *_details(rows)]
    return "\n".join(lines) + "\n", targets


def _details(rows: list[Row]) -> list[str]:
    out = []
    for row in rows:
        if not row.ok:
            continue
        notes = row.runs[0].notes or {}
        version = next((f"{k} {v}" for k, v in notes.items() if k in ALL), "")
        cpu = statistics.median(r.cpu_seconds for r in row.runs)
        pss = statistics.median(r.peak_pss for r in row.runs)
        out.append(
            f"- {row.key} {row.fmt}: {version}; CPU {cpu:.1f} s; peak PSS {pss / MB:.0f} MB; "
            f"up to {max(r.max_processes for r in row.runs)} processes; "
            f"{row.runs[0].verify.get('references', 0):,} references verified" + _phases(row)
        )
    busy = [
        f"{row.key} {row.fmt} ({r.foreign_cpu_share:.0%})"
        for row in rows
        for r in row.runs
        if r.foreign_cpu_share is not None and r.foreign_cpu_share > run.BUSY_WARN
    ]
    if busy:
        out.append(
            "- WARNING: other processes used a noticeable share of the CPUs during: "
            + ", ".join(busy)
            + "; those timings are inflated."
        )
    return out


def _phases(row: Row) -> str:
    """'; phases (median s): scan 26.3, ...' from what the contestants report."""
    runs = [r.notes.get("phases") for r in row.runs if r.notes and r.notes.get("phases")]
    if not runs:
        return ""
    keys = [k for k in runs[0] if all(k in p for p in runs)]
    text = ", ".join(f"{k} {statistics.median(p[k] for p in runs):.2f}" for k in keys)
    return f"; phases (median s): {text}"


def evaluate_targets(rows: list[Row], formats: list[str]) -> list[dict]:
    out = []

    def add(target, measured, met):
        out.append({"target": target, "measured": measured, "met": met})

    for fmt in formats:
        base = _find(rows, "arcoforge", fmt)
        for key, want in TARGET_SPEEDUP.items():
            peer = _find(rows, key, fmt)
            ratio = (
                run._ratio(peer.median("seconds"), base.median("seconds"))
                if peer and base
                else None
            )
            add(
                f"{fmt}: arcoforge >= {want:g}x faster than {key}",
                run._fmt(ratio, ".2f", "x"),
                None if ratio is None else ratio >= want,
            )
        for key in ("arcoforge", "arcoforge-append"):
            row = _find(rows, key, fmt)
            rss = row.median("peak_rss") if row else None
            add(
                f"{fmt}: {key} peak RSS < {TARGET_RSS / MB:.0f} MB",
                run._fmt(rss and rss / MB, ".0f", " MB"),
                None if rss is None else rss < TARGET_RSS,
            )
        app = _find(rows, "arcoforge-append", fmt)
        frac = run._ratio(app.median("seconds"), base.median("seconds")) if app and base else None
        add(
            f"{fmt}: appending {APPEND_FILES} files costs < 1/{1 / TARGET_APPEND_FRACTION:.0f} "
            "of the full build",
            run._fmt(frac, ".3f", " of it"),
            None if frac is None else frac < TARGET_APPEND_FRACTION,
        )
    return out


# --------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--files", type=int, default=1000, help="files in the full build (1000)")
    p.add_argument("--repeat", type=int, default=3, help="runs per contestant; median (3)")
    p.add_argument(
        "--append-repeat", type=int, default=5, help="arcoforge appends per run; median (5)"
    )
    p.add_argument("--formats", default="json,parquet", help="json,parquet (both)")
    p.add_argument("--only", default=None, help=f"subset of {','.join(ALL)}")
    p.add_argument("--workers", type=int, default=2, help="workers/processes of every contestant")
    p.add_argument(
        "--arcoforge-python",
        type=Path,
        default=None,
        help="interpreter of a venv with the arcoforge to measure installed (default: this "
        "one, with arcoforge imported from this work tree)",
    )
    p.add_argument("--timeout", type=float, default=1800, help="seconds per contestant run")
    p.add_argument(
        "--busy-retries", type=int, default=None, help="as in run.py (1; 0 below 200 files)"
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=None,
        help=f"as in run.py ({run.QUIET_WAIT:.0f} s; 5 s below 200 files, for quick checks)",
    )
    p.add_argument("--keep-output", action="store_true", help="keep the outputs in .work/out")
    p.add_argument(
        "--render-only",
        action="store_true",
        help="run nothing: render the table again from .work/results-virtual.json",
    )
    args = p.parse_args(argv)
    small = args.files < 200  # a quick check: do not wait for a quiet machine
    if args.busy_retries is None:
        args.busy_retries = 0 if small else 1
    if args.quiet_wait is None:
        args.quiet_wait = 5.0 if small else run.QUIET_WAIT
    args.formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if (
        not set(args.formats) <= set(FORMATS)
        or min(args.repeat, args.files, args.append_repeat) < 1
    ):
        p.error("--formats takes json and/or parquet; --repeat, --files, --append-repeat >= 1")
    args.keys = list(ALL)
    if args.only:
        args.keys = [k for k in ALL if k in {x.strip() for x in args.only.split(",")}]
    return args


def arcoforge_ready(python: Path) -> str | None:
    """None when this arcoforge has the virtual-references API, else why not."""
    probe = "from arcoforge.recipe import OpenWithKerchunk, WriteCombinedReference"
    proc = subprocess.run(
        [str(python), "-c", probe], capture_output=True, text=True, env=_env(python), cwd=WORK
    )
    return None if proc.returncode == 0 else proc.stderr.strip().splitlines()[-1]


def arcoforge_source(python: Path) -> str:
    """Which arcoforge ``python`` imports: its work tree, commit and whether it is modified
    (or, for a copy made with ``git archive``, the commit its SNAPSHOT file names)."""
    probe = "import arcoforge, os; print(os.path.dirname(os.path.dirname(arcoforge.__file__)))"
    proc = subprocess.run(
        [str(python), "-c", probe], capture_output=True, text=True, env=_env(python), cwd=WORK
    )
    where = proc.stdout.strip()
    snapshot = Path(where) / "SNAPSHOT"  # a `git archive` copy, with the commit it holds
    if snapshot.is_file():
        return f"{where}, a snapshot of {snapshot.read_text().strip()}"
    git = ["git", "-C", where]
    head = subprocess.run([*git, "log", "-1", "--format=%h %s"], capture_output=True, text=True)
    dirty = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True)
    if head.returncode != 0:
        return where
    text = f"{where} at {head.stdout.strip()[:90]}"
    return text + (" (plus uncommitted changes)" if dirty.stdout.strip() else "")


def run_round(
    rep: int, args: argparse.Namespace, archive: VArchive, pythons: dict
) -> dict[tuple[str, str], RunResult]:
    """One run of every contestant in every format (arcoforge: full build, then append)."""
    results = {}
    tag = f"{archive.files}f-r{rep}"
    for fmt in args.formats:
        for key in args.keys:
            c = ALL[key]
            out = WORK / "out" / f"virtual-{key}-{fmt}-{tag}"

            def fresh(out=out):
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir(parents=True)

            run.warm_page_cache(archive)
            res = measured(c, pythons[key], archive.full_list, out, tag, fmt, args, prepare=fresh)
            results[(key, fmt)] = [check(res, archive, archive.files)]
            if key == "arcoforge" and res.ok:
                results[("arcoforge-append", fmt)] = _appends(out, tag, fmt, args, archive, pythons)
            if not args.keep_output:
                shutil.rmtree(out, ignore_errors=True)
    return results


def _appends(out: Path, tag: str, fmt: str, args, archive, pythons) -> list[RunResult]:
    """Append APPEND_FILES files to arcoforge's fresh full build, ``--append-repeat`` times,
    each to a copy of the full build (kept aside): an append lasts a fraction of a second,
    and a few runs of it give a median that one busy moment of the machine does not move."""
    snapshot = out.with_name(out.name + "-full")
    shutil.rmtree(snapshot, ignore_errors=True)
    shutil.copytree(out, snapshot)

    def reset():
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(snapshot, out)

    found = []
    for i in range(args.append_repeat):
        res = measured(
            ARCOFORGE,
            pythons["arcoforge"],
            archive.all_list,
            out,
            f"{tag}-{i}",
            fmt,
            args,
            True,
            reset,
        )
        res.key = "arcoforge-append"
        found.append(check(res, archive, len(archive.paths)))
    shutil.rmtree(snapshot, ignore_errors=True)
    return found


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render_only:
        print(rerender(args))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    WORK.mkdir(parents=True, exist_ok=True)
    run.compile_bytecode()
    pythons = {k: Path(sys.executable) for k in ALL}
    if args.arcoforge_python is not None:
        pythons["arcoforge"] = args.arcoforge_python.absolute()
    archive = get_archive(args.files)
    log(f"archive: {len(archive.paths)} files, {archive.disk_bytes / MB:.0f} MB on disk")
    skipped = None
    if "arcoforge" in args.keys:
        skipped = arcoforge_ready(pythons["arcoforge"])
        if skipped:
            log(f"arcoforge has no virtual-references API here ({skipped}); running the peers")
            args.keys.remove("arcoforge")

    source = arcoforge_source(pythons["arcoforge"]) if "arcoforge" in args.keys else None
    runs: dict[tuple[str, str], list[RunResult]] = {}
    for rep in range(args.repeat):
        for k, found in run_round(rep, args, archive, pythons).items():
            runs.setdefault(k, []).extend(found)
        rows = _rows(runs, args, skipped)  # written after every round: a long run keeps
        table = report(rows, args, archive, skipped, source, rep + 1)  # what it has measured
    print(table)
    return 0 if all(r.ok for r in rows) else 1


def report(rows, args, archive, skipped, source, rounds: int) -> str:
    """Render, write results-virtual.md and .work/results-virtual.json; the table."""
    table, targets = render(rows, args, archive)
    if rounds < args.repeat:
        table = table.replace(
            f"median of {args.repeat} run(s)", f"median of {rounds} of {args.repeat} run(s) so far"
        )
    if skipped:
        table += f"\narcoforge was not measured: {skipped}\n"
    if source:
        table += f"\narcoforge measured: {source}.\n"
    (BENCH / "results-virtual.md").write_text(table)
    _write_json(args, archive, rows, targets, {"skipped": skipped, "source": source})
    return table


def rerender(args: argparse.Namespace) -> str:
    """The table of the last run, rendered again from its JSON (and written again)."""
    data = json.loads((WORK / "results-virtual.json").read_text())
    fields = {f.name for f in dataclasses.fields(RunResult)}
    runs = {
        (r["key"], r["format"]): [
            RunResult(**{k: v for k, v in x.items() if k in fields}) for x in r["runs"]
        ]
        for r in data["rows"]
    }
    args.formats = list(dict.fromkeys(r["format"] for r in data["rows"]))
    args.repeat = int(data["args"]["repeat"])
    args.append_repeat = int(data["args"].get("append_repeat", 1))
    files = data["archive"]["files"]
    paths = [Path()] * (files + APPEND_FILES)
    archive = VArchive(files, paths, Path(), Path(), Path(), data["archive"]["bytes"])
    skipped, source = data.get("arcoforge_skipped"), data.get("arcoforge_source")
    previous = BENCH / "results-virtual.md"
    if source is None and previous.exists():  # a JSON of an older harness: keep the .md's
        said = [
            ln for ln in previous.read_text().splitlines() if ln.startswith("arcoforge measured: ")
        ]
        source = said[0].removeprefix("arcoforge measured: ").rstrip(".") if said else None
    rounds = min(len(v) for v in runs.values())
    return report(_rows(runs, args, skipped), args, archive, skipped, source, rounds)


def _rows(runs: dict, args: argparse.Namespace, skipped: str | None) -> list[Row]:
    labels = {k: c.label for k, c in ALL.items()}
    labels["arcoforge-append"] = f"arcoforge: append {APPEND_FILES} files"
    order = ["arcoforge", "arcoforge-append", "kerchunk", "virtualizarr"]
    rows = []
    for fmt in args.formats:
        for key in order:
            if (key, fmt) in runs:
                rows.append(Row(key, labels[key], fmt, runs[(key, fmt)]))
            elif key == "arcoforge" and skipped:
                rows.append(Row(key, labels[key], fmt, [RunResult(key, False, error=skipped)]))
    return rows


def _write_json(args, archive: VArchive, rows: list[Row], targets: list, arcoforge: dict) -> None:
    payload = {
        "arcoforge_source": arcoforge["source"],
        "arcoforge_skipped": arcoforge["skipped"],
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "args": {k: str(v) for k, v in vars(args).items()},
        "archive": {"files": archive.files, "append": APPEND_FILES, "bytes": archive.disk_bytes},
        "rows": [
            {
                "key": r.key,
                "format": r.fmt,
                "ok": r.ok,
                "wall_s": r.median("seconds"),
                "process_wall_s": r.median("process_seconds"),
                "peak_rss_bytes": r.median("peak_rss"),
                "runs": [dataclasses.asdict(x) for x in r.runs],
            }
            for r in rows
        ],
        "targets": targets,
    }
    (WORK / "results-virtual.json").write_text(json.dumps(payload, indent=2, default=str))
    log(f"wrote {BENCH / 'results-virtual.md'} and {WORK / 'results-virtual.json'}")


if __name__ == "__main__":
    sys.exit(main())
