"""Audit a finished store: it opens, its coordinates are sound, every chunk is there and
decodes, and (given its recipe) it holds its sources' values.

Unlike the in-bake checks of :mod:`arcoforge.validate`, which compare what each write task
wrote, an audit looks at a store from the outside, as a reader would, at any time.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field

import fsspec
import numpy as np
import pandas as pd
import xarray as xr
import zarr

from arcoforge.amounts import count
from arcoforge.core.compare import compare
from arcoforge.errors import ArcoforgeError, ValidationError, one_line
from arcoforge.recipe.steps import Recipe
from arcoforge.zarr.write import Target, zarr_store

MAX_FINDINGS_PER_CHECK = 20
PUBLISH_DECODE_BUDGET = 16 * 2**20


@dataclass
class Check:
    """One check of a store: its name, whether it passed, and one line of detail."""

    name: str
    ok: bool
    detail: str


@dataclass
class StoreReport:
    """What an audit of the store at ``url`` found."""

    url: str
    checks: list[Check] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks) and not self.findings

    def add(self, name: str, problems: list[str], passed: str, failed: str = "") -> None:
        """Record check ``name``: passed when ``problems`` is empty, else add them (capped)."""
        if not problems:
            self.checks.append(Check(name, True, passed))
            return
        new = [p for p in problems if p not in self.findings]  # seen by an earlier check
        shown = new[:MAX_FINDINGS_PER_CHECK]
        if len(new) > len(shown):
            shown.append(f"{name}: and {len(new) - len(shown)} more problems")
        self.findings.extend(shown)
        self.checks.append(Check(name, False, failed or count(len(problems), "problem")))

    def summary(self) -> str:
        """One line: healthy, or how many checks failed and the first finding."""
        failed = [c.name for c in self.checks if not c.ok]
        if not failed:
            return f"{self.url}: healthy ({len(self.checks)} checks passed)"
        first = self.findings[0] if self.findings else failed[0]
        return f"{self.url}: {len(failed)} of {len(self.checks)} checks failed; first: {first}"

    def to_dict(self) -> dict:
        return {
            "url": self.url,
            "ok": self.ok,
            "checks": [asdict(c) for c in self.checks],
            "findings": list(self.findings),
        }


def validate_store(
    url: str,
    *,
    storage_options: dict | None = None,
    against: Recipe | None = None,
    full: bool = False,
    sample: int = 5,
    cache: str | None = None,
    decode_budget: int | None = None,
) -> StoreReport:
    """Audit the Zarr store (v2 or v3) at ``url``.

    Checks that it opens with xarray, that CF times decode, that every dimension
    coordinate is complete, sorted and without duplicates, that every chunk of every
    array is stored, and that ``sample`` chunks per array decode (all with ``full``).
    With ``against``, ``sample`` of the recipe's inputs (first, last, seeded random ones;
    all with ``full``) are opened as the bake opens them and compared with the store.
    ``decode_budget`` caps the decoded bytes of the chunks decoded, smallest first.
    Raises :class:`ValidationError` when ``url`` holds no Zarr store at all.
    """
    report = StoreReport(url)
    group = _open_group(url, storage_options)
    sampled = None if full else sample
    ds = _open_dataset(report, url, storage_options)
    try:
        if ds is not None:
            _check_coordinates(report, ds)
        _check_chunks(report, group, url, storage_options, sampled, decode_budget)
        if ds is not None and against is not None:
            _check_sources(report, ds, group, against, sampled, cache)
    finally:
        if ds is not None:
            ds.close()
    return report


def check_before_publish(url: str, storage_options: dict | None = None) -> StoreReport:
    """The fast audit that a bake runs before it publishes; raises :class:`ValidationError`
    naming the first problem.

    Every check but the sources', with at most two chunks per array and 16 MiB in all
    decoded, smallest first: the write tasks have already read back the chunks of the
    first and the last input, so this adds what they cannot see (lost chunks, damaged
    coordinates) and stays cheap however large the chunks are.
    """
    report = validate_store(
        url, storage_options=storage_options, sample=2, decode_budget=PUBLISH_DECODE_BUDGET
    )
    if not report.ok:
        raise ValidationError(report.summary())
    return report


# -- opening --------------------------------------------------------------------------


def _open_group(url: str, storage_options: dict | None) -> zarr.Group:
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    if not fs.exists(path):
        raise ValidationError(f"{url}: no such store")
    try:
        store = zarr_store(Target(url, storage_options=storage_options))
        return zarr.open_group(store, mode="r", use_consolidated=False)
    except Exception as exc:
        cause = type(exc).__name__
        raise ValidationError(f"{url}: not a Zarr store (no group metadata: {cause})") from None


def _open_dataset(report: StoreReport, url: str, options: dict | None) -> xr.Dataset | None:
    """Check that xarray opens the store and decodes its CF times; return it decoded as far
    as it decodes. Metadata is read from each array, not from the consolidated copy."""

    def open_(decode_times: bool) -> xr.Dataset:
        return xr.open_dataset(
            url,
            engine="zarr",
            chunks=None,
            consolidated=False,
            decode_times=decode_times,
            decode_timedelta=decode_times,
            storage_options=options,
        )

    try:
        raw = open_(False)
    except Exception as exc:
        report.add("opens", [f"{url}: xarray cannot open it: {one_line(exc)}"], "")
        return None
    report.add("opens", [], f"{len(raw.data_vars)} variables, {_sizes(raw)}")
    problems = [p for name in _time_variables(raw) for p in _time_problems(raw, name)]
    names = ", ".join(_time_variables(raw)) or "none"
    report.add("cf-time", problems, f"times decode: {names}")
    if problems:
        return raw
    raw.close()
    return open_(True)


def _sizes(ds: xr.Dataset) -> str:
    return " ".join(f"{k}={v}" for k, v in ds.sizes.items()) or "no dims"


def _time_variables(ds: xr.Dataset) -> list[str]:
    return [str(n) for n, v in ds.variables.items() if " since " in str(v.attrs.get("units", ""))]


def _time_problems(ds: xr.Dataset, name: str) -> list[str]:
    var = ds.variables[name]
    units = var.attrs.get("units")
    try:
        decoded = xr.decode_cf(xr.Dataset({name: var}), decode_timedelta=True)[name]
        if decoded.ndim <= 1:
            decoded.load()
    except Exception as exc:
        return [f"{name}: units {units!r} do not decode: {one_line(exc)}"]
    if decoded.dtype.kind not in "mMO":
        return [f"{name}: units {units!r} decode to {decoded.dtype}, not times"]
    return []


# -- coordinates ----------------------------------------------------------------------


def _check_coordinates(report: StoreReport, ds: xr.Dataset) -> None:
    names = [str(d) for d in ds.dims if d in ds.coords]
    problems = [p for name in names for p in _coordinate_problems(name, ds[name].values)]
    report.add("coordinates", problems, f"{', '.join(names) or 'none'}: complete, sorted, unique")


def _coordinate_problems(name: str, values: np.ndarray) -> list[str]:
    """Missing values, duplicates and breaks in the order of one dimension coordinate."""
    index = pd.Index(values)
    missing = np.flatnonzero(pd.isna(values))
    if missing.size:
        return [f"{name}: {missing.size} missing value(s), first at index {missing[0]}"]
    problems = []
    dup = np.flatnonzero(index.duplicated())
    if dup.size:
        first = int(dup[0])
        earlier = int(np.flatnonzero(values[:first] == values[first])[0])
        problems.append(f"{name}: duplicate value {values[first]} at indices {earlier} and {first}")
    labels = values.dtype.kind in "SUT"  # names (ensemble members) keep the pattern's order
    if not labels and not (index.is_monotonic_increasing or index.is_monotonic_decreasing):
        ahead, behind = values[1:], values[:-1]
        breaks = ahead < behind if values[-1] >= values[0] else ahead > behind
        bad = int(np.flatnonzero(breaks)[0])
        problems.append(
            f"{name}: not sorted: {values[bad]} at index {bad} is followed by {values[bad + 1]}"
        )
    return problems


# -- chunks ---------------------------------------------------------------------------


def _check_chunks(
    report: StoreReport,
    group: zarr.Group,
    url: str,
    options: dict | None,
    sample: int | None,
    budget: int | None = None,
) -> None:
    """Every stored chunk (shard, when sharded) of every array is present; a sample of them
    (all when ``sample`` is None; within ``budget`` decoded bytes, if given) decodes."""
    stored = _stored_keys(url, options)
    arrays = list(_arrays(group))
    missing, chosen, total = [], [], 0
    for path, array in arrays:
        coords = list(_grid(array))
        total += len(coords)
        keys = {c: array.metadata.encode_chunk_key(c) for c in coords}
        missing += [
            f"{path}: chunk {k} is missing" for k in keys.values() if f"{path}/{k}" not in stored
        ]
        present = [c for c in coords if f"{path}/{keys[c]}" in stored]
        chosen += [(path, array, c, keys[c]) for c in _pick(present, sample, seed=path)]
    if budget is not None:
        chosen = _within(chosen, budget)
    broken = [
        f"{path}: chunk {key} does not decode: {problem}"
        for path, array, c, key in chosen
        if (problem := _decode_problem(array, c))
    ]
    report.add(
        "chunks-present", missing, f"{count(total, 'chunk')} of {count(len(arrays), 'array')}"
    )
    limit = f" (budget {budget >> 20} MiB)" if budget is not None else ""
    report.add("chunks-decode", broken, f"{len(chosen)} of {total} chunks decoded{limit}")


def _within(chosen: list, budget: int) -> list:
    """The smallest chunks of ``chosen`` whose decoded bytes add up to at most ``budget``."""

    def size(entry) -> int:
        array = entry[1]
        return math.prod(_storage_chunks(array)) * array.dtype.itemsize

    kept, used = [], 0
    for entry in sorted(chosen, key=size):
        used += size(entry)
        if used > budget:
            break
        kept.append(entry)
    return kept


def _stored_keys(url: str, options: dict | None) -> set[str]:
    """Every file under the store, relative to it, listed once."""
    fs, root = fsspec.core.url_to_fs(url, **(options or {}))
    root = root.rstrip("/")
    return {p.removeprefix(root).lstrip("/") for p in fs.find(root)}


def _arrays(group: zarr.Group, prefix: str = "") -> Iterator[tuple[str, zarr.Array]]:
    for name, array in sorted(group.arrays()):
        yield f"{prefix}{name}", array
    for name, sub in sorted(group.groups()):
        yield from _arrays(sub, f"{prefix}{name}/")


def _storage_chunks(array: zarr.Array) -> tuple[int, ...]:
    """The shape of one stored object: a shard when sharded, else a chunk."""
    return tuple(array.shards or array.chunks)


def _grid(array: zarr.Array) -> Iterator[tuple[int, ...]]:
    shape = [math.ceil(n / c) for n, c in zip(array.shape, _storage_chunks(array), strict=True)]
    return itertools.product(*(range(n) for n in shape))


def _pick(items: list, k: int | None, seed: str) -> list:
    """All of ``items`` when ``k`` is None; else ``k`` of them: the first, the last and
    seeded random ones between."""
    if k is None or len(items) <= k:
        return items
    ends = [0, len(items) - 1][: max(k, 0)]
    between = random.Random(seed).sample(range(1, len(items) - 1), max(k - len(ends), 0))
    return [items[i] for i in sorted(ends + between)]


def _decode_problem(array: zarr.Array, coords: tuple[int, ...]) -> str | None:
    """Why the stored chunk at ``coords`` does not decode, read through zarr's codecs."""
    region = tuple(
        slice(i * c, min((i + 1) * c, n))
        for i, c, n in zip(coords, _storage_chunks(array), array.shape, strict=True)
    )
    try:
        array[region]
    except Exception as exc:
        return one_line(exc)
    return None


# -- sources --------------------------------------------------------------------------


def _check_sources(
    report: StoreReport,
    ds: xr.Dataset,
    group: zarr.Group,
    recipe: Recipe,
    sample: int | None,
    cache: str | None,
) -> None:
    """Compare a sample of the recipe's inputs, opened as the bake opens them, with the
    store at their positions, one store chunk along the concat dim at a time: each chunk
    is read once for all the inputs in it. A store chunk that does not decode, an input
    that does not open or lacks a variable of the store, is a problem found, not a crash."""
    from arcoforge.bake.run import cache_for
    from arcoforge.zarr.plan import open_config

    inputs = list(recipe.pattern.inputs())
    chosen = _pick(inputs, sample, seed="inputs")
    dims = [d.name for d in recipe.pattern.concat_dims]
    if not dims or dims[0] not in ds.coords:
        missing = f"no concat coordinate {dims[0]!r}" if dims else "no concat dim in the recipe"
        report.add("sources", [f"{report.url}: {missing} to find the inputs by"], "")
        return
    problems: list[str] = []
    with cache_for(recipe, cache) as cache_dir:
        config = open_config(recipe, cache_dir)
        dim = dims[0]
        index, step = pd.Index(ds[dim].values), _chunk_length(ds, dim)
        by_chunk: dict[int, list[Span]] = {}
        merged = recipe.pattern.merge_dim is not None  # each input holds some variables
        for item in chosen:
            try:
                for span in _spans(item, ds, index, config, dim, step, merged, problems):
                    by_chunk.setdefault(span.store.start // step, []).append(span)
            except Exception as exc:
                problems.append(_naming(config.redact(item.url), exc))
        static_done: set[tuple[str, str]] = set()
        reader = ChunkReader(ds, group, dim, step)
        for index in sorted(by_chunk):
            chunk = slice(index * step, min((index + 1) * step, ds.sizes[dim]))
            problems += _compare_chunk(reader, chunk, by_chunk[index], config, static_done)
    report.add("sources", problems, f"{len(chosen)} of {len(inputs)} inputs equal the store")


@dataclass(frozen=True)
class Span:
    """The steps of one input that lie in one store chunk along the concat dim."""

    url: str
    source: np.ndarray  # indices along the dim in the input
    store: slice  # where they are in the store (contiguous)


def _spans(
    item,
    store: xr.Dataset,
    index: pd.Index,
    config,
    dim: str,
    step: int,
    merged: bool,
    problems: list[str],
) -> list[Span]:
    """Where the input's concat coordinate values are in the store, split by store chunk;
    the store's data variables the input lacks (unless inputs are merged) go to
    ``problems``."""
    from arcoforge.core.open import open_input

    where = config.redact(item.url)
    with open_input(item.url, config) as src:
        if dim not in src.dims:
            raise ValidationError(f"{where}: no dimension {dim!r} in the input")
        values = src[dim].values
        if not merged:
            problems += [
                f"{where}: lacks variable {name!r} that the store has"
                for name in store.data_vars
                if name not in src.variables
            ]
    found = index.get_indexer(values)
    if (found < 0).any():
        value = values[np.flatnonzero(found < 0)[0]]
        raise ValidationError(f"{where}: {dim} value {value} is not in the store")
    if (np.diff(found) != 1).any():
        raise ValidationError(f"{where}: its {dim} values are not consecutive in the store")
    spans = []
    for k in np.unique(found // step):
        at = np.flatnonzero(found // step == k)
        spans.append(Span(item.url, at, slice(int(found[at[0]]), int(found[at[-1]]) + 1)))
    return spans


def _naming(where: str, exc: Exception) -> str:
    """``exc`` in one line that names ``where`` (an input) first."""
    text = one_line(exc)
    return text if text.startswith(where) else f"{where}: {text}"


@dataclass
class ChunkReader:
    """Reads a variable of the store, all of it or one chunk along ``dim``; a read that
    fails names the stored chunk that does not decode, as the chunks check would."""

    store: xr.Dataset
    group: zarr.Group
    dim: str
    step: int

    def read(self, name: str, chunk: slice | None) -> xr.Variable | str:
        """The values of ``name`` (in ``chunk`` along the dim), or a problem line."""
        var = self.store.variables[name]
        if chunk is not None:
            var = var.isel({self.dim: chunk})
        try:
            return var.load()
        except Exception as exc:
            return self._undecodable(name, chunk, exc)

    def _undecodable(self, name: str, chunk: slice | None, exc: Exception) -> str:
        array = self.group[name]
        axis = list(self.store.variables[name].dims).index(self.dim) if chunk else None
        for coords in _grid(array):
            if axis is not None and coords[axis] != chunk.start // self.step:
                continue
            problem = _decode_problem(array, coords)
            if problem:
                key = array.metadata.encode_chunk_key(coords)
                return f"{name}: chunk {key} does not decode: {problem}"
        return f"{name}: does not read: {one_line(exc)}"


def _compare_chunk(
    reader: ChunkReader,
    chunk: slice,
    spans: list[Span],
    config,
    static_done: set[tuple[str, str]],
) -> list[str]:
    """Compare the spans of one store chunk, reading each variable's chunk once."""
    from arcoforge.core.open import open_input

    store, dim = reader.store, reader.dim
    problems, opened = [], []
    with ExitStack() as stack:
        for span in spans:
            try:
                src = stack.enter_context(open_input(span.url, config))
            except ArcoforgeError as exc:
                problems.append(one_line(exc))
                continue
            opened.append((span, _promote(src, store, dim), config.redact(span.url)))
        failed: set[str] = set()
        names = dict.fromkeys(n for _, src, _ in opened for n in src.variables if n != dim)
        for name in names:
            if name not in store.variables:
                problems += [
                    f"{w}: variable {name!r} is missing from the store" for *_, w in opened
                ]
                break
            along = dim in store.variables[name].dims
            todo = [
                (span, src, where)
                for span, src, where in opened
                if name in src.variables
                and span.url not in failed
                and (along or (span.url, name) not in static_done)
            ]
            if not todo:
                continue
            block = reader.read(name, chunk if along else None)
            if isinstance(block, str):
                problems.append(block)
                continue
            for span, src, where in todo:
                static_done.add((span.url, name))
                want, got = src.variables[name], block
                if along:
                    want = want.isel({dim: span.source})
                    at = slice(span.store.start - chunk.start, span.store.stop - chunk.start)
                    got = block.isel({dim: at})
                try:
                    compare(xr.Dataset({name: want}), xr.Dataset({name: got}), where)
                except ValidationError as exc:
                    problems.append(one_line(exc))
                    failed.add(span.url)
    return problems


def _promote(src: xr.Dataset, store: xr.Dataset, dim: str) -> xr.Dataset:
    """Scalar coordinates that the store holds along ``dim`` (they differed between inputs)."""
    scalars = {
        n: src[n].expand_dims(dim)
        for n in src.coords
        if src[n].ndim == 0 and n in store.variables and dim in store.variables[n].dims
    }
    return src.assign_coords(scalars) if scalars else src


def _chunk_length(store: xr.Dataset, dim: str) -> int:
    """The chunk length along ``dim`` of the store's first data variable that has it."""
    for var in store.data_vars.values():
        chunks = var.encoding.get("chunks")
        if dim in var.dims and chunks:
            return int(chunks[var.dims.index(dim)])
    return max(store.sizes[dim], 1)


# -- dispatch -------------------------------------------------------------------------

Checker = Callable[..., StoreReport]


def _is_references(url: str, storage_options: dict | None = None) -> bool:
    from arcoforge.references.store import is_reference_url

    return is_reference_url(url, storage_options)


def _check_references(url: str, **kwargs) -> StoreReport:
    from arcoforge.validate.references import validate_references

    return validate_references(url, **kwargs)


CHECKERS: list[tuple[Callable[[str, dict | None], bool], Checker]] = [
    (_is_references, _check_references)
]


def checker_for(url: str, storage_options: dict | None = None) -> Checker:
    """The audit for the store at ``url``: the first of :data:`CHECKERS` whose test accepts
    the URL and ``storage_options`` (reference stores register theirs there), else the
    Zarr audit. A checker takes the URL and the keywords of :func:`validate_store` and
    returns a :class:`StoreReport`."""
    found = (check for accepts, check in CHECKERS if accepts(url, storage_options))
    return next(found, validate_store)
