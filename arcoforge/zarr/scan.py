"""Schemas: what each input holds, and how all inputs combine into one dataset.

Each input is described by a small :class:`InputSchema` on a worker; the driver folds
them into a :class:`DatasetSchema` with :class:`SchemaCombiner`, keeping one full
schema per distinct layout, so driver memory does not grow with the data.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from arcoforge.core.open import OpenConfig, open_input
from arcoforge.core.report import incomplete
from arcoforge.errors import SchemaError, SourceError, one_line
from arcoforge.recipe.patterns import FilePattern, Input
from arcoforge.sources import local_copy
from arcoforge.sources.identity import Gone
from arcoforge.sources.lookup import scanned_identity

_TIME_ENCODING = ("units", "calendar", "dtype")
PACKING = ("dtype", "scale_factor", "add_offset", "_FillValue", "missing_value", "_Unsigned")
"""The encoding of a numeric variable in its source, kept in the store by default."""
SHOWN_CAUSES = 3  # of an every-input-failed error, the first causes named
SHARED_BYTES = 1 << 20
"""Variables along a concat dim up to this size are fingerprinted by the scan, so that one
held under several merge keys (xclim's ``time_vectors``) can be found equal and kept once."""
SHARED_VALUES = 1 << 12
"""Up to this size their values are kept too, to name the first difference."""


@dataclass(frozen=True)
class VarInfo:
    """One variable of an input: layout, decoded dtype, attributes and source encoding
    (time units and calendar, or the packing of numbers)."""

    dims: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: str
    attrs: dict[str, Any]
    encoding: dict[str, Any]
    is_coord: bool
    fingerprint: str | None = None
    summary: str = ""
    values: np.ndarray | None = field(default=None, compare=False, repr=False)

    def layout(self, concat: set[str]) -> tuple:
        """What must agree between inputs: dims, dtype, static sizes and static values.

        Scalar coordinates may vary (GRIB's ``valid_time``): they are concatenated.
        """
        static = tuple(n for d, n in zip(self.dims, self.shape, strict=True) if d not in concat)
        values = None if self.is_scalar_coord or concat & set(self.dims) else self.fingerprint
        return (self.dims, _kind(self.dtype), static, self.is_coord, values)

    @property
    def is_scalar_coord(self) -> bool:
        """A 0-d coordinate."""
        return self.is_coord and not self.dims


@dataclass(frozen=True)
class InputSchema:
    """What one input holds, as seen after opening and preprocessing."""

    input: Input
    sizes: dict[str, int]
    variables: dict[str, VarInfo]
    attrs: dict[str, Any]
    concat_values: dict[str, np.ndarray]
    nbytes: int = 0
    identity: dict | None = None  # see arcoforge.sources.identity

    def layout(self, concat: set[str]) -> tuple:
        """A hashable summary of everything that must agree with other inputs."""
        return tuple(sorted((name, v.layout(concat)) for name, v in self.variables.items()))


@dataclass(frozen=True)
class ScanTask:
    """Open one input and describe it."""

    input: Input
    open: OpenConfig

    @property
    def label(self) -> str:
        return f"scan of {self.open.redact(self.input.url)}"


@dataclass(frozen=True)
class Missing:
    """An input that failed after its retries and is skipped: its steps stay fill values."""

    input: Input
    error: str


@dataclass(frozen=True)
class Skipping:
    """``func`` over tasks with an ``input``, returning :class:`Missing` for an input that
    cannot be fetched or opened instead of raising."""

    func: Any

    def __call__(self, task) -> Any:
        try:
            return self.func(task)
        except SourceError as exc:
            return Missing(task.input, one_line(exc))


def scan_input(task: ScanTask) -> InputSchema:
    """The schema of one input (fetching it into the cache on the way), with the identity
    of the bytes it was read from."""
    nbytes = 0
    if task.open.file_type != "zarr":
        nbytes = os.path.getsize(local_copy(task.input.url, task.open.fetch))
    try:
        identity = scanned_identity(task.input.url, task.open.fetch)
    except Gone:
        identity = None  # a Zarr input: opening it says what is wrong
    with open_input(task.input.url, task.open) as ds:
        schema = describe_input(ds, task.input, task.open.concat_dims, nbytes, task.open.redact)
    return replace(schema, identity=identity)


def describe_input(
    ds: xr.Dataset, item: Input, concat_dims: tuple[str, ...], nbytes: int = 0, redact=str
) -> InputSchema:
    """Build the :class:`InputSchema` of an opened input (its URL redacted)."""
    item = replace(item, url=redact(item.url))
    for dim in concat_dims:
        if dim not in ds.dims:
            raise SchemaError(
                f"{item.url}: no dimension {dim!r} to concatenate along "
                f"(dims are {', '.join(map(str, ds.dims)) or 'none'}); "
                f"add a preprocessing step such as ds.expand_dims({dim!r})"
            )
    for name in ds.dims:
        if name in ds.coords:
            _check_complete(item.url, str(name), np.asarray(ds[name].values))
    merged = len(item.position) > len(concat_dims)  # the input has a merge key
    variables = {
        str(name): _var_info(var, name in ds.coords, set(concat_dims), merged)
        for name, var in ds.variables.items()
    }
    values = {d: np.asarray(ds[d].values) for d in concat_dims if d in ds.variables}
    return InputSchema(
        input=item,
        sizes={str(k): int(v) for k, v in ds.sizes.items()},
        variables=variables,
        attrs=dict(ds.attrs),
        concat_values=values,
        nbytes=nbytes,
    )


def _check_complete(url: str, name: str, values: np.ndarray) -> None:
    """Refuse a dimension coordinate with missing values before anything is written."""
    missing = np.flatnonzero(pd.isna(values)) if values.dtype.kind in "fcmMO" else []
    if len(missing):
        raise SchemaError(f"{url}: {incomplete(name, missing, values.size)}")


def _var_info(var: xr.Variable, is_coord: bool, concat: set[str], merged: bool) -> VarInfo:
    dtype = var.dtype
    encoding = {}
    if _is_time(var):
        encoding = {k: var.encoding[k] for k in _TIME_ENCODING if k in var.encoding}
        encoding["dtype"] = str(np.dtype(encoding.get("dtype", "float64")))
    elif _packing_kept(var):
        encoding = {k: var.encoding[k] for k in PACKING if k in var.encoding}
        encoding["dtype"] = str(np.dtype(encoding.get("dtype", dtype)))
    elif _masked_chars(var):
        encoding = {"dtype": str(var.encoding["dtype"]), "_FillValue": var.encoding["_FillValue"]}
    fingerprint = summary = kept = None
    along = bool(concat.intersection(var.dims))
    if not along or (merged and var.nbytes <= SHARED_BYTES):
        values = np.asarray(var.values)
        fingerprint, summary = values_fingerprint(values), _summarize(values)
        kept = values if along and values.nbytes <= SHARED_VALUES else None
    return VarInfo(
        dims=tuple(str(d) for d in var.dims),
        shape=tuple(int(n) for n in var.shape),
        dtype=str(dtype),
        attrs=dict(var.attrs),
        encoding=encoding,
        is_coord=is_coord,
        fingerprint=fingerprint,
        summary=summary or "",
        values=kept,
    )


def _packing_kept(var: xr.Variable) -> bool:
    """Whether a number's source packing can be kept: xarray encodes neither a non-number
    nor a ``_FillValue`` and ``missing_value`` that differ (scipy's
    ``example_3_maskedvals.nc``: both are decoded to NaN, and so the store holds it)."""
    stored = np.dtype(var.encoding.get("dtype", var.dtype))
    if var.dtype.kind not in "iuf" or stored.kind not in "iuf":
        return False
    fill, missing = var.encoding.get("_FillValue"), var.encoding.get("missing_value")
    return fill is None or missing is None or _same_values(fill, missing)


def _masked_chars(var: xr.Variable) -> bool:
    """A char variable whose ``_FillValue`` xarray masks (decoded to objects, NaN where
    missing: scipy's ``example_3_maskedvals.nc``), kept as chars with that fill value."""
    chars = var.encoding.get("dtype") == np.dtype("S1")
    return var.dtype == object and chars and "_FillValue" in var.encoding


def _same_values(a, b) -> bool:
    return bool(np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True))


def _is_time(var: xr.Variable) -> bool:
    return var.dtype.kind == "M" or (var.dtype == object and "calendar" in var.encoding)


def _kind(dtype: str) -> str:
    """A dtype, with strings of any width alike: each input's strings are as wide as its
    longest, and the output takes the widest (ERA5's ``expver``)."""
    return np.dtype(dtype).kind if np.dtype(dtype).kind in "SU" else dtype


def _widest(a: str, b: str) -> str:
    return a if np.dtype(a).itemsize >= np.dtype(b).itemsize else b


def values_fingerprint(values: np.ndarray) -> str:
    plain = values.dtype != object and values.dtype.kind not in "SU"
    data = values.tobytes() if plain else repr(values.tolist()).encode()
    return hashlib.sha1(data + str(values.shape).encode()).hexdigest()


def _summarize(values: np.ndarray) -> str:
    flat = values.ravel()
    if flat.size == 0:
        return "empty"
    if flat.size == 1:
        return f"value {flat[0]}"
    return f"{flat.size} values {flat[0]} .. {flat[-1]}"


@dataclass
class DatasetSchema:
    """The combined dataset: output sizes and variables, and where each input lands."""

    dims: dict[str, int]
    variables: dict[str, VarInfo]
    attrs: dict[str, Any]
    concat_dims: tuple[str, ...]
    offsets: dict[str, list[int]]
    counts: dict[str, list[int]]
    concat_values: dict[str, np.ndarray]
    owners: dict[str, int | None]
    promoted: tuple[str, ...] = ()
    nbytes: int = 0

    def region_of(self, item: Input) -> dict[str, slice]:
        """The slice along each concat dim that ``item`` fills in the output."""
        return {
            d: slice(
                self.offsets[d][item.pos(d)],
                self.offsets[d][item.pos(d)] + self.counts[d][item.pos(d)],
            )
            for d in self.concat_dims
        }


class SchemaCombiner:
    """Fold input schemas, in any order, into one :class:`DatasetSchema`."""

    def __init__(self, pattern: FilePattern):
        self.pattern = pattern
        self.concat = tuple(d.name for d in pattern.concat_dims)
        self.merge = pattern.merge_dim.name if pattern.merge_dim else None
        self.layouts: dict[tuple[int | None, tuple], InputSchema] = {}
        self.first: dict[int | None, InputSchema] = {}
        self.counts: dict[str, dict[int, tuple[int, Input]]] = {d: {} for d in self.concat}
        self.values: dict[str, dict[int, tuple[np.ndarray, Input]]] = {d: {} for d in self.concat}
        self.attr_values: dict[tuple[str | None, str], Any] = {}
        self.conflicts: set[tuple[str | None, str]] = set()
        self.scalars: dict[str, str | None] = {}
        self.varying: set[str] = set()
        self.strings: dict[str, str] = {}
        self.along: dict[tuple[str, tuple], dict[int | None, tuple[VarInfo, Input]]] = {}
        self.nbytes = 0
        self.n = 0
        self.missing: dict[str, tuple[Input, str]] = {}

    def add(self, schema: InputSchema) -> None:
        """Take one input's schema into account."""
        self.n += 1
        self.nbytes += schema.nbytes
        group = schema.input.pos(self.merge) if self.merge else None
        key = (group, schema.layout(set(self.concat)))
        self.layouts.setdefault(key, schema)
        first = self.first.get(group)
        if first is None or _order(schema.input) < _order(first.input):
            self.first[group] = schema
        for dim in self.concat:
            self._add_steps(dim, schema)
        self._fold_attrs(None, schema.attrs)
        for name, info in schema.variables.items():
            self._fold_attrs(name, info.attrs)
            first = self.scalars.setdefault(name, info.fingerprint)
            if info.is_scalar_coord and self.concat and first != info.fingerprint:
                self.varying.add(name)
            if self.merge and set(self.concat) & set(info.dims) and name not in self.concat:
                at = tuple(schema.input.pos(d) for d in self.concat)
                self.along.setdefault((name, at), {})[group] = (info, schema.input)
            if np.dtype(info.dtype).kind in "SU":
                self.strings[name] = _widest(self.strings.get(name, info.dtype), info.dtype)

    def add_missing(self, item: Input, error: str = "") -> None:
        """Take a skipped input (and why it failed) into account: its steps are known from
        the pattern only, and counted once the scanned inputs are in."""
        self.missing[item.url] = (item, error)

    def _add_missing_steps(self) -> None:
        for item, _ in self.missing.values():
            for dim in self.concat:
                n = self._nitems(dim)
                if n is None:
                    raise SchemaError(
                        f"cannot skip {item.url}: its length along {dim!r} is unknown; "
                        "give the pattern's ConcatDim nitems_per_file"
                    )
                self.counts[dim].setdefault(item.pos(dim), (n, item))

    def _all_failed(self) -> str:
        """Every input failed: how many, and the first causes (each naming its input)."""
        n = len(self.missing)
        failed = sorted(self.missing.values(), key=lambda pair: _order(pair[0]))
        causes = [
            error if error.startswith(f"{item.url}: ") else f"{item.url}: {error or 'failed'}"
            for item, error in failed[:SHOWN_CAUSES]
        ]
        more = f"; and {n - len(causes)} more" if n > len(causes) else ""
        return f"every input failed ({n} of {n}): {'; '.join(causes)}{more}"

    def _fold_attrs(self, scope: str | None, attrs: dict[str, Any]) -> None:
        """Attributes that differ between inputs are dropped, as xarray's drop_conflicts does."""
        for key, value in attrs.items():
            seen = self.attr_values.setdefault((scope, key), value)
            if seen is not value and not _equal(seen, value):
                self.conflicts.add((scope, key))

    def _add_steps(self, dim: str, schema: InputSchema) -> None:
        pos, item = schema.input.pos(dim), schema.input
        n = schema.sizes[dim]
        known = self.counts[dim].setdefault(pos, (n, item))
        if known[0] != n:
            raise SchemaError(
                f"{item.url} has {n} steps along {dim!r} but {known[1].url} has {known[0]}"
            )
        expected = self._nitems(dim)
        if expected is not None and n != expected:
            raise SchemaError(
                f"{item.url} has {n} steps along {dim!r}, the pattern says nitems_per_file={expected}"
            )
        if dim in schema.concat_values:
            values = schema.concat_values[dim]
            seen = self.values[dim].setdefault(pos, (values, item))
            if not _same_values(seen[0], values):
                raise SchemaError(f"{item.url} and {seen[1].url} differ in their {dim!r} values")

    def _nitems(self, dim: str) -> int | None:
        return next(d.nitems_per_file for d in self.pattern.concat_dims if d.name == dim)

    def result(self) -> DatasetSchema:
        """The combined schema; raises :class:`SchemaError` naming the inputs that disagree."""
        if not self.first:
            raise SchemaError(self._all_failed() if self.missing else "the pattern has no inputs")
        self._add_missing_steps()
        self._check_layouts()
        variables, owners = self._variables()
        dims, offsets, counts, values = {}, {}, {}, {}
        for dim in self.concat:
            counts[dim] = [self.counts[dim][p][0] for p in sorted(self.counts[dim])]
            offsets[dim] = list(np.cumsum([0, *counts[dim][:-1]]).tolist())
            dims[dim] = int(sum(counts[dim]))
            if self.values[dim]:
                values[dim] = self._concat_values(dim)
        for name in self.varying:
            variables[name] = replace(variables[name], dims=(self.concat[0],), shape=(0,))
        for name, dtype in self.strings.items():
            variables[name] = replace(variables[name], dtype=dtype)
        for info in variables.values():
            for d, n in zip(info.dims, info.shape, strict=True):
                dims.setdefault(d, n)
        out_vars = {
            name: replace(
                info,
                values=None,
                shape=tuple(dims[d] for d in info.dims),
                attrs=self._kept(name, info.attrs),
            )
            for name, info in variables.items()
        }
        return DatasetSchema(
            dims=dims,
            variables=out_vars,
            attrs=self._attrs(),
            concat_dims=self.concat,
            offsets=offsets,
            counts=counts,
            concat_values=values,
            owners=owners,
            promoted=tuple(sorted(self.varying)),
            nbytes=self.nbytes,
        )

    def _check_layouts(self) -> None:
        for (group, _), schema in self.layouts.items():
            ref = self.first[group]
            if schema is not ref and schema.layout(set(self.concat)) != ref.layout(
                set(self.concat)
            ):
                raise SchemaError(
                    f"{schema.input.url} does not match {ref.input.url}: {_difference(ref, schema, set(self.concat))}"
                )

    def _variables(self) -> tuple[dict[str, VarInfo], dict[str, int | None]]:
        variables: dict[str, VarInfo] = {}
        owners: dict[str, int | None] = {}
        for group in sorted(self.first, key=lambda g: -1 if g is None else g):
            schema = self.first[group]
            for name, info in schema.variables.items():
                if name not in variables:
                    variables[name], owners[name] = info, group
                elif set(self.concat) & set(info.dims) and name not in self.concat:
                    self._check_shared(name, owners[name], group, info.is_coord)
        return variables, owners

    def _check_shared(self, name: str, owner: int | None, group: int | None, coord: bool) -> None:
        """A variable under two merge keys is kept once if it is equal in every input."""
        for (var, _), held in self.along.items():
            if var != name or owner not in held or group not in held:
                continue
            (a, ia), (b, ib) = held[owner], held[group]
            if a.fingerprint is None or b.fingerprint is None:
                if coord:
                    continue
                raise SchemaError(
                    f"variable {name!r} is in both {ia.url} and {ib.url}, too large to compare "
                    f"in the scan (over {SHARED_BYTES} bytes an input); each merge key must "
                    "hold different variables"
                )
            if a.fingerprint != b.fingerprint:
                raise SchemaError(
                    f"variable {name!r} differs between {ia.url} and {ib.url}: {_change(a, b)}"
                )

    def _concat_values(self, dim: str) -> np.ndarray:
        parts = sorted(self.values[dim].items())
        for (_, (a, ia)), (_, (b, ib)) in itertools.pairwise(parts):
            if len(a) and len(b) and _sortable(a) and not b[0] > a[-1]:
                how = "repeats" if b[0] == a[-1] or b[0] in a else "comes before"
                raise SchemaError(
                    f"{dim} {b[0]} in {ib.url} {how} {dim} {a[-1]} in {ia.url}: "
                    f"inputs must be sorted along {dim!r} without duplicates or overlaps"
                )
        for values, item in self.values[dim].values():
            if _sortable(values) and len(values) > 1 and not np.all(values[1:] > values[:-1]):
                raise SchemaError(f"{item.url}: {dim!r} values are not strictly increasing")
        gaps = sorted(set(self.counts[dim]) - set(self.values[dim]))
        if gaps:
            return self._fill_gaps(dim, dict(parts), gaps)
        return np.concatenate([v for _, (v, _) in parts])

    def _fill_gaps(self, dim: str, parts: dict, gaps: list[int]) -> np.ndarray:
        """Concat values of skipped inputs, continuing the others' regular step."""
        known = np.concatenate([v for _, (v, _) in sorted(parts.items())])
        steps = np.diff(known)
        item = self.counts[dim][gaps[0]][1]
        if not len(steps) or known.dtype == object:
            raise SchemaError(
                f"cannot skip {item.url}: its {dim!r} values cannot be inferred from the "
                "other inputs'"
            )
        step = steps.min()
        n = sum(count for count, _ in self.counts[dim].values())
        first_pos = min(parts)
        before = sum(self.counts[dim][p][0] for p in self.counts[dim] if p < first_pos)
        values = parts[first_pos][0][0] + step * (np.arange(n) - before)
        start = 0
        for pos in sorted(self.counts[dim]):
            count = self.counts[dim][pos][0]
            if pos in parts and not _same_values(values[start : start + count], parts[pos][0]):
                raise SchemaError(
                    f"cannot skip {item.url}: the other inputs' {dim!r} values do not "
                    f"follow one regular step (see {parts[pos][1].url})"
                )
            start += count
        return values

    def _kept(self, scope: str | None, attrs: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in attrs.items() if (scope, k) not in self.conflicts}

    def _attrs(self) -> dict[str, Any]:
        first = self.first[min(self.first, key=lambda g: -1 if g is None else g)]
        return self._kept(None, first.attrs)


def _order(item: Input) -> tuple[int, ...]:
    return tuple(p for _, p in item.position)


def _same_values(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.all(a == b))


def _sortable(values: np.ndarray) -> bool:
    return values.dtype.kind in "iufcmM" or (
        values.dtype == object and len(values) > 0 and hasattr(values.flat[0], "calendar")
    )


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(np.array_equal(a, b)) if isinstance(a, np.ndarray | list) else bool(a == b)
    except (TypeError, ValueError):
        return False


def _change(a: VarInfo, b: VarInfo) -> str:
    """Where ``b`` first differs from ``a``, if their values were kept; else both summaries."""
    if a.values is None or b.values is None or a.values.shape != b.values.shape:
        return f"{b.summary} in the second, {a.summary} in the first"
    same = a.values == b.values
    if a.values.dtype.kind == "f" and b.values.dtype.kind == "f":
        same |= np.isnan(a.values) & np.isnan(b.values)
    index = tuple(int(i) for i in np.argwhere(~np.asarray(same))[0])
    at = dict(zip(a.dims, index, strict=True))
    return f"at {at}, {b.values[index]} in the second, {a.values[index]} in the first"


def _difference(ref: InputSchema, other: InputSchema, concat: set[str]) -> str:
    missing = sorted(set(ref.variables) - set(other.variables))
    if missing:
        return f"variable {', '.join(map(repr, missing))} is missing"
    extra = sorted(set(other.variables) - set(ref.variables))
    if extra:
        return f"it has extra variable {', '.join(map(repr, extra))}"
    for name, a in ref.variables.items():
        b = other.variables[name]
        if a.dims != b.dims:
            return f"{name!r} has dims {b.dims}, not {a.dims}"
        if _kind(a.dtype) != _kind(b.dtype):
            return f"{name!r} has dtype {b.dtype}, not {a.dtype}"
        for d, na, nb in zip(a.dims, a.shape, b.shape, strict=True):
            if d not in concat and na != nb:
                return f"different grid: {d!r} has {nb} points, not {na}"
        if a.fingerprint != b.fingerprint and not concat & set(a.dims):
            return f"different values of {name!r}: {b.summary}, not {a.summary}"
        if a.is_coord != b.is_coord:
            return f"{name!r} is {'a coordinate' if b.is_coord else 'a data variable'} only here"
    return "layouts differ"
