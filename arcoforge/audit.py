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
from dataclasses import asdict, dataclass, field

import fsspec
import numpy as np
import pandas as pd
import xarray as xr
import zarr

from .errors import ArcoforgeError, ValidationError, one_line
from .recipe import Recipe
from .validate import compare, sample_positions

MAX_FINDINGS_PER_CHECK = 20


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
        shown = problems[:MAX_FINDINGS_PER_CHECK]
        if len(problems) > len(shown):
            shown.append(f"{name}: and {len(problems) - len(shown)} more problems")
        self.findings.extend(shown)
        self.checks.append(Check(name, False, failed or f"{len(problems)} problem(s)"))

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
) -> StoreReport:
    """Audit the Zarr store (v2 or v3) at ``url``.

    Checks that it opens with xarray, that CF times decode, that every dimension
    coordinate is complete, sorted and without duplicates, that every chunk of every
    array is stored, and that ``sample`` chunks per array decode (all with ``full``).
    With ``against``, ``sample`` of the recipe's inputs (first, last, seeded random ones;
    all with ``full``) are opened as the bake opens them and compared with the store.
    Raises :class:`ValidationError` when ``url`` holds no Zarr store at all.
    """
    report = StoreReport(url)
    group = _open_group(url, storage_options)
    ds = _open_dataset(report, url, storage_options)
    if ds is not None:
        _check_coordinates(report, ds)
    _check_chunks(report, group, url, storage_options, None if full else sample)
    if ds is not None:
        with ds:
            if against is not None:
                _check_sources(report, ds, against, None if full else sample, cache)
    return report


def check_before_publish(url: str, storage_options: dict | None = None) -> StoreReport:
    """The fast audit (no sources, two chunks decoded per array) that a bake runs before it
    publishes; raises :class:`ValidationError` naming the first problem."""
    report = validate_store(url, storage_options=storage_options, sample=2)
    if not report.ok:
        raise ValidationError(report.summary())
    return report


# -- opening --------------------------------------------------------------------------


def _open_group(url: str, storage_options: dict | None) -> zarr.Group:
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    if not fs.exists(path):
        raise ValidationError(f"{url}: no such store")
    try:
        return zarr.open_group(_zarr_store(url, storage_options), mode="r", use_consolidated=False)
    except Exception as exc:
        cause = type(exc).__name__
        raise ValidationError(f"{url}: not a Zarr store (no group metadata: {cause})") from None


def _zarr_store(url: str, storage_options: dict | None):
    if "://" in url and not url.startswith("file://"):
        return zarr.storage.FsspecStore.from_url(
            url, storage_options=storage_options, read_only=True
        )
    return zarr.storage.LocalStore(url.removeprefix("file://"), read_only=True)


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
    if not (index.is_monotonic_increasing or index.is_monotonic_decreasing):
        ahead, behind = values[1:], values[:-1]
        breaks = ahead < behind if values[-1] >= values[0] else ahead > behind
        bad = int(np.flatnonzero(breaks)[0])
        problems.append(
            f"{name}: not sorted: {values[bad]} at index {bad} is followed by {values[bad + 1]}"
        )
    return problems


# -- chunks ---------------------------------------------------------------------------


def _check_chunks(
    report: StoreReport, group: zarr.Group, url: str, options: dict | None, sample: int | None
) -> None:
    """Every stored chunk (shard, when sharded) of every array is present; a sample of them
    (all when ``sample`` is None) decodes."""
    stored = _stored_keys(url, options)
    arrays = list(_arrays(group))
    missing, broken, decoded, total = [], [], 0, 0
    for path, array in arrays:
        coords = list(_grid(array))
        total += len(coords)
        keys = {c: f"{path}/{array.metadata.encode_chunk_key(c)}" for c in coords}
        absent = [k for c, k in keys.items() if k not in stored]
        missing += [f"{path}: chunk {k.removeprefix(path + '/')} is missing" for k in absent]
        present = [c for c in coords if keys[c] in stored]
        for c in _pick(present, sample, seed=path):
            decoded += 1
            problem = _decode_problem(array, c)
            if problem:
                key = keys[c].removeprefix(path + "/")
                broken.append(f"{path}: chunk {key} does not decode: {problem}")
    report.add("chunks-present", missing, f"{total} chunks of {len(arrays)} arrays")
    report.add("chunks-decode", broken, f"{decoded} of {total} chunks decoded")


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
    """All of ``items`` when ``k`` is None; else the first, the last and seeded random ones."""
    if k is None or len(items) <= k:
        return items
    ends = sample_positions(len(items), min(k, 2))
    rest = [i for i in range(len(items)) if i not in ends]
    chosen = ends + random.Random(seed).sample(rest, k - len(ends))
    return [items[i] for i in sorted(chosen)]


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
    report: StoreReport, ds: xr.Dataset, recipe: Recipe, sample: int | None, cache: str | None
) -> None:
    """Compare a sample of the recipe's inputs, opened as the bake opens them, with the
    store at their positions."""
    from .bake import cache_for
    from .openers import open_input
    from .plan import open_config

    inputs = list(recipe.pattern.inputs())
    chosen = _pick(inputs, sample, seed="inputs")
    if sample is not None and len(inputs) > sample:
        ends = [inputs[i] for i in sample_positions(len(inputs), 2)]
        chosen = sorted({*chosen, *ends}, key=inputs.index)
    problems = []
    with cache_for(recipe, cache) as cache_dir:
        config = open_config(recipe, cache_dir)
        for item in chosen:
            where = config.redact(item.url)
            try:
                with open_input(item.url, config) as src:
                    problems += _input_problems(src, ds, config.concat_dims, where)
            except ArcoforgeError as exc:
                problems.append(one_line(exc))
    report.add("sources", problems, f"{len(chosen)} of {len(inputs)} inputs equal the store")


def _input_problems(
    src: xr.Dataset, store: xr.Dataset, concat_dims: tuple[str, ...], where: str
) -> list[str]:
    """Compare one input with the store where its concat coordinate values are, a store
    chunk's length along the concat dim at a time."""
    dims = [d for d in concat_dims if d in src.dims]
    if not dims:
        return [f"{where}: none of the concat dims {concat_dims} is in the input"]
    dim = dims[0]
    positions, problem = _positions(src, store, dim, where)
    if problem:
        return [problem]
    src = _promote(src, store, dim)
    step = _chunk_length(store, dim)
    for name, var in src.variables.items():
        if name == dim:
            continue
        if name not in store.variables:
            return [f"{where}: variable {name!r} is missing from the store"]
        blocks = range(0, len(positions), step) if dim in var.dims else [None]
        for start in blocks:
            part = {dim: slice(start, start + step)} if start is not None else {}
            at = {dim: positions[start : start + step]} if start is not None else {}
            try:
                compare(
                    xr.Dataset({name: var.isel(part)}),
                    xr.Dataset({name: store.variables[name].isel(at)}),
                    where,
                )
            except ValidationError as exc:
                return [one_line(exc)]
    return []


def _positions(src: xr.Dataset, store: xr.Dataset, dim: str, where: str):
    if dim not in store.coords:
        return None, f"{where}: the store has no {dim!r} coordinate"
    found = pd.Index(store[dim].values).get_indexer(src[dim].values)
    if (found < 0).any():
        value = src[dim].values[np.flatnonzero(found < 0)[0]]
        return None, f"{where}: {dim} value {value} is not in the store"
    return found, None


def _promote(src: xr.Dataset, store: xr.Dataset, dim: str) -> xr.Dataset:
    """Scalar coordinates that the store holds along ``dim`` (they differed between inputs)."""
    scalars = {
        n: src[n].expand_dims(dim)
        for n in src.coords
        if src[n].ndim == 0 and n in store.variables and dim in store.variables[n].dims
    }
    return src.assign_coords(scalars) if scalars else src


def _chunk_length(store: xr.Dataset, dim: str) -> int:
    for var in store.data_vars.values():
        chunks = var.encoding.get("chunks") or var.encoding.get("preferred_chunks", {})
        if dim in var.dims and chunks and not isinstance(chunks, dict):
            return int(chunks[var.dims.index(dim)])
    return store.sizes[dim]


# -- dispatch -------------------------------------------------------------------------

Checker = Callable[..., StoreReport]
CHECKERS: list[tuple[Callable[[str], bool], Checker]] = []


def checker_for(url: str) -> Checker:
    """The audit for the store at ``url``: the first of :data:`CHECKERS` whose test accepts
    the URL (reference stores register theirs there), else the Zarr audit. A checker takes
    the URL and the keywords of :func:`validate_store` and returns a :class:`StoreReport`."""
    return next((check for accepts, check in CHECKERS if accepts(url)), validate_store)
