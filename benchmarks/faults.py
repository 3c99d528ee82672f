"""Safety benchmark: bakes under injected faults end with a clean bake's bytes, and a
resume after a kill costs a fraction of a full bake.

    python benchmarks/faults.py [--runs 20] [--repeat 3] [--quick]

1. Fault runs. An OISST-like archive is served on loopback by arcoforge's test server.
   A clean bake gives the reference hashes. Then ``--runs`` bakes each get a seeded mix
   of faults: HTTP 500/503 answers, connection resets, truncated bodies, stalls, and
   kill -9 of the whole bake (process group) at a random moment followed by a re-run, and
   kill -9 of one worker process at a random moment (the bake must finish by itself).
   A run counts when its store's files hash exactly like the clean bake's. Two more runs:
   an input rewritten between two bakes (the second bake must notice it, name it, and end
   with the bytes of a clean bake of the changed archive), and a bake to an S3 target (a
   moto server on loopback) killed while it holds the store's lock (the next bake is
   refused while the lock's heartbeat is fresh, takes the lock over once it is stale, and
   ends with the clean bake's bytes).
2. Resume cost. The benchmark archives of ``run.py`` (60 and 300 days, 720x1440) are
   baked whole, then baked again and killed with SIGKILL once 80% of their write tasks
   are recorded done, then re-run. The ratio of the re-run's wall time to the full bake's is the
   resume cost (target: under 30%). Medians of ``--repeat``.

Results go to stdout as markdown and to benchmarks/results-faults.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
WORK = BENCH / ".work"
sys.path[:0] = [str(REPO), str(BENCH)]

import run as harness  # noqa: E402  (the main harness: archive cache, logging)

from arcoforge.testing.archives import write_oisst_archive  # noqa: E402
from arcoforge.testing.httpserver import Faults, FileServer  # noqa: E402

BAKE = """
import json, sys
from arcoforge import ConcatDim, FilePattern, OpenURLWithFSSpec, OpenWithXarray, StoreToZarr, bake
urls, target, chunk = json.load(open(sys.argv[1])), sys.argv[2], int(sys.argv[3])
options = json.loads(sys.argv[4]) if len(sys.argv) > 4 else None
pattern = FilePattern(lambda time: urls[time], ConcatDim("time", list(range(len(urls))), 1))
recipe = (pattern | OpenURLWithFSSpec(retry_delay=0.05, timeout=2) | OpenWithXarray()
          | StoreToZarr("out.zarr", target_chunks={"time": chunk}))
result = bake(recipe, target, workers=2, storage_options=options)
print(json.dumps({"seconds": result.seconds, "stages": result.stage_seconds, **result.stats}))
"""

KINDS = ("errors", "resets", "truncations", "stalls", "kill", "worker", "mixed")
TARGET_RESUME = 0.30


def bake(
    urls: list[str],
    target: Path,
    chunk: int,
    kill_after: float | None = None,
    kill_when=None,
    kill_worker_after: float | None = None,
    s3: dict | None = None,
    env: dict | None = None,
):
    """Bake in a process group of its own; SIGKILL the group after ``kill_after`` seconds or
    once ``kill_when()`` is true, or one worker process after ``kill_worker_after`` seconds.
    With ``s3`` (storage options), ``target`` is the name of a prefix in its bucket.
    Returns (exit code, wall seconds, stats or None)."""
    listing = WORK / f"{target.name}.urls.json"
    listing.write_text(json.dumps(urls))
    where = f"s3://{BUCKET}/{target.name}" if s3 else str(target)
    args = [sys.executable, "-c", BAKE, str(listing), where, str(chunk)]
    args += [json.dumps(s3)] if s3 else []
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    deadline = t0 + 600
    while proc.poll() is None and time.perf_counter() < deadline:
        due = kill_after is not None and time.perf_counter() - t0 >= kill_after
        if due or (kill_when is not None and kill_when()):
            os.killpg(proc.pid, signal.SIGKILL)
            break
        if kill_worker_after is not None and time.perf_counter() - t0 >= kill_worker_after:
            kill_worker_after = None if _kill_a_worker(proc.pid) else kill_worker_after
        time.sleep(0.01)
    out, err = proc.communicate(timeout=60)
    seconds = time.perf_counter() - t0
    stats = json.loads(out.strip().splitlines()[-1]) if proc.returncode == 0 else None
    if proc.returncode not in (0, -9):
        harness.log(
            f"bake failed: {err.strip().splitlines()[-1] if err.strip() else proc.returncode}"
        )
    return proc.returncode, seconds, stats


def _kill_a_worker(pid: int) -> bool:
    """SIGKILL one worker process of the bake ``pid``, if it has one yet."""
    import psutil

    workers = [p for p in psutil.Process(pid).children() if "python" in p.name()]
    if workers:
        workers[0].send_signal(signal.SIGKILL)
    return bool(workers)


def digest(store: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in store.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(store)).encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def s3_digest(s3: dict, prefix: str) -> str:
    """``digest`` of a store on S3."""
    import s3fs

    fs = s3fs.S3FileSystem(**s3)
    root = f"{BUCKET}/{prefix}"
    h = hashlib.sha256()
    for path in sorted(fs.find(root)):
        h.update(path.removeprefix(root + "/").encode())
        h.update(hashlib.sha256(fs.cat_file(path)).digest())
    return h.hexdigest()


def faults_for(kind: str, seed: int) -> Faults:
    rng = random.Random(seed)
    rate = rng.uniform(0.15, 0.4)
    cap = {"max_faults_per_path": 3, "seed": seed}
    return {
        "errors": Faults(error_rate=rate, **cap),
        "resets": Faults(reset_rate=rate, **cap),
        "truncations": Faults(truncate_rate=rate, **cap),
        "stalls": Faults(error_rate=rate / 2, stall_seconds=0.3, **cap),
        "kill": Faults(),
        "worker": Faults(),
        "mixed": Faults(error_rate=rate / 3, reset_rate=rate / 3, truncate_rate=rate / 3, **cap),
    }[kind]


def fault_runs(n: int, days: int, grid: tuple[int, int], chunk: int) -> list[dict]:
    src = WORK / f"faults-{days}x{grid[0]}x{grid[1]}"
    if not src.exists():
        write_oisst_archive(src, days=days, ny=grid[0], nx=grid[1])
    names = sorted(p.name for p in src.glob("*.nc"))
    rows = []
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        with FileServer(src) as server:
            urls = [f"{server.url}/{name}" for name in names]
            code, clean_seconds, _ = bake(urls, Path(tmp) / "clean", chunk)
            assert code == 0, "the clean bake failed"
            clean_requests = len(server.requests)
            clean = digest(Path(tmp) / "clean" / "out.zarr")
        for i in range(n):
            kind = KINDS[i % len(KINDS)]
            faults = faults_for(kind, seed=i)
            target = Path(tmp) / f"run{i}"
            with FileServer(src, faults=faults) as server:
                urls = [f"{server.url}/{name}" for name in names]
                kill = random.Random(i).uniform(0.15, 0.6) * clean_seconds
                first = bake(
                    urls,
                    target,
                    chunk,
                    kill_after=kill if kind in ("kill", "mixed") else None,
                    kill_worker_after=kill if kind == "worker" else None,
                )
                runs = 1
                if first[0] == -9:
                    first, runs = bake(urls, target, chunk), 2
                store = target / "out.zarr"
                same = first[0] == 0 and store.exists() and digest(store) == clean
                rows.append(
                    {
                        "run": i,
                        "faults": kind,
                        "bakes": runs,
                        "lost": (first[2] or {}).get("worker_losses", 0),
                        "ok": same,
                        "requests": len(server.requests),
                        "clean_requests": clean_requests,
                    }
                )
            harness.log(f"fault run {i}: {kind}, {runs} bake(s), identical={same}")
    return rows


def changed_run(days: int, grid: tuple[int, int], chunk: int) -> dict:
    """Bake, rewrite one input on the server, bake again: the second bake must name it and
    end with the bytes of a clean bake of the changed archive."""
    import xarray as xr

    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        src = Path(tmp) / "src"
        paths = write_oisst_archive(src, days=days, ny=grid[0], nx=grid[1])
        with FileServer(src) as server:
            urls = [f"{server.url}/{p.name}" for p in paths]
            code, full, _ = bake(urls, Path(tmp) / "first", chunk)
            assert code == 0, "the first bake failed"
            changed = paths[len(paths) // 2]
            with xr.open_dataset(changed) as ds:
                new = ds.load()
            new["sst"] = new["sst"] + 1.0
            new.to_netcdf(changed.with_suffix(".tmp"))
            changed.with_suffix(".tmp").replace(changed)
            before = len(server.requests)
            code, again, stats = bake(urls, Path(tmp) / "first", chunk)
            requests = len(server.requests) - before
            assert bake(urls, Path(tmp) / "clean", chunk)[0] == 0, "the clean bake failed"
            expected = [urls[paths.index(changed)]]
        named = (stats or {}).get("changed_inputs", [])
        same = digest(Path(tmp) / "first" / "out.zarr") == digest(Path(tmp) / "clean" / "out.zarr")
    ok = code == 0 and same and named == expected
    harness.log(f"changed input: named {named}, identical={same}, {again:.2f} s of {full:.2f} s")
    return {
        "run": "changed input",
        "ok": ok,
        "named": len(named),
        "full": full,
        "again": again,
        "requests": requests,
        "inputs": len(paths),
    }


BUCKET = "bench"


def lock_kill_run(days: int, grid: tuple[int, int], chunk: int, stale: float = 20.0) -> dict:
    """Kill a bake to S3 while it holds the store's lock; the next bake is refused while the
    lock is fresh and takes it over once it is stale, ending with a clean bake's bytes."""
    import s3fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    s3 = {
        "key": "bench",
        "secret": "bench",
        "client_kwargs": {"endpoint_url": f"http://{host}:{port}", "region_name": "eu-west-1"},
    }
    env = {"ARCOFORGE_LOCK_STALE_SECONDS": str(stale), "ARCOFORGE_LOCK_BEAT_SECONDS": "1"}
    try:
        s3fs.S3FileSystem(**s3).mkdir(BUCKET)
        src = WORK / f"faults-{days}x{grid[0]}x{grid[1]}"
        if not src.exists():
            write_oisst_archive(src, days=days, ny=grid[0], nx=grid[1])
        urls = [str(p) for p in sorted(src.glob("*.nc"))]
        code, full, _ = bake(urls, Path("clean"), chunk, s3=s3, env=env)
        assert code == 0, "the clean bake to S3 failed"
        ledger = f"{BUCKET}/killed/.out.zarr.arcoforge"
        fs = s3fs.S3FileSystem(**s3)

        def writing() -> bool:  # a write task is recorded done: the lock is held mid-bake
            fs.invalidate_cache()
            return bool(fs.find(f"{ledger}/staging/done"))

        bake(urls, Path("killed"), chunk, s3=s3, env=env, kill_when=writing)
        fs.invalidate_cache()
        held = fs.exists(f"{ledger}/lock")
        refused, _, _ = bake(urls, Path("killed"), chunk, s3=s3, env=env)
        time.sleep(stale + 1)
        code, again, _ = bake(urls, Path("killed"), chunk, s3=s3, env=env)
        same = code == 0 and s3_digest(s3, "killed/out.zarr") == s3_digest(s3, "clean/out.zarr")
    finally:
        server.stop()
    ok = held and refused == 1 and same
    harness.log(f"lock kill: lock left {held}, refused {refused == 1}, identical={same}")
    return {
        "run": "S3 lock kill",
        "ok": ok,
        "held": held,
        "refused": refused == 1,
        "full": full,
        "again": again,
    }


def resume_cost(repeat: int, days: int, ny: int, nx: int) -> dict:
    archive = harness.get_archive(days, ny, nx)
    urls = [str(p) for p in archive.paths]
    fulls, resumes, fractions = [], [], []
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        for r in range(repeat):
            full_target = Path(tmp) / f"full{r}"
            code, full, _ = bake(urls, full_target, 10)
            assert code == 0
            total = _tasks(urls, Path(tmp) / "plan")
            target = Path(tmp) / f"killed{r}"
            done_dir = target / ".out.zarr.arcoforge" / "staging" / "done"
            wanted = math.ceil(0.8 * total)
            code, _, _ = bake(
                urls, target, 10, kill_when=lambda d=done_dir, n=wanted: _count(d) >= n
            )
            done = _count(done_dir)
            code, resume, _ = bake(urls, target, 10)
            assert code == 0 and digest(target / "out.zarr") == digest(full_target / "out.zarr")
            fulls.append(full)
            resumes.append(resume)
            fractions.append(done / total)
            harness.log(
                f"resume {r}: full {full:.2f} s, resume {resume:.2f} s after {done}/{total} tasks"
            )
    return {
        "days": days,
        "tasks": total,
        "full": statistics.median(fulls),
        "resume": statistics.median(resumes),
        "killed_at": statistics.median(fractions),
        "ratio": statistics.median(r / f for r, f in zip(resumes, fulls, strict=True)),
    }


def _count(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else 0


def _tasks(urls: list[str], root: Path) -> int:
    from arcoforge import ConcatDim, FilePattern, OpenWithXarray, StoreToZarr
    from arcoforge.products import make_plan
    from arcoforge.zarr.plan import estimate

    pattern = FilePattern(lambda time: urls[time], ConcatDim("time", list(range(len(urls))), 1))
    recipe = pattern | OpenWithXarray() | StoreToZarr("out.zarr", target_chunks={"time": 10})
    plan = make_plan(recipe, str(root), cache=None, workers=2)
    return len(plan.write_tasks(estimate(plan)))


def render(rows: list[dict], costs: list[dict], extra: list[dict]) -> str:
    ok = sum(r["ok"] for r in rows)
    lines = [
        f"## Fault runs: {ok} of {len(rows)} identical to a clean bake (target: all)",
        "",
        f"(a clean bake makes {rows[0]['clean_requests']} requests)" if rows else "",
        "",
        "| run | faults | bakes | workers lost | requests | identical |",
        "| ---: | --- | ---: | ---: | ---: | --- |",
        *(
            f"| {r['run']} | {r['faults']} | {r['bakes']} | {r['lost']} | {r['requests']} | "
            f"{'yes' if r['ok'] else '**no**'} |"
            for r in rows
        ),
        "",
        "## An input changed between bakes; a bake to S3 killed holding its lock",
        "",
        "| run | what was checked | first bake s | next bake s | passed |",
        "| --- | --- | ---: | ---: | --- |",
        *(
            f"| {r['run']} | {_checked(r)} | {r['full']:.2f} | {r['again']:.2f} | "
            f"{'yes' if r['ok'] else '**no**'} |"
            for r in extra
        ),
        "",
        "## Resume after kill -9 at 80% of write tasks (wall time of the whole command)",
        "",
        "| archive | write tasks | killed after | full bake s | resume s | resume / full | target |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
        *(
            f"| {c['days']} days 720x1440 | {c['tasks']} | {c['killed_at']:.0%} | {c['full']:.2f} | "
            f"{c['resume']:.2f} | {c['ratio']:.2f} | < {TARGET_RESUME:.2f}: "
            f"{'met' if c['ratio'] < TARGET_RESUME else 'not met'} |"
            for c in costs
        ),
    ]
    return "\n".join(lines) + "\n"


def _checked(row: dict) -> str:
    if row["run"] == "changed input":
        return (
            f"the re-bake named {row['named']} changed input of {row['inputs']}, fetched "
            f"{row['requests']} files, and equals a clean bake of the changed archive"
        )
    return (
        f"lock left by the killed bake: {'yes' if row['held'] else 'no'}; next bake refused "
        f"while fresh: {'yes' if row['refused'] else 'no'}; taken over once stale, bytes "
        "equal a clean bake's"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=28)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="small archives, few runs")
    args = p.parse_args(argv)
    WORK.mkdir(exist_ok=True)
    if args.quick:
        rows = fault_runs(7, 12, (90, 180), 3)
        extra = [changed_run(12, (90, 180), 3), lock_kill_run(12, (90, 180), 3)]
        costs = [resume_cost(1, 20, 180, 360)]
    else:
        rows = fault_runs(args.runs, 24, (180, 360), 6)
        extra = [changed_run(24, (180, 360), 6), lock_kill_run(24, (180, 360), 6)]
        costs = [resume_cost(args.repeat, days, 720, 1440) for days in (60, 300)]
    text = render(rows, costs, extra)
    print(text)
    (BENCH / "results-faults.md").write_text(text)
    return 0 if all(r["ok"] for r in rows + extra) else 1


if __name__ == "__main__":
    sys.exit(main())
