"""Plans that change a published store: append new inputs, retry skipped ones.

Both scan only the inputs they need and write only the chunks those inputs land in, into
a patch (see :mod:`arcoforge.zarr.patch`) applied once every chunk is written and
checked, so the cost follows the new data, not the store. A retry, and a re-bake of
changed inputs, write their inputs over the patch's copies of the store's chunks: the
other inputs of those chunks are neither scanned nor read again.

An append must continue the store: the same variables, grids and dtypes, and steps along
the concat dim that follow its last one without a gap, overlap, duplicate or reordering.
Otherwise it is refused with a message naming the input, before anything is written.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np
import xarray as xr
import zarr

from arcoforge.core import ledger as ledgers
from arcoforge.core.append import check_steps, held_identities, moved, new_inputs
from arcoforge.core.compare import sample_positions
from arcoforge.errors import AppendError, ChangedInputError, SchemaError, SourceError, one_line
from arcoforge.recipe.patterns import Input
from arcoforge.zarr import patch
from arcoforge.zarr.plan import ZarrPlan, ZarrState, overlap
from arcoforge.zarr.scan import DatasetSchema, Missing, SchemaCombiner, VarInfo, values_fingerprint
from arcoforge.zarr.write import Piece, WriteTask


@dataclass
class PatchPlan(ZarrPlan):
    """A :class:`ZarrPlan` whose writes go into a patch of the published store."""

    published: dict = field(default_factory=dict)

    @property
    def dim(self) -> str:
        return self.concat_dims[0]

    def copied(self, schema: DatasetSchema) -> dict[str, tuple[tuple[int, int], ...]]:
        """The chunks of the store this plan's tasks write over in part: by variable, the
        spans of steps along the dim."""
        return {}

    def stage_patch(self, state: ZarrState, store: xr.Dataset, new: DatasetSchema) -> None:
        """Fill ``state`` from the scan and the store, and stage the patch."""
        state.chunks = write_chunks(store)
        state.open = replace(self.open, promoted=new.promoted)
        self.claim_staging()
        length = state.schema.dims[self.dim]
        patch.stage(self.url, self.target, self.dim, length, self.copied(state.schema))

    def check(self, state: ZarrState, url: str) -> None:
        """A patch is not a whole store: the audit runs on the store once it is applied."""

    def move_into_place(self, state: ZarrState) -> None:
        patch.apply(self.target, self.url)
        super().check(state, self.url)

    def _rescanned(self, state: ZarrState) -> list[dict | None]:
        """The identities of the store's inputs: as scanned now for the inputs this plan
        scanned, else as recorded."""
        urls = [i.url for i in self.inputs]
        scanned = dict(zip(urls, self.identities(state, self.inputs), strict=True))
        held = zip(self.published["inputs"], held_identities(self.published), strict=True)
        return [scanned.get(url) or old for url, old in held]


@dataclass
class AppendPlan(PatchPlan):
    """The new inputs only, written after the store's ``held`` steps."""

    held: int = 0

    @property
    def fingerprint(self) -> str:
        """An append resumes an interrupted append of the same inputs onto the same
        steps, never a full bake of the same pattern staged at the same name (an
        interrupted ``--force``): that is cleared instead."""
        return ledgers.fingerprint(self.store_fingerprint, "append", self.held)

    def start(self, dim: str) -> int:
        return self.held if dim == self.dim else 0

    def combine(self, state: ZarrState, results: Iterable) -> None:
        """Check that the new inputs continue the store, then stage the patch."""
        if state.resumed:
            return
        new = self._combined(state, results).result()
        with xr.open_zarr(self.url, storage_options=self.target.storage_options) as store:
            check_continuation(store, new, self.dim, self._input_at(new))
            state.schema = _shifted(new, self.dim, self.held)
            self.stage_patch(state, store, new)
        _write_coords(self.target, new, self.dim, slice(self.held, state.schema.dims[self.dim]))
        self.keep(state)

    def _input_at(self, schema: DatasetSchema):
        """The new input that holds step ``i`` of the new steps."""
        offsets = schema.offsets[self.dim]
        by_pos = {item.pos(self.dim): item for item in self.inputs}

        def find(i: int) -> Input:
            return by_pos[int(np.searchsorted(offsets, i, side="right")) - 1]

        return find

    def _contents(self, state: ZarrState) -> dict:
        new = super()._contents(state)
        return {
            "inputs": [*self.published["inputs"], *new["inputs"]],
            "counts": [*self.published["counts"], *new["counts"]],
            "dims": state.schema.dims,
            "missing": {**self.published.get("missing", {}), **state.missing},
            "identities": [*held_identities(self.published), *new["identities"]],
        }


@dataclass
class RetryPlan(PatchPlan):
    """The skipped inputs, written into copies of the ``blocks`` of chunks that lack them.

    Only the :attr:`fresh` inputs are read: the steps of the other inputs of those chunks
    keep the store's bytes. ``inputs`` are the inputs scanned: the fresh ones and, with a
    merge dim, those at the same steps of the other merge keys, which tell which variables
    the store's merge keys hold (they are not written).
    """

    blocks: tuple[tuple[int, int], ...] = ()

    @property
    def fingerprint(self) -> str:
        return ledgers.fingerprint(self.store_fingerprint, "retry", self.blocks)

    @property
    def fresh(self) -> set[str]:
        """The inputs written into the store: those that were skipped."""
        return set(self.published.get("missing", {}))

    def copied(self, schema: DatasetSchema) -> dict[str, tuple[tuple[int, int], ...]]:
        """The blocks' chunks of the variables the fresh inputs are written to."""
        keys = {self._key(i) for i in self.inputs if i.url in self.fresh}
        return {n: self.blocks for n in self._data_vars(schema) if schema.owners[n] in keys}

    def write_tasks(self, state: ZarrState) -> list[WriteTask]:
        """Tasks that write the fresh inputs' steps only, over the patch's copies (those of
        fresh inputs that failed again as missing values)."""
        tasks = []
        for task in super().write_tasks(state):
            blanks = self._blanks(state, task)
            if task.pieces or blanks:
                tasks.append(replace(task, pieces_only=True, blanks=blanks))
        return tasks

    def _blanks(self, state: ZarrState, task: WriteTask) -> tuple[Piece, ...]:
        """The parts of ``task``'s region that fresh inputs skipped by the scan hold."""
        schema, region = state.schema, dict(task.region)
        owner = schema.owners[task.variables[0]]
        failed = (
            i
            for i in self.inputs
            if i.url in self.fresh and i.url in state.missing and self._key(i) == owner
        )
        pieces = (overlap(schema.region_of(i), region, i) for i in failed)
        return tuple(p for p in pieces if p is not None)

    def _inputs_along(self, schema: DatasetSchema, span: slice) -> Iterator[Input]:
        return (i for i in super()._inputs_along(schema, span) if i.url in self.fresh)

    @cached_property
    def _samples(self) -> set[Input]:
        """The first and the last fresh input, compared value for value with the patch."""
        fresh = [i for i in self.inputs if i.url in self.fresh]
        return {fresh[i] for i in sample_positions(len(fresh))}

    def combine(self, state: ZarrState, results: Iterable) -> None:
        """Check that the inputs fit where the store expects them, then stage the patch."""
        if state.resumed:
            return
        results = list(results)
        read = [r.input for r in results if not isinstance(r, Missing)]
        new = self._combined(state, results).result()
        counts = self.published["counts"]
        offsets = np.cumsum([0, *counts[:-1]]).tolist()
        with xr.open_zarr(self.url, storage_options=self.target.storage_options) as store:
            new = self._with_unread_keys(new, store, read)
            self.check_fits(store, new, read)
            dims = {**new.dims, self.dim: int(store.sizes[self.dim])}
            variables = {
                n: replace(v, shape=tuple(dims[d] for d in v.dims))
                for n, v in new.variables.items()
            }
            state.schema = replace(
                new,
                dims=dims,
                variables=variables,
                offsets={self.dim: offsets},
                counts={self.dim: list(counts)},
            )
            self.stage_patch(state, store, new)
        self.keep(state)

    def _combined(self, state: ZarrState, results: Iterable) -> SchemaCombiner:
        """Fold the scans of the inputs read. Fresh inputs skipped are recorded as missing,
        not folded (their steps are the store's); other inputs that failed were scanned
        only to learn their merge key's variables, which the store's data still holds.
        Raises :class:`SourceError` if no fresh input (of a merge key that has fresh
        inputs) was read: nothing tells what to write."""
        results = list(results)
        failed = [r for r in results if isinstance(r, Missing) and r.input.url in self.fresh]
        state.missing.update((r.input.url, r.error) for r in failed)
        read = [r for r in results if not isinstance(r, Missing)]
        keys = {self._key(r.input) for r in read if r.input.url in self.fresh}
        lost = [r for r in failed if self._key(r.input) not in keys]
        if lost:
            first = lost[0]
            cause = first.error
            if not cause.startswith(f"{first.input.url}: "):
                cause = f"{first.input.url}: {cause}"
            more = f" (and {len(lost) - 1} more inputs)" if len(lost) > 1 else ""
            raise SourceError(
                self.open.redact(
                    f"{cause}{more}; no input to write was read, the published store is "
                    "left as it was"
                )
            )
        return super()._combined(state, read)

    def _with_unread_keys(
        self, new: DatasetSchema, store: xr.Dataset, read: list[Input]
    ) -> DatasetSchema:
        """``new`` with the store's variables of the merge keys none of whose inputs were
        read (every scan of theirs failed): none is written, so the store says what they
        hold. Those variables go to the first such key; the split between several such
        keys is unknown, and no task needs it."""
        if self.merge_dim is None:
            return new
        unread = {self._key(i) for i in self.inputs} - {self._key(i) for i in read}
        if not unread:
            return new
        lacking = [n for n in store.data_vars if n not in new.variables]
        variables = {**new.variables, **{n: _store_variable(store[n]) for n in lacking}}
        owners = {**new.owners, **dict.fromkeys(lacking, min(unread))}
        dims = {**{d: int(n) for d, n in store.sizes.items()}, **new.dims}
        return replace(new, variables=variables, owners=owners, dims=dims)

    def _key(self, item: Input) -> int | None:
        """The merge key of ``item`` (None without a merge dim)."""
        return item.pos(self.merge_dim) if self.merge_dim else None

    def check_fits(self, store: xr.Dataset, new: DatasetSchema, scanned: list[Input]) -> None:
        """The inputs being retried (those ``scanned``) must hold the steps the store has
        for them."""
        item = _differing_steps(store, new, scanned, self.dim, self.published["counts"])
        if item is not None:
            raise AppendError(
                f"cannot retry {item.url}: its {self.dim} steps differ from those the "
                "store has for it"
            )

    def _regions(self, schema: DatasetSchema, chunks: dict[str, int]) -> list[dict[str, slice]]:
        return [
            r
            for r in super()._regions(schema, chunks)
            if (r[self.dim].start, r[self.dim].stop) in self.blocks
        ]

    def _contents(self, state: ZarrState) -> dict:
        retried = {i.url for i in self.inputs}
        kept = {u: e for u, e in self.published.get("missing", {}).items() if u not in retried}
        held = {k: self.published[k] for k in ("inputs", "counts", "dims")}
        return {
            **held,
            "missing": {**kept, **state.missing},
            "identities": self._rescanned(state),
        }


@dataclass
class ChangedPlan(RetryPlan):
    """The chunks that ``changed`` inputs feed, rewritten from all the inputs they hold;
    ``now`` is the changed inputs' identities as they were found."""

    changed: tuple[str, ...] = ()
    now: tuple[dict, ...] = ()

    @property
    def fresh(self) -> set[str]:
        """The inputs written into the store: those that changed."""
        return set(self.changed)

    @property
    def store_fingerprint(self) -> str:
        """The store's as published: it holds the inputs it held (the recipe may have more,
        to append after)."""
        return self.published["fingerprint"]

    @property
    def fingerprint(self) -> str:
        return ledgers.fingerprint(self.store_fingerprint, "changed", self.blocks, self.now)

    def combine(self, state: ZarrState, results: Iterable) -> None:
        """Rescan, check that the changed inputs still fit the store, stage the patch."""
        try:
            super().combine(state, results)
        except SchemaError as exc:
            if isinstance(exc, ChangedInputError):
                raise
            raise self.misfit(one_line(exc)) from exc

    def check_fits(self, store: xr.Dataset, new: DatasetSchema, scanned: list[Input]) -> None:
        """Same variables, grids and dtypes as the store, the same steps along its dim."""
        problem = _changed_mismatch(store, new, self.dim)
        if problem is not None:
            raise self.misfit(problem)
        item = _differing_steps(store, new, scanned, self.dim, self.published["counts"])
        if item is not None:
            raise self.misfit(f"its {self.dim} values differ from the store's", item.url)

    def misfit(self, problem: str, url: str | None = None) -> ChangedInputError:
        """The one-line refusal of a changed input that does not fit (the first, unless
        ``url`` is given)."""
        return ChangedInputError(
            f"input {self.open.redact(url or self.changed[0])} changed since the store was "
            f"baked and no longer fits it: {problem}; the published store is left as it was "
            "(bake it afresh with --force)"
        )


def _store_variable(var: xr.DataArray) -> VarInfo:
    """A data variable of the store, described as a scan describes one (without values)."""
    return VarInfo(
        dims=tuple(map(str, var.dims)),
        shape=tuple(var.shape),
        dtype=str(var.dtype),
        attrs=dict(var.attrs),
        encoding={},
        is_coord=False,
    )


def plan_changed(plan: ZarrPlan, published: dict, changed: list[str], now: list[dict]) -> ZarrPlan:
    """The plan that rewrites the chunks of ``plan``'s store that the ``changed`` inputs
    (of identities ``now``) feed, from every input those chunks hold; along several
    concat dims, ``plan`` itself, which bakes the store afresh."""
    if len(plan.concat_dims) != 1:
        return plan
    skipped = published.get("missing", {})
    scanned = [i for i in _scanned(plan, changed) if i.url not in skipped]
    return ChangedPlan(
        **plan.fields(inputs=scanned),
        published=published,
        blocks=_blocks(plan, published, changed),
        changed=tuple(changed),
        now=tuple(now),
    )


def plan_append(plan: ZarrPlan) -> ZarrPlan:
    """The plan that adds to ``plan``'s store the pattern's inputs it lacks.

    With no store yet, that is ``plan`` itself; with nothing new, a plan with no inputs.
    """
    published = plan.published_manifest("append to")
    if published is None:
        return plan
    if len(plan.concat_dims) != 1:
        raise AppendError("appending works along one concat dim; this pattern has several")
    dim = plan.concat_dims[0]
    new = new_inputs(plan, published, dim)
    if not new:
        return plan
    first = min(i.pos(dim) for i in new)
    return AppendPlan(
        **plan.fields(inputs=[moved(i, dim, -first) for i in new]),
        published=published,
        held=int(published["dims"][dim]),
    )


def plan_retry(plan: ZarrPlan) -> ZarrPlan:
    """The plan that fills in the inputs ``plan``'s store lacks because they were skipped.

    With nothing skipped, that is ``plan`` itself, which finds the store up to date.
    """
    published = plan.published_manifest("retry the failed inputs of")
    if published is None:
        raise AppendError(f"cannot retry failed inputs: there is no store at {plan.url}")
    if published["fingerprint"] != plan.store_fingerprint:
        raise AppendError(
            f"cannot retry the failed inputs of {plan.url}: the recipe's inputs differ from "
            "those it was baked from"
        )
    if not published.get("missing"):
        return plan
    missing = published["missing"]
    return RetryPlan(
        **plan.fields(inputs=_scanned(plan, missing)),
        published=published,
        blocks=_blocks(plan, published, missing),
    )


def _scanned(plan: ZarrPlan, urls: Iterable[str]) -> list[Input]:
    """The inputs at ``urls`` and, with a merge dim, those at the same steps along the
    concat dim (whose variables the store's other merge keys hold)."""
    urls = set(urls)
    if plan.merge_dim is None:
        return [i for i in plan.inputs if i.url in urls]
    dim = plan.concat_dims[0]
    steps = {i.pos(dim) for i in plan.inputs if i.url in urls}
    return [i for i in plan.inputs if i.pos(dim) in steps]


def _blocks(plan: ZarrPlan, published: dict, urls) -> tuple[tuple[int, int], ...]:
    """The blocks of chunks along the concat dim that hold the inputs at ``urls``."""
    dim = plan.concat_dims[0]
    with xr.open_zarr(plan.url, storage_options=plan.target.storage_options) as store:
        step = write_chunks(store)[dim]
    counts = published["counts"]
    offsets = np.cumsum([0, *counts]).tolist()
    held = [i for i in plan.inputs if i.pos(dim) < len(counts)]  # not those to append
    spans = {i.url: (offsets[i.pos(dim)], offsets[i.pos(dim) + 1]) for i in held}
    blocks = {
        (b, min(b + step, offsets[-1]))
        for url in urls
        for b in range(spans[url][0] // step * step, spans[url][1], step)
    }
    return tuple(sorted(blocks))


def _differing_steps(
    store: xr.Dataset, new: DatasetSchema, inputs, dim: str, counts
) -> Input | None:
    """The first of ``inputs`` whose steps along ``dim`` differ from those the store has
    for it, or None."""
    positions = sorted({i.pos(dim) for i in inputs})
    by_pos = {i.pos(dim): i for i in inputs}
    offsets = np.cumsum([0, *counts]).tolist()
    values = new.concat_values.get(dim)
    start = 0
    for rank, pos in enumerate(positions):
        n = counts[pos]
        same = new.counts[dim][rank] == n and (
            values is None
            or np.array_equal(
                values[start : start + n], store[dim].values[offsets[pos] : offsets[pos] + n]
            )
        )
        if not same:
            return by_pos[pos]
        start += n
    return None


def check_continuation(store: xr.Dataset, new: DatasetSchema, dim: str, input_at) -> None:
    """Raise :class:`AppendError` unless ``new`` continues ``store`` along ``dim``."""
    _check_variables(store, new, dim, input_at(0).url)
    values = new.concat_values.get(dim)
    if values is None or dim not in store.coords or not len(values):
        return
    check_steps(store[dim].values, values, dim, input_at)


def _check_variables(store: xr.Dataset, new: DatasetSchema, dim: str, url: str) -> None:
    problem = _variable_mismatch(store, new, dim)
    if problem is not None:
        raise AppendError(f"cannot append {url}: {problem}")


def _variable_mismatch(store: xr.Dataset, new: DatasetSchema, dim: str) -> str | None:
    """How the variables of ``new`` differ from the store's (but for their length along
    ``dim``), or None."""
    names = {n for n, v in new.variables.items() if not v.is_coord}
    for name in sorted(names ^ set(store.data_vars)):
        where = "the store lacks it" if name in names else "the new inputs lack it"
        return f"variable {name!r}: {where}"
    for name, info in new.variables.items():
        if name not in store.variables or name == dim:
            continue
        var = store.variables[name]
        shape = tuple(n for d, n in zip(info.dims, info.shape, strict=True) if d != dim)
        held = tuple(n for d, n in var.sizes.items() if d != dim)
        if var.dims != info.dims or shape != held or not _fits(var, info.dtype):
            return (
                f"{name!r} is {info.dtype} {dict(zip(info.dims, info.shape, strict=True))}, "
                f"the store's is {var.dtype} {dict(var.sizes)}"
            )
        if dim not in info.dims and info.fingerprint and not _same(var, info):
            return f"{name!r} differs from the store's"
    return None


def _changed_mismatch(store: xr.Dataset, new: DatasetSchema, dim: str) -> str | None:
    """How changed inputs (``new``) differ from the store (but for their length along
    ``dim``), in the words of a scan that compares two inputs; or None."""
    names = {n for n, v in new.variables.items() if not v.is_coord}
    missing, extra = set(store.data_vars) - names, names - set(store.data_vars)
    if missing:
        return f"variable {', '.join(map(repr, sorted(missing)))} is missing"
    if extra:
        return f"it has extra variable {', '.join(map(repr, sorted(extra)))}"
    for name, info in new.variables.items():
        if name not in store.variables or name == dim:
            continue
        var = store.variables[name]
        if var.dims != info.dims:
            return f"{name!r} has dims {info.dims}, not {var.dims}"
        for d, n in zip(info.dims, info.shape, strict=True):
            if d != dim and n != var.sizes[d]:
                return f"different grid: {d!r} has {n} points, not {var.sizes[d]}"
        if not _fits(var, info.dtype):
            return f"{name!r} has dtype {info.dtype}, not {var.dtype}"
        if dim not in info.dims and info.fingerprint and not _same(var, info):
            return f"different values of {name!r}"
    return None


def _fits(var: xr.Variable, new: str) -> bool:
    """The new inputs' dtype is the store's; strings may be narrower (ERA5's ``expver``);
    a packed variable of the store (read back as float64, its ``scale_factor`` a JSON
    number) takes floats of any width, packed as the store packs them."""
    held = var.dtype
    if held.kind == "f" and np.dtype(new).kind == "f" and _PACKED & set(var.encoding):
        return True
    if held.kind in "SU" and np.dtype(new).kind == held.kind:
        return np.dtype(new).itemsize <= held.itemsize
    return str(held) == new


_PACKED = {"scale_factor", "add_offset"}


def _same(var: xr.Variable, info) -> bool:
    return values_fingerprint(np.asarray(var.values)) == info.fingerprint


def write_chunks(store: xr.Dataset) -> dict[str, int]:
    """The write chunks of ``store``: along each dim, the least common multiple of its data
    variables' stored objects (shards, if sharded, else chunks), so that no two write
    tasks share one."""
    chunks: dict[str, int] = {}
    for var in store.data_vars.values():
        stored = var.encoding.get("shards") or var.encoding.get("chunks", ())
        for d, c in zip(var.dims, stored, strict=False):
            chunks[str(d)] = math.lcm(chunks.get(str(d), 1), int(c))
    return chunks


def _shifted(schema: DatasetSchema, dim: str, by: int) -> DatasetSchema:
    """``schema`` placed after ``by`` steps already in the store."""
    dims = {**schema.dims, dim: schema.dims[dim] + by}
    variables = {
        n: replace(v, shape=tuple(dims[d] for d in v.dims)) for n, v in schema.variables.items()
    }
    offsets = {**schema.offsets, dim: [o + by for o in schema.offsets[dim]]}
    return replace(schema, dims=dims, variables=variables, offsets=offsets)


def _write_coords(target, schema: DatasetSchema, dim: str, region: slice) -> None:
    """The new values of the concat coordinate, encoded as the store encodes it."""
    if dim not in schema.concat_values:
        return
    array = zarr.open_array(target.zarr_store(), path=dim, mode="r+")
    kept = {k: array.attrs[k] for k in ("units", "calendar") if k in array.attrs}
    var = xr.Variable((dim,), schema.concat_values[dim], encoding={**kept, "dtype": array.dtype})
    array[region] = xr.conventions.encode_cf_variable(var).values
