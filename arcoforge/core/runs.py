"""Run records: what every bake read, wrote, spent and met, kept beside its output and in
a local state folder, with every secret masked."""

from __future__ import annotations

import json
import os
import platform
import re
import secrets
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from arcoforge.core.ledger import put
from arcoforge.core.progress import Reporter
from arcoforge.errors import ArcoforgeError, one_line
from arcoforge.sources.cache import Cache
from arcoforge.sources.secrets import redact, secret_values

Status = Literal["running", "succeeded", "failed", "interrupted"]
RUNS_FOLDER = ".arcoforge-runs"
LIBRARIES = (
    "arcoforge",
    "xarray",
    "zarr",
    "numpy",
    "numcodecs",
    "fsspec",
    "pandas",
    "netCDF4",
    "h5netcdf",
    "h5py",
    "cfgrib",
    "eccodes",
    "dask",
    "distributed",
    "pyspark",
    "apache-beam",
    "icechunk",
    "kerchunk",
    "virtualizarr",
)


class Inputs(BaseModel):
    """The inputs of a bake."""

    count: int
    bytes: int | None = None
    first: str | None = None
    last: str | None = None


class Output(BaseModel):
    """A store a bake wrote."""

    url: str
    dims: dict[str, int] = {}
    chunks: dict[str, int] = {}
    bytes_stored: int | None = None


class RunRecord(BaseModel):
    """One bake: what it read and wrote, how long each stage took, how it ended."""

    id: str
    status: Status = "running"
    recipe: str | None = None
    store: str
    feedstock: str | None = None
    args: list[str] = []
    target: str
    inputs: Inputs
    outputs: list[Output] = []
    stage_seconds: dict[str, float] = {}
    seconds: float | None = None
    retries: int = 0  # download retries, as counted by the cache
    failures: list[str] = []
    changed_inputs: list[str] = []  # inputs that changed since the store was baked
    stats: dict[str, Any] = {}
    validation: dict[str, Any] | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    by: str | None = None  # who ran it: see runner()
    started: datetime
    ended: datetime | None = None


@dataclass(frozen=True)
class RunContext:
    """What the caller of a bake knows that its plan does not."""

    recipe_id: str | None = None
    feedstock: str | None = None
    args: tuple[str, ...] = ()
    run_id: str | None = None  # the id its events carry already (see progress.JsonReporter)


def new_id(now: datetime | None = None) -> str:
    """A time-sortable id: ``20261125T081500Z-1a2b3c``."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def state_dir() -> Path:
    """Where this machine keeps run records: ``$ARCOFORGE_STATE_DIR/runs``, else
    ``$XDG_STATE_HOME/arcoforge/runs`` (``~/.local/state/arcoforge/runs``)."""
    root = os.environ.get("ARCOFORGE_STATE_DIR")
    if root:
        return Path(root).expanduser() / "runs"
    xdg = os.environ.get("XDG_STATE_HOME") or "~/.local/state"
    return Path(xdg).expanduser() / "arcoforge" / "runs"


def versions() -> dict[str, str]:
    """Python and the versions of the installed libraries a bake may use: read from the
    names of their ``.dist-info`` folders (one listing of each folder on the path, not
    ``importlib.metadata``'s parse of each library's metadata), else from their metadata."""
    found = {"python": platform.python_version()}
    listed = _dist_info_versions()
    for name in LIBRARIES:
        version = listed.get(_normalized(name))
        if version is None:
            with suppress(metadata.PackageNotFoundError):
                version = metadata.version(name)
        if version is not None:
            found[name] = version
    return found


def runner() -> str | None:
    """Who runs this bake, as a run record names it: ``ARCOFORGE_RUN_BY`` when set (a
    bakery's name, say), else the actor of a GitHub Actions run; else None. A login or host
    name is never taken on its own: records go beside stores and into public catalogs."""
    if os.environ.get("ARCOFORGE_RUN_BY"):
        return os.environ["ARCOFORGE_RUN_BY"]
    if os.environ.get("GITHUB_ACTIONS") == "true" and os.environ.get("GITHUB_ACTOR"):
        return f"{os.environ['GITHUB_ACTOR']} (GitHub Actions)"
    return None


def _dist_info_versions() -> dict[str, str]:
    """Normalized distribution name -> version, of the ``NAME-VERSION.dist-info`` folders
    on ``sys.path`` (the first of a name wins, as it does for imports)."""
    found: dict[str, str] = {}
    for folder in sys.path:
        with suppress(OSError):
            for entry in os.listdir(folder or "."):
                stem, _, suffix = entry.rpartition(".")
                if suffix == "dist-info" and stem.count("-") == 1:
                    name, version = stem.split("-")
                    found.setdefault(_normalized(name), version)
    return found


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


class Recorder:
    """Keeps the record of one bake up to date; ``reporter`` passes a bake's progress on
    and notes when each stage starts and ends."""

    def __init__(self, plan, reporter: Reporter, context: RunContext | None = None):
        context = context or RunContext()
        self.started, self.since = time.perf_counter(), time.time()
        self.cache = plan.open.fetch.cache
        self.urls = [i.url for i in plan.inputs]
        self.url = plan.url
        self.storage_options = plan.target.storage_options
        target_secrets = secret_values(open_kwargs=plan.target.storage_options)
        self.secrets = (*plan.open.fetch.secrets, *target_secrets)
        self.reporter = _Watcher(reporter, self)
        self.stage: tuple[str, float] | None = None
        inputs = plan.inputs
        self.record = RunRecord(
            id=context.run_id or new_id(),
            recipe=context.recipe_id,
            store=plan.recipe.writer.store_name,
            feedstock=context.feedstock,
            args=list(context.args),
            target=plan.url,
            inputs=Inputs(
                count=len(inputs),
                first=inputs[0].url if inputs else None,
                last=inputs[-1].url if inputs else None,
            ),
            versions=versions(),
            by=runner(),
            started=datetime.now(UTC),
        )

    @property
    def places(self) -> list[tuple[str, dict | None]]:
        """Where the record is written, with the fsspec options of each place: beside the
        output (so that it survives re-bakes without touching the store), and locally."""
        parent = self.url.rstrip("/").rpartition("/")[0]
        name = f"{self.record.id}.json"
        return [
            (f"{parent}/{RUNS_FOLDER}/{name}", self.storage_options),
            (str(state_dir() / name), None),
        ]

    def save(self) -> None:
        """Write the record, secrets masked, atomically to each of its places."""
        data = _redacted(self.record.model_dump(mode="json"), self.secrets)
        body = json.dumps(data, indent=1).encode()
        for url, options in self.places:
            put(url, body, options)

    def finished(self, result):
        """Note what a successful bake produced; return ``result``."""
        self.record.outputs = [
            Output(
                url=result.url,
                dims=result.dims,
                chunks=result.chunks,
                bytes_stored=result.bytes_out,
            )
        ]
        self.record.inputs.count = result.inputs
        self.record.inputs.bytes = result.bytes_in
        stats = {k: v for k, v in result.stats.items() if k != "store_check"}
        self.record.stats = json.loads(json.dumps(stats, default=str))
        self.record.failures += [
            f"{url}: skipped, failed after its retries" for url in stats.get("missing_inputs", ())
        ]
        self.record.changed_inputs = list(stats.get("changed_inputs", ()))
        self.record.validation = {
            "inputs_compared": result.stats.get("validated_inputs", 0),
            "store_check": result.stats.get("store_check"),
        }
        return result

    def end(self, status: Status, failure: str | None = None) -> None:
        """Close the record with ``status`` and write it."""
        if self.stage is not None:
            name, began = self.stage
            self.record.stage_seconds[name] = round(time.perf_counter() - began, 3)
            if failure:
                failure = f"during {name}: {failure}"
        if self.cache:
            self.record.retries = Cache(self.cache).retries(self.urls, self.since)
        self.record.status = status
        self.record.failures += [failure] if failure else []
        self.record.seconds = round(time.perf_counter() - self.started, 3)
        self.record.ended = datetime.now(UTC)
        self.save()


class _Watcher(Reporter):
    def __init__(self, inner: Reporter, recorder: Recorder):
        self.inner, self.recorder = inner, recorder

    def stage_started(self, name: str, total: int, description: str) -> None:
        self.recorder.stage = (name, time.perf_counter())
        self.inner.stage_started(name, total, description)

    def advanced(self, name: str) -> None:
        self.inner.advanced(name)

    def stage_done(self, name: str, seconds: float) -> None:
        self.recorder.stage = None
        self.recorder.record.stage_seconds[name] = round(seconds, 3)
        self.inner.stage_done(name, seconds)

    def event(self, kind: str, **fields: Any) -> None:
        self.inner.event(kind, **fields)

    def close(self) -> None:
        self.inner.close()


@contextmanager
def recorded_run(plan, reporter: Reporter, context: RunContext | None = None) -> Iterator[Recorder]:
    """Record the bake of ``plan`` run in this block: written as running at the start, then
    as succeeded, failed or interrupted at the end (the error re-raised)."""
    recorder = Recorder(plan, reporter, context)
    recorder.save()
    try:
        yield recorder
    except KeyboardInterrupt:
        _end_quietly(recorder, "interrupted", "interrupted (KeyboardInterrupt)")
        raise
    except BaseException as exc:
        _end_quietly(recorder, "failed", one_line(exc))
        raise
    recorder.end("succeeded")


def _end_quietly(recorder: Recorder, status: Status, failure: str) -> None:
    """End a failed run's record without hiding its error behind one of our own."""
    try:
        recorder.end(status, failure)
    except Exception as exc:  # the bake's own error matters more
        print(f"warning: run record not written: {one_line(exc)}", file=sys.stderr)


def _redacted(value: Any, secret_values: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        return redact(value, secret_values)
    if isinstance(value, Mapping):
        return {k: _redacted(v, secret_values) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v, secret_values) for v in value]
    return value


# -- reading records ------------------------------------------------------------------


def list_runs(limit: int | None = None, folder: Path | None = None) -> list[RunRecord]:
    """The records in the state folder, newest first."""
    folder = folder or state_dir()
    found = [read_run(p) for p in folder.glob("*.json")] if folder.is_dir() else []
    return sorted(found, key=lambda r: (r.started, r.id), reverse=True)[:limit]


def read_run(path: Path) -> RunRecord:
    """One record file."""
    try:
        return RunRecord.model_validate_json(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ArcoforgeError(f"{path}: not a run record ({one_line(exc)})") from exc


def find_run(prefix: str, folder: Path | None = None) -> RunRecord:
    """The record whose id starts with ``prefix``; one-line errors if none or several do."""
    folder = folder or state_dir()
    paths = folder.glob("*.json") if prefix and folder.is_dir() else []
    matches = sorted(p for p in paths if p.stem.startswith(prefix))
    if not matches:
        raise ArcoforgeError(f"no run {prefix!r} in {folder}")
    if len(matches) > 1:
        ids = ", ".join(p.stem for p in matches[:3])
        raise ArcoforgeError(f"run {prefix!r} is ambiguous: {len(matches)} runs match ({ids}...)")
    return read_run(matches[0])
