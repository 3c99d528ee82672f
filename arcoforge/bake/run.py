"""Bake a recipe: run its plan's stages on an engine and report what happened."""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec

from arcoforge.bake.changes import check_inputs
from arcoforge.core.open import cache_for
from arcoforge.core.plan import Plan
from arcoforge.core.progress import Reporter
from arcoforge.core.runs import RunContext, recorded_run
from arcoforge.engines import Engine, get_engine
from arcoforge.errors import TargetError, quietly
from arcoforge.products import make_plan, product_for
from arcoforge.recipe.steps import Recipe
from arcoforge.sources.secrets import remember, secret_values


@dataclass
class BakeResult:
    """What a bake produced and what it cost."""

    url: str
    inputs: int
    dims: dict[str, int]
    chunks: dict[str, int]
    bytes_in: int
    bytes_decoded: int
    bytes_out: int
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def mb_per_s(self) -> float:
        """Decoded megabytes written per second of wall time."""
        return self.bytes_decoded / 1e6 / max(self.seconds, 1e-9)


@quietly
def bake(
    recipe: Recipe,
    target_root: str | os.PathLike,
    *,
    cache: str | None = None,
    workers: int | None = None,
    engine: str | Engine = "local",
    engine_options: dict | None = None,
    prune: int | None = None,
    reporter: Reporter | None = None,
    force: bool = False,
    append: bool = False,
    skip_failed: bool = False,
    retry_failed: bool = False,
    storage_options: dict | None = None,
    run: RunContext | None = None,
    assume_unchanged: bool = False,
) -> BakeResult:
    """Bake ``recipe`` into ``target_root/STORE_NAME`` and return a :class:`BakeResult`.

    A bake that was interrupted resumes where it stopped; a store already baked from the
    same recipe and inputs is left as it is, unless ``force``. What lies at the store's
    name or its staging name that arcoforge did not make is never touched: the bake is
    refused with :class:`~arcoforge.core.ledger.NotOursError` before it writes anything. With
    ``append``, only the inputs the store lacks are baked, and added to it. With
    ``skip_failed``, inputs that still fail after their retries are left as fill values
    and recorded in the store's manifest; ``retry_failed`` later fills them in.
    ``storage_options`` go to fsspec for the target (an object store's endpoint and
    credentials, say). ``engine`` is "local", "dask", "spark" or "beam" (configured by
    ``engine_options``, see :mod:`arcoforge.engines`) or an :class:`Engine`. Every bake leaves a run
    record (see :mod:`arcoforge.core.runs`); ``run`` adds what the caller knows to it.

    Before a store is found up to date or appended to, its inputs are checked for changes
    since it was baked (see :mod:`arcoforge.bake.changes`): what changed inputs feed is baked
    again, a deleted input stops the bake. ``assume_unchanged`` skips the check.

    >>> result = bake(recipe, target_root="out/", workers=2)  # doctest: +SKIP
    >>> result.url
    'out/oisst.zarr'
    """
    if prune:
        recipe = recipe.prune(prune)
    check_root(normalize_root(target_root))
    workers = workers or os.cpu_count() or 1
    reporter = reporter or Reporter()
    with cache_for(recipe, cache) as cache_dir:
        plan = make_plan(
            recipe,
            normalize_root(target_root),
            cache=cache_dir,
            workers=workers,
            storage_options=storage_options,
            skip_failed=skip_failed,
        )
        plan.check_ours()  # before the run record, which goes beside the store
        remember((*plan.open.fetch.secrets, *secret_values(open_kwargs=storage_options)))
        with recorded_run(plan, reporter, run) as record, plan.ledger.lock(record.record.id):
            reporter = record.reporter
            check = None
            if not force:
                check = check_inputs(
                    plan, reporter, append=append, assume_unchanged=assume_unchanged
                )
            run_on = functools.partial(run_with, engine, workers, engine_options, reporter)
            refreshed = run_on(check.plan) if check and check.plan else None
            if append:
                plan = product_for(plan.recipe).append(plan)
            if retry_failed:
                plan = product_for(plan.recipe).retry(plan)
            if not force and not plan.publishing() and plan.up_to_date():
                plan.clear_staging()  # what an interrupted --force left
                result = refreshed
                if result is None:
                    reporter.event("up_to_date", url=plan.url)
                    result = unchanged_result(plan)
            else:
                result = run_on(plan)
            result.stats.update(check.stats if check else {})
            return record.finished(result)


def run_with(
    engine: str | Engine,
    workers: int,
    engine_options: dict | None,
    reporter: Reporter,
    plan: Plan,
) -> BakeResult:
    """Run ``plan`` on ``engine`` (a name, or an :class:`Engine`)."""
    runner = (
        get_engine(engine, workers=workers, **(engine_options or {}))
        if isinstance(engine, str)
        else engine
    )
    if runner.forks:  # (engines with workers of their own warm them up as they start)
        plan.warm_up()
    with runner:
        result = run_plan(plan, runner, reporter)
    if runner.worker_losses:
        result.stats["worker_losses"] = runner.worker_losses
    return result


def run_plan(plan: Plan, engine: Engine, reporter: Reporter) -> BakeResult:
    """Run every stage of ``plan`` on ``engine``."""
    started = time.perf_counter()
    state, timings = engine.run(plan, reporter)
    seconds = time.perf_counter() - started
    return BakeResult(
        url=plan.url,
        inputs=len(plan.inputs),
        **plan.summary(state),
        bytes_out=stored_bytes(plan.url, plan.target.storage_options),
        seconds=seconds,
        stage_seconds=timings,
        stats=state.stats,
    )


def unchanged_result(plan: Plan) -> BakeResult:
    """The result of a bake that found its store up to date."""
    return BakeResult(
        url=plan.url,
        inputs=len(plan.inputs),
        **plan.published_summary(),
        bytes_out=stored_bytes(plan.url, plan.target.storage_options),
        seconds=0.0,
        stats={"up_to_date": True},
    )


def normalize_root(root: str | os.PathLike) -> str:
    """Local roots become absolute paths; URLs pass unchanged."""
    root = str(root)
    if "://" in root and not root.startswith("file://"):
        return root
    return str(Path(root.removeprefix("file://")).expanduser().resolve())


def check_root(root: str) -> None:
    """Raise :class:`TargetError` naming a local target root that is, or lies under, a
    file rather than a folder."""
    if "://" in root:
        return
    path = Path(root)
    while not path.exists() and path != path.parent:
        path = path.parent
    if not path.is_dir():
        what = "a file" if path == Path(root) else f"under {path}, a file"
        raise TargetError(f"target root {root}: {what}, not a folder")


def stored_bytes(url: str, storage_options: dict | None = None) -> int:
    """Total size of the files under ``url``."""
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return int(fs.du(path, total=True))
