"""The Zarr product's plan: scan every input, combine their schemas, write chunk-aligned
regions of the store (each checked against sample inputs), then publish it."""

from __future__ import annotations

import bisect
import itertools
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np
import xarray as xr

from arcoforge.core import ledger as ledgers
from arcoforge.core import statefile
from arcoforge.core.compare import sample_positions
from arcoforge.core.open import OpenConfig, open_config, preload
from arcoforge.core.plan import STAGED, BakeState, Plan, Stage, exists, nothing
from arcoforge.core.targets import target_at
from arcoforge.errors import SchemaError
from arcoforge.recipe.patterns import Input
from arcoforge.recipe.steps import Recipe
from arcoforge.zarr import write as zarr_writer
from arcoforge.zarr.check import CheckTask, check_before_publish
from arcoforge.zarr.chunking import resolve_chunks
from arcoforge.zarr.scan import (
    DatasetSchema,
    Missing,
    ScanTask,
    SchemaCombiner,
    Skipping,
    VarInfo,
    scan_input,
)
from arcoforge.zarr.write import Piece, WriteTask

STATE_TYPES = (DatasetSchema, VarInfo)  # the classes a kept scan may hold


@dataclass
class ZarrState(BakeState):
    """What the driver knows of a Zarr bake: the combined schema, the chunks chosen and
    the encoding of every variable, the bytes written."""

    schema: DatasetSchema | None = None
    chunks: dict[str, int] = field(default_factory=dict)
    encoding: dict = field(default_factory=dict)
    written: int = 0

    def outcome(self) -> ZarrState:
        """Also without the encoding the template was written with."""
        return replace(super().outcome(), encoding={})


@dataclass
class ZarrPlan(Plan):
    """A bake of a recipe that ends in :class:`~arcoforge.recipe.StoreToZarr`: its inputs
    copied into a Zarr store, region by region."""

    @property
    def state_types(self) -> tuple[type, ...]:
        """The classes this plan's state files may hold (see :mod:`arcoforge.core.statefile`)."""
        return STATE_TYPES

    def new_state(self) -> ZarrState:
        return ZarrState()

    def warm_up(self) -> None:
        preload(self.open.file_type)

    @property
    def stages(self) -> list[Stage]:
        """prepare -> scan -> write (and validate) -> publish."""
        return [
            Stage(
                name="prepare",
                description="resume the unfinished bake of this recipe, if there is one",
                items=nothing,
                func=None,
                reduce=self.prepare,
            ),
            Stage(
                name="scan",
                description="open every input, check that they combine",
                items=self.scan_tasks,
                func=Skipping(scan_input) if self.skip_failed else scan_input,
                reduce=self.combine,
            ),
            Stage(
                name="write",
                description="write chunk regions from their inputs, check sample inputs",
                items=self.write_tasks,
                func=zarr_writer.write_region,
                reduce=self.count_written,
            ),
            Stage(
                name="publish",
                description="consolidate metadata, move the store into place",
                items=nothing,
                func=None,
                reduce=self.publish,
            ),
        ]

    def prepare(self, state: ZarrState, results: Iterable) -> None:
        """Pick up the interrupted bake of this same recipe, if there is one; otherwise
        clear whatever is left at the staging name."""
        staged = self.ledger.read(STAGED)
        same = staged is not None and staged["fingerprint"] == self.fingerprint
        there = same and (
            staged["status"] == "complete" or exists(self.target.url, self.target.storage_options)
        )
        saved = self.ledger.load_state(STATE_TYPES) if there else None
        if saved is not None and self.resume(state, saved):
            state.identities = staged.get("identities", {})
        else:
            self.clear_staging()

    def scan_tasks(self, state: ZarrState) -> list[ScanTask]:
        """One task per input (none when resuming: the scan's result was kept)."""
        if state.resumed:
            return []
        return [ScanTask(item, self.open) for item in self.inputs]

    def combine(self, state: ZarrState, results: Iterable) -> None:
        """Fold input schemas into the dataset schema, choose chunks and write the template."""
        if state.resumed:
            return
        combiner = self._combined(state, results)
        state.schema = combiner.result()
        state.open = replace(self.open, promoted=state.schema.promoted)
        state.chunks = resolve_chunks(state.schema, self.recipe.writer.target_chunks)
        state.encoding = zarr_writer.encodings(state.schema, state.chunks, self.recipe.writer)
        self.check_aligned(state)
        owners = {}
        for item in self.inputs:
            group = item.pos(self.merge_dim) if self.merge_dim else None
            if item.url not in state.missing:
                owners.setdefault(group, item)
        attrs = {**state.schema.attrs, **self.recipe.writer.attrs}
        self.claim_staging()
        zarr_writer.write_template(
            state.schema, self.target, state.encoding, state.open, owners, attrs
        )
        self.keep(state)

    def keep(self, state: ZarrState) -> None:
        """Record the scan's result, so that an interrupted bake resumes after it: data
        only, as the opener (which holds the recipe's functions) follows from the plan."""
        kept = {
            "schema": state.schema,
            "chunks": state.chunks,
            "promoted": state.open.promoted,
            "missing": state.missing,
        }
        self.ledger.save_state(kept, STATE_TYPES)
        self.ledger.write(self.manifest("writing", identities=state.identities), STAGED)

    def resume(self, state: ZarrState, kept: Any) -> bool:
        """Take up what :meth:`keep` recorded for an interrupted bake of this plan; False
        (and a warning) if it is not what :meth:`keep` records."""
        wrong = [
            k
            for k, kind in _KEPT.items()
            if not isinstance(kept, dict) or not isinstance(kept.get(k), kind)
        ]
        if wrong:
            why = f"no {wrong[0]!r} of type {_KEPT[wrong[0]].__name__}"
            log.warning(
                "%s; scanning the inputs again", statefile.not_ours(self.ledger.state_url, why)
            )
            return False
        state.schema, state.chunks = kept["schema"], kept["chunks"]
        state.missing = kept["missing"]
        state.open = replace(self.open, promoted=kept["promoted"])
        state.encoding = zarr_writer.encodings(state.schema, state.chunks, self.recipe.writer)
        state.resumed = True
        return True

    def _combined(self, state: ZarrState, results: Iterable) -> SchemaCombiner:
        """Fold scan results; skipped inputs are recorded in ``state.missing``."""
        combiner = SchemaCombiner(self.recipe.pattern)
        for result in results:
            if isinstance(result, Missing):
                combiner.add_missing(result.input, result.error)
                state.missing[result.input.url] = result.error
            else:
                combiner.add(result)
                state.identities[result.input.url] = result.identity
        return combiner

    def write_tasks(self, state: ZarrState) -> list[WriteTask]:
        """Tasks over chunk-aligned regions, each reading only the inputs it needs.

        The largest go first, and tasks of the same variables (alike in cost) side by side,
        so that the stage's last tasks end together rather than one worker waiting on another.
        """
        schema = state.schema
        groups = self._variable_groups(schema, state.chunks)
        done, missing = self.ledger.finished()
        state.missing.update(missing)
        tasks, skipped = [], 0
        for variables, region in itertools.product(groups, self._regions(schema, state.chunks)):
            variables = [v for v in variables if self._owns(schema, v, region)]
            units = tuple(ledgers.unit_key(v, _spans(schema, v, region)) for v in variables)
            if not variables:
                continue
            if done.issuperset(units):
                skipped += 1
            else:
                task = self._write_task(schema, region, variables, state)
                tasks.append(replace(task, units=units, ledger=self.ledger))
        state.stats["tasks_resumed"] = skipped
        return sorted(tasks, key=lambda task: -_decoded_bytes(task))

    def publish(self, state: ZarrState, results: Iterable) -> None:
        """Once everything is written and checked: consolidate, record the store as
        complete, move it into place. Each step can be repeated, so an interrupted
        publish is finished by the next bake."""
        staged = self.ledger.read(STAGED)
        if staged["status"] != "complete":
            self.check(state, self.target.url)
            if self.recipe.writer.consolidated:
                zarr_writer.consolidate(self.target)
            seal = self.seal(staged=True)
            staged = self.manifest("complete", seal=seal, **self._contents(state))
            self.ledger.write(staged, STAGED)
        self.move_into_place(state)
        published = {k: v for k, v in staged.items() if k != "version"}
        self.ledger.write({**published, "fingerprint": self.store_fingerprint, "seal": self.seal()})
        self.ledger.clear_staging()

    def check(self, state: ZarrState, url: str) -> None:
        """The audit every bake runs before it publishes (see :mod:`arcoforge.zarr.check`):
        the store opens, its coordinates are sound, every chunk is there and decodes."""
        report = check_before_publish(url, self.target.storage_options)
        state.stats["store_check"] = report.summary()

    def move_into_place(self, state: ZarrState) -> None:
        """Put the staged store at the final name (repeatable)."""
        self.target.publish(self.url, f"{self.ledger.folder}/{ledgers.REPLACED}")

    def _contents(self, state: ZarrState) -> dict:
        """What the published store holds: its inputs, their steps, the skipped ones."""
        dim = self.concat_dims[0]
        firsts = {i.pos(dim): i for i in reversed(self.inputs)}
        counts = [state.schema.counts[dim][p] for p in sorted(firsts)]
        return {
            "inputs": [i.url for i in self.inputs],
            "counts": counts,
            "dims": state.schema.dims,
            "missing": state.missing,
            "identities": self.identities(state, self.inputs),
        }

    def summary(self, state: ZarrState) -> dict[str, Any]:
        """Sizes for the bake's result: dims, chunks, bytes read and decoded."""
        return {
            "dims": dict(state.schema.dims),
            "chunks": dict(state.chunks),
            "bytes_in": state.schema.nbytes,
            "bytes_decoded": state.written,
        }

    def published_summary(self) -> dict[str, Any]:
        options = self.target.storage_options
        with xr.open_zarr(self.url, storage_options=options, chunks=None) as ds:
            dims = {str(k): int(v) for k, v in ds.sizes.items()}
            chunks = {
                str(d): int(c)
                for var in ds.data_vars.values()
                for d, c in zip(var.dims, var.encoding.get("chunks", ()), strict=False)
            }
        return {"dims": dims, "chunks": chunks, "bytes_in": 0, "bytes_decoded": 0}

    def count_written(self, state: ZarrState, results: Iterable) -> None:
        """Add up what the write tasks report."""
        checked = set()
        for result in results:
            state.written += result["bytes"]
            checked.update(result["checked"])
            state.missing.update(result["missing"])
        state.stats["validated_inputs"] = len(checked)
        if state.missing:
            state.stats["missing_inputs"] = sorted(state.missing)

    def _regions(self, schema: DatasetSchema, chunks: dict[str, int]) -> list[dict[str, slice]]:
        blocks = {}
        for dim, size in schema.dims.items():
            step = (
                chunks[dim] if dim in self.concat_dims else self._static_block(schema, chunks, dim)
            )
            start = self.start(dim)
            edges = [start, *range(start + step - start % step, size, step), size]
            blocks[dim] = [slice(a, b) for a, b in itertools.pairwise(edges)]
        dims = list(blocks)
        return [
            dict(zip(dims, combo, strict=True)) for combo in itertools.product(*blocks.values())
        ]

    def check_aligned(self, state: ZarrState) -> None:
        """Refuse a variable whose stored chunks or shards a boundary between write regions
        would split: two tasks filling parts of one stored object at once would each
        overwrite the other's part. Regions are ``target_chunks`` long (or whole dims)."""
        for name in self._data_vars(state.schema):
            encoding = state.encoding[name]
            kind = "shards" if encoding.get("shards") else "chunks"
            stored = encoding.get(kind) or ()
            for dim, unit in zip(state.schema.variables[name].dims, stored, strict=False):
                step = state.chunks[dim]
                if step < state.schema.dims[dim] and step % unit:
                    raise SchemaError(
                        f"StoreToZarr encoding of {name!r}: {kind} of {unit} along {dim!r} do "
                        f"not divide the write chunks of {step} (target_chunks), so two write "
                        f"tasks would fill one at once; make target_chunks along {dim!r} a "
                        f"multiple of {unit}"
                    )

    def start(self, dim: str) -> int:
        """Where this plan's writes begin along ``dim``: 0, or the end of an appended store."""
        return 0

    def _static_block(self, schema: DatasetSchema, chunks: dict[str, int], dim: str) -> int:
        """Whole dims, unless one variable's region would exceed the task memory budget."""
        size = schema.dims[dim]
        if chunks[dim] >= size:
            return size
        largest = max(self._region_bytes(schema, v, chunks) for v in self._data_vars(schema))
        splits = max(1, math.ceil(largest / self.max_task_bytes))
        nchunks = math.ceil(size / chunks[dim])
        return chunks[dim] * math.ceil(nchunks / min(splits, nchunks))

    def _region_bytes(self, schema: DatasetSchema, name: str, chunks: dict[str, int]) -> int:

        info = schema.variables[name]
        lengths = [chunks[d] if d in self.concat_dims else schema.dims[d] for d in info.dims]
        return np.dtype(info.dtype).itemsize * math.prod(lengths)

    def _data_vars(self, schema: DatasetSchema) -> list[str]:
        """Variables written by tasks: all with a concat dim, except the concat coordinates."""
        return [
            n
            for n, v in schema.variables.items()
            if set(v.dims) & set(self.concat_dims) and n not in self.concat_dims
        ]

    def _variable_groups(self, schema: DatasetSchema, chunks: dict[str, int]) -> list[list[str]]:
        """Variables read from the same inputs share a task, within the memory budget.

        Opening an input costs more than reading one variable from it, so variables are
        split over tasks only as far as needed to give every worker two tasks.
        """
        names = self._data_vars(schema)
        nregions = len(self._regions(schema, chunks))
        wanted = math.ceil(2 * self.workers / max(nregions, 1))
        groups: list[list[str]] = []
        by_owner = sorted(names, key=lambda n: str(schema.owners[n]))
        for _, members in itertools.groupby(by_owner, key=lambda n: schema.owners[n]):
            members = list(members)
            per_group = math.ceil(len(members) / min(wanted, len(members)))
            groups.append([])
            size = 0
            for name in members:
                nbytes = self._region_bytes(schema, name, chunks)
                full = len(groups[-1]) >= per_group or size + nbytes > self.max_task_bytes
                if groups[-1] and full:
                    groups.append([])
                    size = 0
                groups[-1].append(name)
                size += nbytes
        return groups

    def _inputs_along(self, schema: DatasetSchema, span: slice) -> Iterator[Input]:
        """Inputs whose steps along the first concat dim meet ``span`` (found by bisection)."""
        offsets = schema.offsets[self.concat_dims[0]]
        first = bisect.bisect_right(offsets, span.start) - 1
        last = bisect.bisect_left(offsets, span.stop)
        for position in range(max(first, 0), last):
            yield from self._by_position.get(position, ())

    @cached_property
    def _by_position(self) -> dict[int, list[Input]]:
        grouped: dict[int, list[Input]] = {}
        for item in self.inputs:
            grouped.setdefault(item.pos(self.concat_dims[0]), []).append(item)
        return grouped

    def _owns(self, schema: DatasetSchema, name: str, region: dict[str, slice]) -> bool:
        """A variable is written by the region's tasks only once per block of dims it lacks."""
        dims = schema.variables[name].dims
        return all(region[d].start == 0 for d in region if d not in dims)

    def _write_task(self, schema, region, variables, state: ZarrState) -> WriteTask:
        owner = schema.owners[variables[0]]
        opener = state.open or self.open
        pieces, checks = [], []
        for item in self._inputs_along(schema, region[self.concat_dims[0]]):
            if (self.merge_dim and item.pos(self.merge_dim) != owner) or item.url in state.missing:
                continue
            piece = overlap(schema.region_of(item), region, item)
            if piece is not None:
                pieces.append(piece)
                if item in self._samples:
                    checks.append(self._check(piece, region, variables, opener))
        return WriteTask(
            target=self.target,
            open=opener,
            variables=tuple(variables),
            dims=tuple((v, schema.variables[v].dims) for v in variables),
            dtypes=tuple(schema.variables[v].dtype for v in variables),
            region=tuple(region.items()),
            pieces=tuple(pieces),
            checks=tuple(checks),
            skip_failed=self.skip_failed,
        )

    @cached_property
    def _samples(self) -> set[Input]:
        """The inputs compared value for value with the store: the first and the last."""
        return {self.inputs[i] for i in sample_positions(len(self.inputs))}

    def _check(self, piece: Piece, region, variables, opener: OpenConfig) -> CheckTask:
        source, dest = dict(piece.source), dict(piece.dest)
        store = {d: _shift(dest[d], region[d].start) if d in dest else s for d, s in region.items()}
        source = {d: source.get(d, s) for d, s in region.items()}
        return CheckTask(
            self.target,
            opener,
            piece.input,
            tuple(source.items()),
            tuple(store.items()),
            tuple(variables),
        )


_KEPT = {"schema": DatasetSchema, "chunks": dict, "promoted": tuple, "missing": dict}
log = logging.getLogger("arcoforge")


def _spans(schema: DatasetSchema, name: str, region: dict[str, slice]):
    return [(d, region[d]) for d in schema.variables[name].dims]


def _decoded_bytes(task: WriteTask) -> int:
    """The bytes of the variables a task writes, over its region."""

    lengths = {dim: span.stop - span.start for dim, span in task.region}
    return sum(
        np.dtype(dtype).itemsize * math.prod(lengths[d] for d in dims)
        for (_, dims), dtype in zip(task.dims, task.dtypes, strict=True)
    )


def _shift(s: slice, by: int) -> slice:
    return slice(s.start + by, s.stop + by)


def overlap(covers: dict[str, slice], region: dict[str, slice], item: Input) -> Piece | None:
    """The piece of ``item`` that a write task of ``region`` reads: where ``covers`` (the
    steps ``item`` fills, by concat dim) meets ``region``, as slices of the input
    (``source``) and of the region (``dest``); None if they do not meet."""
    source, dest = [], []
    for dim, span in covers.items():
        lo, hi = max(span.start, region[dim].start), min(span.stop, region[dim].stop)
        if lo >= hi:
            return None
        source.append((dim, slice(lo - span.start, hi - span.start)))
        dest.append((dim, slice(lo - region[dim].start, hi - region[dim].start)))
    return Piece(item, tuple(source), tuple(dest))


def make_zarr_plan(
    recipe: Recipe,
    target_root: str,
    *,
    cache: str | None,
    workers: int,
    storage_options: dict | None = None,
    skip_failed: bool = False,
) -> ZarrPlan:
    """The plan of a recipe that ends in :class:`~arcoforge.recipe.StoreToZarr`; building
    it touches nothing."""
    writer = recipe.writer
    url = f"{target_root.rstrip('/')}/{writer.store_name}"
    ledger = ledgers.Ledger(url, storage_options)
    return ZarrPlan(
        recipe=recipe,
        url=url,
        target=target_at(ledger.staging_store, writer.zarr_format, storage_options),
        open=open_config(recipe, cache),
        inputs=list(recipe.pattern.inputs()),
        ledger=ledger,
        workers=workers,
        skip_failed=skip_failed,
    )


def estimate(plan: ZarrPlan) -> ZarrState:
    """What the plan will do, from the first input of each merge key only (for --dry-run).

    Every other input is assumed to hold ``nitems_per_file`` steps, or as many as the
    first one when the pattern does not say.
    """
    firsts: dict[int | None, Input] = {}
    for item in plan.inputs:
        firsts.setdefault(item.pos(plan.merge_dim) if plan.merge_dim else None, item)
    scanned = {g: scan_input(ScanTask(i, plan.open)) for g, i in firsts.items()}
    nitems = {d.name: d.nitems_per_file for d in plan.recipe.pattern.concat_dims}
    combiner = SchemaCombiner(plan.recipe.pattern)
    for item in plan.inputs:
        ref = scanned[item.pos(plan.merge_dim) if plan.merge_dim else None]
        sizes = {**ref.sizes, **{d: n for d, n in nitems.items() if n}}
        combiner.add(replace(ref, input=item, sizes=sizes, concat_values={}))
    state = ZarrState(schema=combiner.result())
    state.chunks = resolve_chunks(state.schema, plan.recipe.writer.target_chunks)
    return state


def describe(plan: ZarrPlan) -> dict[str, Any]:
    """Stages with task counts and bytes, estimated from the first input."""
    state = estimate(plan)
    schema = state.schema
    decoded = sum(
        np.dtype(v.dtype).itemsize * int(np.prod(v.shape)) for v in schema.variables.values()
    )
    stages = [
        {"stage": s.name, "tasks": len(s.items(state)), "what": s.description} for s in plan.stages
    ]
    return {
        "target": plan.url,
        "inputs": len(plan.inputs),
        "input_bytes_estimate": int(schema.nbytes),
        "output_bytes_decoded_estimate": int(decoded),
        "dims": schema.dims,
        "chunks": state.chunks,
        "variables": sorted(schema.variables),
        "stages": stages,
    }
