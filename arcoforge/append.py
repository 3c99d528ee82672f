"""Appending: the plan that adds to a published store the inputs it does not hold yet.

Only the new inputs are scanned, and only their chunks (and the last, partial chunk the
store already has) are written, into a patch that is applied once every chunk is written
and checked. Before anything is written, the new inputs must continue the store: the
same variables, grids and dtypes, and steps along the concat dim that follow its last one
without a gap, overlap, duplicate or reordering. Otherwise the append is refused with a
message naming the input, and the store is not touched.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import xarray as xr
import zarr

from .errors import SchemaError
from .patterns import Input
from .plan import STAGED, BakeState, Plan, exists
from .schema import DatasetSchema, SchemaCombiner
from .writers import patch
from .writers.zarr import zarr_store


class AppendError(SchemaError):
    """The new inputs do not continue the store."""


@dataclass
class AppendPlan(Plan):
    """A :class:`Plan` over the new inputs only, writing after the store's ``held`` steps."""

    held: int = 0
    held_urls: tuple[str, ...] = ()

    @property
    def dim(self) -> str:
        return self.concat_dims[0]

    def start(self, dim: str) -> int:
        return self.held if dim == self.dim else 0

    def combine(self, state: BakeState, results: Iterable) -> None:
        """Check that the new inputs continue the store, then stage the patch."""
        if state.resumed:
            return
        combiner = SchemaCombiner(self.recipe.pattern)
        for schema in results:
            combiner.add(schema)
        new = combiner.result()
        with xr.open_zarr(self.url, storage_options=self.target.storage_options) as store:
            check_continuation(store, new, self.dim, self._input_at(new))
            state.chunks = _store_chunks(store)
        state.schema = _shifted(new, self.dim, self.held)
        state.open = replace(self.open, promoted=new.promoted)
        length = state.schema.dims[self.dim]
        patch.stage(self.url, self.target, self.dim, length)
        _write_coords(self.target, new, self.dim, slice(self.held, length))
        self.ledger.save_state((state.schema, state.chunks, state.encoding, state.open))
        self.ledger.write(self._manifest("writing"), STAGED)

    def _input_at(self, schema: DatasetSchema):
        """The new input that holds step ``i`` of the new steps."""
        offsets = schema.offsets[self.dim]
        by_pos = {item.pos(self.dim): item for item in self.inputs}

        def find(i: int) -> Input:
            return by_pos[int(np.searchsorted(offsets, i, side="right")) - 1]

        return find

    def publish(self, state: BakeState, results: Iterable) -> None:
        """Consolidate the patch's metadata, record the store's new inputs, apply it."""
        staged = self.ledger.read(STAGED)
        if staged["status"] != "complete":
            if self.recipe.writer.consolidated:
                from .writers.zarr import consolidate

                consolidate(self.target)
            inputs = [*self.held_urls, *(i.url for i in self.inputs)]
            staged = self._manifest("complete", inputs=inputs, dims=state.schema.dims)
            self.ledger.write(staged, STAGED)
        patch.apply(self.target, self.url)
        self.ledger.write({k: v for k, v in staged.items() if k != "version"})
        self.ledger.clear_staging()


def plan_append(plan: Plan) -> Plan:
    """The plan that adds to ``plan``'s store the pattern's inputs it lacks.

    With no store yet, that is ``plan`` itself; with nothing new, a plan with no inputs.
    """
    published = plan.ledger.read()
    if published is None:
        if exists(plan.url, plan.target.storage_options):
            raise AppendError(
                f"cannot append to {plan.url}: it has no arcoforge manifest, so which inputs "
                "it holds is unknown; bake it afresh with arcoforge"
            )
        return plan
    if published["settings"] != plan.settings:
        raise AppendError(
            f"cannot append to {plan.url}: the recipe's settings (opener, preprocessing, "
            "StoreToZarr) differ from those it was baked with; bake it afresh with --force"
        )
    if len(plan.concat_dims) != 1:
        raise AppendError("appending works along one concat dim; this pattern has several")
    dim = plan.concat_dims[0]
    held = set(published["inputs"])
    gone = held - {i.url for i in plan.inputs}
    if gone:
        raise AppendError(f"cannot append: {plan.url} holds {min(gone)}, which the recipe lacks")
    new = [i for i in plan.inputs if i.url not in held]
    if not new:
        if published["fingerprint"] == plan.fingerprint:
            return plan
        raise AppendError(
            f"nothing to append to {plan.url}, but its inputs were in another order; "
            "bake it afresh with --force"
        )
    _check_order(plan, new, held, dim)
    first = min(i.pos(dim) for i in new)
    fields = {f: getattr(plan, f) for f in Plan.__dataclass_fields__}
    fields["inputs"] = [_moved(i, dim, -first) for i in new]
    return AppendPlan(
        **fields, held=int(published["dims"][dim]), held_urls=tuple(published["inputs"])
    )


def _check_order(plan: Plan, new: list[Input], held: set[str], dim: str) -> None:
    old = [i for i in plan.inputs if i.url in held]
    if not new or not old:
        return
    last = max(old, key=lambda i: i.pos(dim))
    early = min(new, key=lambda i: i.pos(dim))
    if early.pos(dim) <= last.pos(dim):
        raise AppendError(
            f"cannot append {early.url}: it comes before {last.url}, which {plan.url} "
            f"already holds; appends must follow the store along {dim!r}"
        )


def _moved(item: Input, dim: str, by: int) -> Input:
    position = tuple((d, p + by if d == dim else p) for d, p in item.position)
    return replace(item, position=position)


def check_continuation(store: xr.Dataset, new: DatasetSchema, dim: str, input_at) -> None:
    """Raise :class:`AppendError` unless ``new`` continues ``store`` along ``dim``."""
    first = input_at(0).url
    _check_variables(store, new, dim, first)
    values = new.concat_values.get(dim)
    if values is None or dim not in store.coords or not len(values):
        return
    held = store[dim].values
    last = held[-1]
    if values[0] <= last:
        how = "is already in" if values[0] in held else "overlaps"
        raise AppendError(
            f"cannot append {first}: {dim} {values[0]} {how} the store, whose last {dim} is {last}"
        )
    step = _regular_step(held)
    if step is None:
        return
    joined = np.concatenate([held[-1:], values])
    gaps = np.flatnonzero(np.diff(joined) != step)
    if len(gaps):
        i = int(gaps[0])
        raise AppendError(
            f"cannot append {input_at(i).url}: {dim} {joined[i + 1]} leaves a gap after "
            f"{dim} {joined[i]} (the store's steps are {_text(step)})"
        )


def _check_variables(store: xr.Dataset, new: DatasetSchema, dim: str, url: str) -> None:
    names = {n for n, v in new.variables.items() if not v.is_coord}
    for name in sorted(names ^ set(store.data_vars)):
        where = "the store lacks it" if name in names else "the new inputs lack it"
        raise AppendError(f"cannot append {url}: variable {name!r}: {where}")
    for name, info in new.variables.items():
        if name not in store.variables or name == dim:
            continue
        var = store.variables[name]
        shape = tuple(n for d, n in zip(info.dims, info.shape, strict=True) if d != dim)
        held = tuple(n for d, n in var.sizes.items() if d != dim)
        if var.dims != info.dims or shape != held or str(var.dtype) != info.dtype:
            raise AppendError(
                f"cannot append {url}: {name!r} is {info.dtype} {dict(zip(info.dims, info.shape, strict=True))}, "
                f"the store's is {var.dtype} {dict(var.sizes)}"
            )
        if dim not in info.dims and info.fingerprint and not _same(var, info):
            raise AppendError(f"cannot append {url}: {name!r} differs from the store's")


def _same(var: xr.Variable, info) -> bool:
    from .schema import _fingerprint

    return _fingerprint(np.asarray(var.values)) == info.fingerprint


def _regular_step(values: np.ndarray) -> Any:
    """The constant step of ``values``, or None if they are too few or irregular."""
    if len(values) < 2 or values.dtype == object:
        return None
    steps = np.diff(values)
    return steps[0] if (steps == steps[0]).all() else None


def _text(step: Any) -> str:
    if isinstance(step, np.timedelta64):
        return str(step.astype("timedelta64[s]").item())
    return str(step)


def _store_chunks(store: xr.Dataset) -> dict[str, int]:
    chunks: dict[str, int] = {}
    for var in store.data_vars.values():
        for d, c in zip(var.dims, var.encoding.get("chunks", ()), strict=False):
            chunks.setdefault(str(d), int(c))
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
    array = zarr.open_array(zarr_store(target), path=dim, mode="r+")
    kept = {k: array.attrs[k] for k in ("units", "calendar") if k in array.attrs}
    var = xr.Variable((dim,), schema.concat_values[dim], encoding={**kept, "dtype": array.dtype})
    array[region] = xr.conventions.encode_cf_variable(var).values
