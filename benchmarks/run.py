"""arcoforge benchmark harness: bake one OISST-like archive with arcoforge and its peers.

    python benchmarks/run.py [--repeat 3] [--scale 5] [--quick]

Each contestant runs as its own subprocess (see benchmarks/contestants/); this process
polls the RSS of the contestant's whole process tree with psutil every ~50 ms (PSS every
0.5 s; polling takes at most ~1/20 of a CPU), verifies
the output after the run (outside the timed part) and prints a markdown table, which it
also writes to benchmarks/results.md (JSON: benchmarks/.work/results.json).
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
WORK = BENCH / ".work"
VENVS = BENCH / ".venvs"
CONTESTANTS_DIR = BENCH / "contestants"
PGF_REQUIREMENTS = BENCH / "requirements-pgf.txt"
PGF_CONSTRAINTS = BENCH / "constraints-pgf.txt"

DATA_VARS = ("sst", "anom", "err", "ice")
EXPECTED_CODEC = "blosc/zstd/3/shuffle"
TIME_CHUNK = 30
POLL_SECONDS = 0.05
PSS_SECONDS = 0.5  # PSS is read this often (a costly read)
MB = 1e6

# Targets (ratios are contestant / arcoforge).
TARGET_SPEEDUP = {"pgf": 4.0, "xarray_dask": 3.0}
TARGET_FLOOR_SLOWDOWN = 1.5
TARGET_RSS_FRACTION = 0.25
TARGET_FLATNESS = 0.20
BUSY_WARN = 0.10  # warn when other processes used more than this share of the CPUs
BUSY_RETRY = 0.25  # re-run (--busy-retries times) a run during which others used more
QUIET_WAIT = 60.0  # before each run, wait up to this long for the machine to be that quiet

if str(REPO) not in sys.path:  # arcoforge importable without an install, like its children
    sys.path.insert(0, str(REPO))


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- contestants


@dataclasses.dataclass(frozen=True)
class Contestant:
    key: str
    label: str
    script: str
    output: str  # "zarr" (a store named oisst.zarr) or "chunks" (the floor's chunk files)
    venv: str | None = None  # None: this interpreter (the arcoforge dev venv)
    args: tuple[str, ...] = ()  # more arguments of the script (they win over the common ones)
    defaults: bool = False  # run with its defaults: chunks and codec are its own, not checked


ARCOFORGE = Contestant("arcoforge", "arcoforge (local, 2 workers)", "arcoforge_local.py", "zarr")
PEERS = (
    Contestant("pgf", "pangeo-forge-recipes 0.10.8 + Beam DirectRunner", "pgf.py", "zarr", "pgf"),
    Contestant("xarray_dask", "xarray open_mfdataset + dask.distributed", "xarray_dask.py", "zarr"),
    Contestant("floor", "floor (h5py + numcodecs, Pool(2))", "floor.py", "chunks"),
)
# default against default: each as a user first writes it, its output sizes compared
DEFAULTS = (
    Contestant(
        "arcoforge_defaults",
        "arcoforge, its defaults (local, 2 workers)",
        "arcoforge_local.py",
        "zarr",
        args=("--defaults",),
        defaults=True,
    ),
    Contestant(
        "xarray_threads",
        "xarray open_mfdataset(parallel=True).to_zarr(), dask threads, its defaults but "
        "engine=h5netcdf",
        "xarray_threads.py",
        "zarr",
        defaults=True,
    ),
)
ALL = {c.key: c for c in (ARCOFORGE, *PEERS, *DEFAULTS)}
TABLE_ORDER = ("arcoforge", "pgf", "xarray_dask", "floor", "arcoforge_defaults", "xarray_threads")


# --------------------------------------------------------------------------- pgf venv


def _pgf_stamp() -> str:
    h = hashlib.sha256()
    for path in (PGF_REQUIREMENTS, PGF_CONSTRAINTS):
        h.update(path.read_bytes())
    h.update(platform.python_version().encode())
    return h.hexdigest()[:16]


def ensure_pgf_venv() -> Path:
    """Create benchmarks/.venvs/pgf (python -m venv + pip) unless it is already up to date."""
    venv = VENVS / "pgf"
    python = venv / "bin" / "python"
    stamp = venv / ".arcoforge-bench-stamp"
    want = _pgf_stamp()
    if python.exists() and stamp.exists() and stamp.read_text().strip() == want:
        return python
    log(f"creating the pangeo-forge-recipes venv at {venv} (first use; takes a minute)")
    shutil.rmtree(venv, ignore_errors=True)
    VENVS.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    proc = subprocess.run(
        [*pip, "-r", str(PGF_REQUIREMENTS), "-c", str(PGF_CONSTRAINTS)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.splitlines()[-30:])
        raise RuntimeError(f"pip install into {venv} failed:\n{tail}")
    check = (
        "import apache_beam, pangeo_forge_recipes, zarr, xarray; "
        "assert zarr.__version__.startswith('2.'), zarr.__version__; "
        "print(apache_beam.__version__, pangeo_forge_recipes.__version__, "
        "zarr.__version__, xarray.__version__)"
    )
    out = subprocess.run([str(python), "-c", check], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"the pgf venv does not import:\n{out.stderr[-3000:]}")
    log(f"pgf venv ready: beam, pgf, zarr, xarray = {out.stdout.strip()}")
    stamp.write_text(want + "\n")
    return python


# --------------------------------------------------------------------------- the archive


@dataclasses.dataclass
class Archive:
    days: int
    ny: int
    nx: int
    paths: list[Path]
    paths_file: Path
    input_bytes: int  # uncompressed bytes of the data variables as stored (int16)
    disk_bytes: int


def _generator_version() -> str:
    from arcoforge.testing import archives

    return hashlib.sha256(Path(archives.__file__).read_bytes()).hexdigest()[:10]


def get_archive(days: int, ny: int, nx: int) -> Archive:
    """Generate (once) and return the archive; cached under .work/ keyed by size + generator."""
    from arcoforge.testing.archives import write_oisst_archive

    root = WORK / "archives" / f"oisst-{days}d-{ny}x{nx}-{_generator_version()}"
    marker = root / "COMPLETE"
    if not marker.exists():
        log(f"generating the {days}-day {ny}x{nx} archive in {root} (cached for re-runs)")
        for stale in root.parent.glob(f"oisst-{days}d-{ny}x{nx}-*"):  # older generator versions
            shutil.rmtree(stale, ignore_errors=True)
        t0 = time.perf_counter()
        paths = write_oisst_archive(root / "files", days=days, ny=ny, nx=nx)
        names = [Path(p).name for p in sorted(paths)]
        marker.write_text("\n".join(names) + "\n")
        log(f"generated {len(names)} files in {time.perf_counter() - t0:.1f} s")
    paths = [root / "files" / name for name in marker.read_text().split()]
    paths_file = root / "paths.txt"
    paths_file.write_text("\n".join(str(p) for p in paths) + "\n")

    import h5py

    with h5py.File(paths[0], "r") as f:
        per_file = sum(f[v].size * f[v].dtype.itemsize for v in DATA_VARS)
    return Archive(
        days=days,
        ny=ny,
        nx=nx,
        paths=paths,
        paths_file=paths_file,
        input_bytes=per_file * len(paths),
        disk_bytes=sum(p.stat().st_size for p in paths),
    )


def warm_page_cache(archive: Archive) -> None:
    """Read every file once so that every contestant starts from the same (warm) cache."""
    for p in archive.paths:
        with open(p, "rb") as fh:
            while fh.read(1 << 24):
                pass


def compile_bytecode() -> None:
    """Compile the work tree's arcoforge to bytecode, as installing a package does: run from
    an editable install with PYTHONDONTWRITEBYTECODE set, every run would compile each module
    it imports again (about 5 ms a module), which no installed copy pays."""
    import compileall

    compileall.compile_dir(REPO / "arcoforge", quiet=1)


# --------------------------------------------------------------------------- measuring


def _poll_session(
    psutil, session_leader: int, cpu: dict[int, float], with_pss: bool
) -> tuple[int, int, int]:
    """Sums of RSS and (``with_pss``, else 0) of PSS over every process in the contestant's
    session (children, grandchildren and any that were re-parented) and how many there are;
    records each one's CPU seconds in ``cpu`` (pid -> user + system, last seen)."""
    rss = pss = count = 0
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.info["pid"]) != session_leader:
                continue
            with p.oneshot():
                # PSS walks every page of the process (smaps_rollup): milliseconds for a
                # process of a GB, so it is read less often than RSS
                mem = p.memory_full_info() if with_pss else p.memory_info()
                times = p.cpu_times()
            rss += mem.rss
            pss += getattr(mem, "pss", 0)
            cpu[p.info["pid"]] = times.user + times.system
            count += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError, PermissionError):
            continue
    return rss, pss, count


def _host_busy_seconds(psutil) -> float:
    t = psutil.cpu_times()
    return (
        sum(t)
        - t.idle
        - getattr(t, "iowait", 0.0)
        - getattr(t, "guest", 0.0)
        - getattr(t, "guest_nice", 0.0)
    )


@dataclasses.dataclass
class RunResult:
    key: str
    ok: bool
    seconds: float | None = None  # timed bake section reported by the contestant
    process_seconds: float | None = None  # whole subprocess incl. interpreter start + imports
    peak_rss: int | None = None
    peak_pss: int | None = None  # same, PSS (shared pages split between their processes)
    max_processes: int = 0
    samples: int = 0
    mean_poll_ms: float | None = None
    cpu_seconds: float | None = None  # CPU used by the contestant's processes (as last seen)
    foreign_cpu_share: float | None = None  # other processes' CPU / (process wall x CPUs)
    output_bytes: int | None = None
    verify: dict | None = None
    notes: dict | None = None
    error: str | None = None
    log: str | None = None
    busy_retries: int = 0  # how often this run was repeated because the machine was busy


def wait_for_quiet(max_wait: float) -> None:
    """Wait (up to ``max_wait`` s) until other processes use under BUSY_WARN of the CPUs over
    one second, so that a contestant does not start while the machine is busy."""
    import psutil

    deadline = time.monotonic() + max_wait
    while True:
        busy0, t0 = _host_busy_seconds(psutil), time.monotonic()
        time.sleep(1.0)
        share = (_host_busy_seconds(psutil) - busy0) / (
            (time.monotonic() - t0) * (os.cpu_count() or 1)
        )
        if share < BUSY_WARN:
            return
        if time.monotonic() > deadline:
            log(f"the machine is still {share:.0%} busy after waiting {max_wait:.0f} s; going on")
            return


def measure(
    key: str,
    cmd: list[str],
    env: dict[str, str],
    log_path: Path,
    result_path: Path,
    timeout: float,
    quiet_wait: float,
) -> RunResult:
    """Run ``cmd`` in its own session (cwd .work/) and poll its process tree's RSS, PSS and CPU
    every POLL_SECONDS.  ``ok`` is True when it exited 0 and wrote ``result_path``; the caller
    reads that file and verifies the output.  Used by every benchmark script of benchmarks/."""
    import psutil

    wait_for_quiet(quiet_wait)
    peak = peak_pss = samples = max_procs = 0
    poll_time = 0.0
    cpu: dict[int, float] = {}
    busy0 = _host_busy_seconds(psutil)
    t0 = time.perf_counter()
    with open(log_path, "wb") as fh:
        proc = subprocess.Popen(
            cmd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(WORK),
            start_new_session=True,
        )
        timed_out = False
        try:
            last_pss = 0.0
            while proc.poll() is None:
                p0 = time.perf_counter()
                with_pss = p0 - last_pss >= PSS_SECONDS
                rss, pss, n = _poll_session(psutil, proc.pid, cpu, with_pss)
                last_pss = p0 if with_pss else last_pss
                poll_time += time.perf_counter() - p0
                peak, peak_pss = max(peak, rss), max(peak_pss, pss)
                max_procs, samples = max(max_procs, n), samples + 1
                if time.perf_counter() - t0 > timeout:
                    timed_out = True
                    break
                # polling takes at most about 1/20 of a CPU, however long a poll takes
                spent = time.perf_counter() - p0
                time.sleep(max(POLL_SECONDS - spent, 19 * spent))
            wall = time.perf_counter() - t0
            busy = _host_busy_seconds(psutil) - busy0
        finally:
            # End whatever is left of the contestant's own session (the process group of the
            # child this function started), also on Ctrl-C.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM if proc.returncode == 0 else signal.SIGKILL)
            proc.wait()
    res = RunResult(
        key=key,
        ok=False,
        process_seconds=wall,
        peak_rss=peak,
        peak_pss=peak_pss,
        max_processes=max_procs,
        samples=samples,
        mean_poll_ms=1000 * poll_time / max(samples, 1),
        log=str(log_path),
        cpu_seconds=sum(cpu.values()),
        foreign_cpu_share=max(0.0, busy - sum(cpu.values())) / (wall * (os.cpu_count() or 1)),
    )
    if res.foreign_cpu_share > BUSY_WARN:
        log(
            f"WARNING: other processes used {res.foreign_cpu_share:.0%} of the CPUs while "
            f"{key} ran; its numbers are inflated (use --repeat 3 and/or a quiet machine)"
        )
    if timed_out or proc.returncode != 0 or not result_path.exists():
        why = f"timed out after {timeout:.0f} s" if timed_out else f"exit code {proc.returncode}"
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        res.error = why + ": " + " | ".join(line.strip() for line in tail)[-1500:]
        log(f"{key} FAILED ({why}); log: {log_path}")
        return res
    res.ok = True
    return res


def judge(res: RunResult, verify_output: Callable[[], dict]) -> None:
    """Verify a run's output and set ``res.verify``, ``ok`` and ``error`` from it."""
    try:
        res.verify = verify_output()
    except Exception as exc:  # verification must never pass silently
        res.verify = {"ok": False, "problems": [f"verification raised {exc!r}"]}
    res.ok = bool(res.verify["ok"])
    if not res.ok:
        res.error = "verification failed: " + "; ".join(res.verify["problems"])[:1500]


def run_contestant(
    c: Contestant, python: Path, archive: Archive, tag: str, args: argparse.Namespace
) -> RunResult:
    out = WORK / "out" / f"{c.key}-{tag}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    logs = WORK / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{c.key}-{tag}.log"
    result_path = WORK / "logs" / f"{c.key}-{tag}.result.json"
    result_path.unlink(missing_ok=True)
    cmd = [
        str(python),
        str(CONTESTANTS_DIR / c.script),
        "--paths-file",
        str(archive.paths_file),
        "--out",
        str(out),
        "--result",
        str(result_path),
        "--workers",
        str(args.workers),
        *c.args,
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if c.venv is None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    else:
        env.pop("PYTHONPATH", None)
        env["VIRTUAL_ENV"] = str(python.parent.parent)

    log(f"running {c.key} on {archive.days} days ...")
    res = measure(c.key, cmd, env, log_path, result_path, args.timeout, args.quiet_wait)
    if not res.ok:
        return res
    reported = json.loads(result_path.read_text())
    res.seconds = reported.pop("seconds")
    res.notes = reported
    res.output_bytes = _du(out)
    judge(res, lambda: verify(c, out, archive))
    for warning in res.verify.get("warnings", []):
        log(f"WARNING: {c.key}: {warning}")
    for note in res.verify.get("decoding", []):
        log(f"note: {c.key}: {note}")
    log(
        f"{c.key}: {res.seconds:.2f} s timed ({res.process_seconds:.2f} s process), peak RSS "
        f"{res.peak_rss / MB:.0f} MB over {res.max_processes} processes, output {res.output_bytes / MB:.0f} MB, "
        f"verify {'ok' if res.ok else 'FAILED'}"
    )
    return res


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- verification


def _source_points(archive: Archive, var: str, t, y, x):
    """Decoded float32 source values at points (t, y, x), read straight with h5py."""
    import h5py
    import numpy as np

    out = np.empty(len(t), dtype=np.float32)
    for i, (ti, yi, xi) in enumerate(zip(t, y, x, strict=True)):
        with h5py.File(archive.paths[ti], "r") as f:
            ds = f[var]
            raw = ds[0, yi, xi]
            scale = np.asarray(ds.attrs.get("scale_factor", 1.0), np.float32).reshape(-1)[0]
            offset = np.asarray(ds.attrs.get("add_offset", 0.0), np.float32).reshape(-1)[0]
            fill = ds.attrs.get("_FillValue")
            value = np.float32(raw) * scale + offset
            if fill is not None and raw == np.asarray(fill).reshape(-1)[0]:
                value = np.float32("nan")
            out[i] = value
    return out


def _sample_points(archive: Archive, var: str, n: int = 24):
    """Random points plus first/last day, with at least one fill and one valid source value."""
    import h5py
    import numpy as np

    rng = np.random.default_rng([zlib.crc32(var.encode()), archive.days])
    t = [*list(rng.integers(0, archive.days, n - 4)), 0, archive.days - 1]
    y = [*list(rng.integers(0, archive.ny, n - 4)), 0, archive.ny - 1]
    x = [*list(rng.integers(0, archive.nx, n - 4)), archive.nx - 1, 0]
    with h5py.File(archive.paths[0], "r") as f:
        raw = f[var][0]
        fill = np.asarray(f[var].attrs.get("_FillValue", -999)).reshape(-1)[0]
    for want_fill in (True, False):
        ys, xs = np.nonzero((raw == fill) if want_fill else (raw != fill))
        if len(ys):
            k = int(rng.integers(0, len(ys)))
            t.append(int(rng.integers(0, archive.days)))
            y.append(int(ys[k]))
            x.append(int(xs[k]))
    return np.array(t), np.array(y), np.array(x)


def _expected_times(archive: Archive):
    import h5py
    import numpy as np

    values = []
    for p in archive.paths:
        with h5py.File(p, "r") as f:
            units = f["time"].attrs["units"]
            units = units.decode() if isinstance(units, bytes) else str(units)
            values.extend(np.asarray(f["time"][:], dtype=np.float64).tolist())
    step, _, origin = units.partition(" since ")
    assert step == "days", units
    base = np.datetime64(origin.strip().replace(" ", "T"), "ns")
    return base + (np.asarray(values) * 86400e9).round().astype("timedelta64[ns]")


def _source_schema(archive: Archive) -> dict:
    """Each variable of the first source as xarray decodes it with its default engine: dims,
    decoded dtype, the stored dtype and packing, and the values of those not along time."""
    import xarray as xr

    with xr.open_dataset(archive.paths[0]) as ds:
        return {
            name: {
                "dims": var.dims,
                "dtype": var.dtype,
                "stored": var.encoding.get("dtype"),
                "packing": {k: var.encoding.get(k) for k in ("scale_factor", "add_offset")},
                "values": None if "time" in var.dims else var.values,
            }
            for name, var in ds.variables.items()
        }


def _packed_alike(var, want: dict) -> bool:
    """The store keeps the source's stored dtype and its scale_factor/add_offset (as float32)."""
    import numpy as np

    if want["stored"] is None or var.encoding.get("dtype") != want["stored"]:
        return False
    return all(
        (value is None) == (var.encoding.get(key) is None)
        and (value is None or np.float32(var.encoding[key]) == np.float32(value))
        for key, value in want["packing"].items()
    )


def _check_schema(ds, archive: Archive, problems: list[str], notes: list[str]) -> None:
    """Every source variable is in the store with xarray's dims and decoded dtype for the
    source, and the coordinates not along time hold the source's values.  One difference is
    noted, not a failure: a store that keeps the source's packing (int16 with a float32
    scale_factor) but decodes to float64, since Zarr's JSON attributes do not keep
    scale_factor's float32 type and xarray's CF decoding then picks float64 (xarray's own
    ``to_zarr`` of these files does the same)."""
    import numpy as np

    widened = []
    for name, want in _source_schema(archive).items():
        if name not in ds.variables:
            problems.append(f"{name} missing")
            continue
        var = ds.variables[name]
        if var.dims != want["dims"]:
            problems.append(f"{name}: dims {var.dims}, xarray reads the source's as {want['dims']}")
        if var.dtype == np.float64 and want["dtype"] == np.float32 and _packed_alike(var, want):
            widened.append(name)
        elif var.dtype != want["dtype"]:
            problems.append(
                f"{name}: decoded {var.dtype}, xarray decodes the source's as {want['dtype']}"
            )
        if want["values"] is not None and not np.array_equal(var.values, want["values"]):
            problems.append(f"{name}: values differ from the source")
    if widened:
        notes.append(
            f"{', '.join(widened)} decoded float64 by xarray, the sources float32 (their "
            "packing is kept; Zarr's JSON attributes lose scale_factor's float32 type)"
        )


def verify(c: Contestant, out: Path, archive: Archive) -> dict:
    if c.output == "zarr":
        return _verify_zarr(out / "oisst.zarr", archive, layout=not c.defaults)
    return _verify_chunks(out, archive)


def _close(actual, expected) -> bool:
    import numpy as np

    return bool(np.allclose(actual, expected, rtol=1e-6, atol=1e-6, equal_nan=True))


def _enum_value(x):
    return getattr(x, "value", x)


def _codec_summary(compressors) -> str:
    """'blosc/zstd/3/shuffle' for numcodecs' Blosc and zarr v3's BloscCodec alike."""
    parts = []
    for c in compressors:
        name = getattr(c, "codec_id", None) or type(c).__name__.lower().removesuffix("codec")
        if name == "blosc":
            shuffle = _enum_value(c.shuffle)
            shuffle = {0: "noshuffle", 1: "shuffle", 2: "bitshuffle"}.get(shuffle, shuffle)
            parts.append(f"blosc/{_enum_value(c.cname)}/{c.clevel}/{shuffle}")
        else:
            parts.append(name)
    return "+".join(parts) or "none"


def _verify_zarr(store: Path, archive: Archive, layout: bool = True) -> dict:
    """The store's variables, dims, decoded dtypes, values and times are the archive's as
    xarray reads it; with ``layout``, its chunks and codec are the ones every contestant is
    given too."""
    import numpy as np
    import xarray as xr
    import zarr

    problems: list[str] = []
    info: dict = {"vars": {}}
    shape = (archive.days, archive.ny, archive.nx)
    group = zarr.open_group(str(store), mode="r")
    info["zarr_format"] = group.metadata.zarr_format
    with warnings.catch_warnings():  # "no consolidated metadata" is not our business here
        warnings.simplefilter("ignore", RuntimeWarning)
        ds = xr.open_zarr(str(store), consolidated=None, chunks=None)
    _check_schema(ds, archive, problems, info.setdefault("decoding", []))
    for var in DATA_VARS:
        if var not in ds:  # reported by _check_schema
            continue
        arr = group[var]
        vinfo = {
            "stored_dtype": str(arr.dtype),
            "decoded_dtype": str(ds[var].dtype),
            "chunks": list(arr.chunks),
            "compressors": [repr(x) for x in getattr(arr, "compressors", ())],
            "codec": _codec_summary(getattr(arr, "compressors", ())),
        }
        info["vars"][var] = vinfo
        if layout and arr.dtype != np.float32:
            problems.append(f"{var} stored as {arr.dtype}, not float32 like every contestant")
        if layout and vinfo["codec"] != EXPECTED_CODEC:
            info.setdefault("warnings", []).append(
                f"{var} compressed with {vinfo['codec']}, not {EXPECTED_CODEC}"
            )
        if ds[var].dims != ("time", "lat", "lon") or tuple(arr.shape) != shape:
            problems.append(f"{var}: dims {ds[var].dims} shape {arr.shape}, want {shape}")
            continue
        if layout and tuple(arr.chunks) != (min(TIME_CHUNK, archive.days), archive.ny, archive.nx):
            problems.append(f"{var}: chunks {arr.chunks}")
        if arr.nchunks_initialized != arr.nchunks:
            problems.append(f"{var}: only {arr.nchunks_initialized}/{arr.nchunks} chunks written")
        t, y, x = _sample_points(archive, var)
        expected = _source_points(archive, var, t, y, x)
        actual = (
            ds[var]
            .isel(
                time=xr.DataArray(t, dims="p"),
                lat=xr.DataArray(y, dims="p"),
                lon=xr.DataArray(x, dims="p"),
            )
            .values
        )
        if not _close(actual, expected):
            bad = int((~np.isclose(actual, expected, rtol=1e-6, atol=1e-6, equal_nan=True)).sum())
            problems.append(f"{var}: {bad}/{len(t)} sampled values differ from the source")
        vinfo["points_checked"] = len(t)
    if "time" in ds.coords:
        got = np.asarray(ds["time"].values).astype("datetime64[ns]")
        if got.shape != (archive.days,) or not (got == _expected_times(archive)).all():
            problems.append("time coordinate differs from the source")
    else:
        problems.append("time coordinate missing")
    return {"ok": not problems, "problems": problems, **info}


def _verify_chunks(out: Path, archive: Archive) -> dict:
    import numpy as np
    from numcodecs import Blosc

    problems: list[str] = []
    codec = Blosc(cname="zstd", clevel=3, shuffle=Blosc.SHUFFLE)
    nchunks = -(-archive.days // TIME_CHUNK)
    for var in DATA_VARS:
        files = [out / var / f"{k}.0.0" for k in range(nchunks)]
        missing = [f.name for f in files if not f.is_file() or f.stat().st_size == 0]
        if missing:
            problems.append(f"{var}: chunk files missing {missing}")
            continue
        t, y, x = _sample_points(archive, var)
        k = int(t[0]) // TIME_CHUNK  # decode one chunk per variable and check the points in it
        keep = (t // TIME_CHUNK) == k
        t, y, x = t[keep], y[keep], x[keep]
        n = min(TIME_CHUNK, archive.days - k * TIME_CHUNK)
        data = np.frombuffer(codec.decode(files[k].read_bytes()), dtype=np.float32)
        if data.size != n * archive.ny * archive.nx:
            problems.append(f"{var}: chunk {k} has {data.size} values")
            continue
        data = data.reshape(n, archive.ny, archive.nx)
        if not _close(data[t - k * TIME_CHUNK, y, x], _source_points(archive, var, t, y, x)):
            problems.append(f"{var}: sampled values differ from the source")
    return {"ok": not problems, "problems": problems, "format": "raw Blosc chunk files"}


# --------------------------------------------------------------------------- reporting


@dataclasses.dataclass
class Row:
    key: str
    label: str
    days: int
    runs: list[RunResult]
    input_bytes: int

    @property
    def good(self) -> list[RunResult]:
        return [r for r in self.runs if r.ok]

    @property
    def ok(self) -> bool:
        return bool(self.runs) and len(self.good) == len(self.runs)

    @property
    def seconds(self) -> float | None:
        return statistics.median(r.seconds for r in self.good) if self.ok else None

    @property
    def process_seconds(self) -> float | None:
        return statistics.median(r.process_seconds for r in self.good) if self.ok else None

    @property
    def rss(self) -> float | None:
        return statistics.median(r.peak_rss for r in self.good) if self.ok else None

    @property
    def output(self) -> float | None:
        """Bytes of the output, median over the runs."""
        return statistics.median(r.output_bytes for r in self.good) if self.ok else None

    @property
    def mbps(self) -> float | None:
        return self.input_bytes / MB / self.seconds if self.ok else None


def _fmt(value, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def _ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def render(rows: list[Row], args, archive: Archive) -> tuple[str, list[dict]]:
    base = next((r for r in rows if r.key == "arcoforge" and r.days == archive.days), None)
    lines = [
        f"## arcoforge benchmark: {archive.days} daily OISST-like files, "
        f"{archive.ny}x{archive.nx}, 4 int16 variables",
        "",
        f"Input: {archive.input_bytes / MB:.1f} MB uncompressed (the data variables' int16 "
        f"bytes as stored), {archive.disk_bytes / MB:.1f} MB on disk. Output: Zarr, time "
        f"chunks of {TIME_CHUNK}, float32, Blosc(zstd, 3, shuffle) (the rows of defaults: "
        "each tool's own). "
        f"{os.cpu_count()} CPUs; median of {args.repeat} run(s); warm page cache.",
        "",
        "| contestant | wall s | MB/s | peak RSS MB | output MB | time ratio vs arcoforge "
        "| RSS ratio vs arcoforge |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    own = next((r for r in rows if r.key == "arcoforge_defaults" and r.days == archive.days), None)
    for row in rows:
        b = own if ALL[row.key].defaults else base  # default rows against arcoforge's defaults
        b_s, b_rss = (b.seconds, b.rss) if b else (None, None)
        label = row.label
        if row.days != archive.days:
            label += f" — {row.days // archive.days}x archive ({row.days} days)"
        if not row.ok:
            reason = next((r.error for r in row.runs if r.error), "did not run")
            reason = reason[:120].replace("|", "/")
            lines.append(f"| {label} | failed: {reason} | | | | | |")
            continue
        lines.append(
            f"| {label} | {row.seconds:.2f} | {row.mbps:.0f} | {row.rss / MB:.0f} | "
            f"{row.output / MB:.1f} | {_fmt(_ratio(row.seconds, b_s), '.2f', 'x')} | "
            f"{_fmt(_ratio(row.rss, b_rss), '.2f', 'x')} |"
        )
    lines += [
        "",
        "wall s: the contestant's timed bake (pipeline/cluster start-up included; interpreter "
        "start-up and imports excluded). MB/s: input uncompressed bytes / wall s. peak RSS: "
        f"sum over the contestant's process tree, polled every {POLL_SECONDS * 1000:.0f} ms. "
        "Ratios: contestant / arcoforge (time ratio > 1: arcoforge is faster); the scaled "
        f"archive's row is compared with arcoforge on {archive.days} days; the rows of "
        "defaults with arcoforge's defaults. output MB: bytes of the store on disk.",
        *_default_against_default(rows, archive),
        "",
        "### Targets",
        "",
    ]
    targets = evaluate_targets(rows, archive)
    for t in targets:
        mark = {True: "met", False: "NOT met", None: "n/a"}[t["met"]]
        lines.append(f"- {t['target']}: {t['measured']} — **{mark}**")
    notes = [
        f"- {row.key} ({row.days} d): process wall {row.process_seconds:.2f} s incl. imports; "
        f"CPU {statistics.median(r.cpu_seconds for r in row.good):.1f} s; "
        f"peak PSS {statistics.median(r.peak_pss for r in row.good) / MB:.0f} MB; "
        f"output {statistics.median(r.output_bytes for r in row.good) / MB:.0f} MB; "
        + _describe_output(row.good[0])
        for row in rows
        if row.ok
    ]
    busy = [
        f"{r.key} ({r.foreign_cpu_share:.0%})"
        for row in rows
        for r in row.runs
        if r.foreign_cpu_share is not None and r.foreign_cpu_share > BUSY_WARN
    ]
    if busy:
        notes.append(
            "- WARNING: other processes used a noticeable share of the CPUs during: "
            + ", ".join(busy)
            + "; those timings are inflated."
        )
    if notes:
        lines += ["", "### Details", "", *notes]
    return "\n".join(lines) + "\n", targets


def _default_against_default(rows: list[Row], archive: Archive) -> list[str]:
    """The default-vs-default line: each as a user first writes it, times and sizes."""
    mine, theirs = (
        next((r for r in rows if r.key == key and r.days == archive.days and r.ok), None)
        for key in ("arcoforge_defaults", "xarray_threads")
    )
    if not (mine and theirs):
        return []
    return [
        "",
        f"Default against default: arcoforge {mine.seconds:.2f} s, {mine.output / MB:.1f} MB; "
        "xarray open_mfdataset(engine='h5netcdf', parallel=True).to_zarr() on dask threads "
        f"{theirs.seconds:.2f} s, {theirs.output / MB:.1f} MB (xarray takes "
        f"{_fmt(_ratio(theirs.seconds, mine.seconds), '.2f', 'x')} arcoforge's time; "
        f"arcoforge's output is {_fmt(_ratio(mine.output, theirs.output), '.2f', 'x')} "
        "xarray's size).",
    ]


def _describe_output(r: RunResult) -> str:
    v = r.verify or {}
    if v.get("vars"):
        sst = v["vars"].get("sst", next(iter(v["vars"].values())))
        text = (
            f"zarr v{v.get('zarr_format')}, sst stored {sst['stored_dtype']} "
            f"(decoded {sst['decoded_dtype']}), chunks {tuple(sst['chunks'])}, "
            f"{sst.get('codec')}; verified ({sst.get('points_checked', 0)} points/variable)"
        )
        if v.get("decoding"):
            text += "; " + "; ".join(v["decoding"])
        if v.get("warnings"):
            text += "; **NOT COMPARABLE: " + "; ".join(v["warnings"]) + "**"
        return text
    return f"{v.get('format', '?')}; verified"


def evaluate_targets(rows: list[Row], archive: Archive) -> list[dict]:
    def find(key, days=archive.days):
        return next((r for r in rows if r.key == key and r.days == days and r.ok), None)

    base = find("arcoforge")
    out = []

    def add(target, measured, met):
        out.append({"target": target, "measured": measured, "met": met})

    for key, want in TARGET_SPEEDUP.items():
        peer = find(key)
        ratio = _ratio(peer.seconds, base.seconds) if peer and base else None
        add(
            f"arcoforge >= {want:g}x faster than {key}",
            _fmt(ratio, ".2f", "x"),
            None if ratio is None else ratio >= want,
        )
    floor = find("floor")
    slow = _ratio(base.seconds, floor.seconds) if floor and base else None
    add(
        f"arcoforge within {TARGET_FLOOR_SLOWDOWN:g}x of the floor",
        f"arcoforge takes {_fmt(slow, '.2f', 'x')} the floor's time",
        None if slow is None else slow <= TARGET_FLOOR_SLOWDOWN,
    )
    for key in ("pgf", "xarray_dask"):
        peer = find(key)
        frac = _ratio(base.rss, peer.rss) if peer and base else None
        add(
            f"arcoforge peak RSS < {TARGET_RSS_FRACTION:g} of {key}'s",
            f"{_fmt(frac, '.3f')} of it",
            None if frac is None else frac < TARGET_RSS_FRACTION,
        )
    big = next((r for r in rows if r.key == "arcoforge" and r.days > archive.days and r.ok), None)
    growth = _ratio(big.rss, base.rss) if big and base else None
    add(
        f"arcoforge peak RSS flat within {TARGET_FLATNESS:.0%} at "
        f"{big.days // archive.days if big else 'N'}x the archive",
        f"{_fmt(growth, '.3f', 'x')} the {archive.days}-day peak",
        None if growth is None else abs(growth - 1) <= TARGET_FLATNESS,
    )
    return out


# --------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeat", type=int, default=1, help="runs per contestant; median (1 or 3)")
    p.add_argument(
        "--scale",
        type=int,
        default=5,
        help="also run arcoforge on an archive this many times longer (default 5; 0 skips)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke check: arcoforge and the floor only, no scaled run",
    )
    p.add_argument("--days", type=int, default=60, help="files (days) in the archive")
    p.add_argument("--ny", type=int, default=720, help="grid rows (lat)")
    p.add_argument("--nx", type=int, default=1440, help="grid columns (lon)")
    p.add_argument("--workers", type=int, default=2, help="workers of every contestant")
    p.add_argument(
        "--only",
        default=None,
        help=f"comma-separated subset of {','.join(ALL)} (for debugging the harness)",
    )
    p.add_argument("--timeout", type=float, default=3600, help="seconds per contestant run")
    p.add_argument(
        "--busy-retries",
        type=int,
        default=1,
        help=f"re-run a run during which other processes used over {BUSY_RETRY * 100:.0f}%% of the "
        "CPUs this many times, keeping the quietest (default 1)",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=QUIET_WAIT,
        help="before each run, wait up to this many seconds for other processes to go idle",
    )
    p.add_argument("--keep-output", action="store_true", help="keep the baked stores in .work/out")
    p.add_argument(
        "--results",
        type=Path,
        default=None,
        help="write results.md and results.json into this folder (default: benchmarks/ and "
        "benchmarks/.work/), leaving the recorded results as they are",
    )
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    # On SIGTERM unwind normally, so that a running contestant's processes are ended too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        import psutil  # noqa: F401
    except ImportError:
        sys.exit("benchmarks/run.py needs psutil in this venv: pip install psutil")

    keys = ["arcoforge", "floor"] if args.quick else list(ALL)
    if args.only:
        wanted = [k.strip() for k in args.only.split(",") if k.strip()]
        unknown = set(wanted) - set(ALL)
        if unknown:
            sys.exit(f"unknown contestants {sorted(unknown)}; choose from {sorted(ALL)}")
        keys = [k for k in keys if k in wanted]
    scale = 0 if args.quick else args.scale
    if "xarray_dask" in keys:
        try:
            import distributed  # noqa: F401
        except ImportError:
            sys.exit(
                "the xarray+dask contestant needs dask.distributed: "
                "pip install 'dask[distributed]' (or pip install -e '.[dask]')"
            )
    WORK.mkdir(parents=True, exist_ok=True)
    compile_bytecode()

    pythons = {k: Path(sys.executable) for k in keys}
    if "pgf" in keys:
        pythons["pgf"] = ensure_pgf_venv()

    archive = get_archive(args.days, args.ny, args.nx)
    log(
        f"archive: {len(archive.paths)} files, {archive.disk_bytes / MB:.0f} MB on disk, "
        f"{archive.input_bytes / MB:.0f} MB uncompressed input"
    )
    big = None
    if scale > 1 and "arcoforge" in keys:
        big = get_archive(args.days * scale, args.ny, args.nx)

    # Run order: the floor, arcoforge, the peers, then arcoforge on the scaled archive;
    # repeats are interleaved so that slow drifts of the machine hit everyone alike.
    order = ("floor", "arcoforge", "xarray_dask", "pgf", "arcoforge_defaults", "xarray_threads")
    jobs = [(ALL[k], archive) for k in order if k in keys]
    if big is not None:
        jobs.append((ARCOFORGE, big))
    runs: dict[tuple[str, int], list[RunResult]] = {}
    for rep in range(args.repeat):
        for c, arch in jobs:
            warm_page_cache(arch)
            tag = f"{arch.days}d-r{rep}"
            res = run_contestant(c, pythons[c.key], arch, tag, args)
            for attempt in range(args.busy_retries):
                if not res.ok or res.foreign_cpu_share <= BUSY_RETRY:
                    break
                log(f"re-running {c.key}: the machine was busy (keeping the quieter run)")
                again = run_contestant(c, pythons[c.key], arch, tag, args)
                again.busy_retries = res.busy_retries = attempt + 1
                if again.ok and again.foreign_cpu_share < res.foreign_cpu_share:
                    res = again
            runs.setdefault((c.key, arch.days), []).append(res)
            if not args.keep_output:
                shutil.rmtree(WORK / "out" / f"{c.key}-{tag}", ignore_errors=True)

    rows = [
        Row(c.key, c.label, arch.days, runs[(c.key, arch.days)], arch.input_bytes)
        for c, arch in sorted(jobs, key=lambda j: (j[1].days, TABLE_ORDER.index(j[0].key)))
    ]

    table, targets = render(rows, args, archive)
    print(table)
    md, out_json = (
        (args.results / "results.md", args.results / "results.json")
        if args.results
        else (BENCH / "results.md", WORK / "results.json")
    )
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(table)
    payload = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "args": vars(args),
        "archive": {
            "days": archive.days,
            "ny": archive.ny,
            "nx": archive.nx,
            "files": len(archive.paths),
            "input_bytes": archive.input_bytes,
            "disk_bytes": archive.disk_bytes,
        },
        "rows": [
            {
                "key": r.key,
                "label": r.label,
                "days": r.days,
                "ok": r.ok,
                "wall_s": r.seconds,
                "process_wall_s": r.process_seconds,
                "mb_per_s": r.mbps,
                "peak_rss_bytes": r.rss,
                "output_bytes": r.output,
                "runs": [dataclasses.asdict(x) for x in r.runs],
            }
            for r in rows
        ],
        "targets": targets,
    }
    out_json.write_text(json.dumps(payload, indent=2, default=str))
    log(f"wrote {md} and {out_json}")
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
