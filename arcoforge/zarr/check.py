"""The Zarr product's checks: each write task's values against sample inputs, and the
store's own soundness (it opens, times decode, coordinates sound, every chunk there and
decoding) before it is published."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
import xarray as xr
import zarr

from arcoforge.amounts import count
from arcoforge.core.compare import compare_stored
from arcoforge.core.open import OpenConfig, open_input
from arcoforge.core.report import StoreReport, check_coordinates, chunk_grid, pick, storage_chunks
from arcoforge.core.targets import target_at
from arcoforge.errors import ValidationError, one_line, quietly
from arcoforge.recipe.patterns import Input
from arcoforge.sources.secrets import masked_cause, secret_values

PUBLISH_DECODE_BUDGET = 16 * 2**20


@dataclass(frozen=True)
class CheckTask:
    """Compare ``variables`` of part of one input, opened by xarray, with the store."""

    target: Any
    open: OpenConfig
    input: Input
    source: tuple[tuple[str, slice], ...]
    store: tuple[tuple[str, slice], ...]
    variables: tuple[str, ...]


def check_input(task: CheckTask) -> str:
    """Raise :class:`ValidationError` unless the store holds exactly the input's values,
    packed variables compared in the store's encoding."""
    out = open_store(task.target)
    try:
        with open_input(task.input.url, task.open) as src:
            where = task.open.redact(task.input.url)
            own = _isel(_own(src, task), task.source)
            compare_stored(own, _isel(out, task.store)[list(own.variables)], where)
    finally:
        out.close()
    return task.input.url


def _own(src: xr.Dataset, task: CheckTask) -> xr.Dataset:
    """The task's variables and the coordinates written before any task ran; coordinates
    along concat dims that other tasks write are left to those tasks."""
    ds = src[[n for n in task.variables if n in src.variables]]
    concat = set(task.open.concat_dims)
    others = [
        n
        for n, c in ds.coords.items()
        if n not in ds.dims and n not in task.variables and concat & set(c.dims)
    ]
    return ds.drop_vars(others)


def _isel(ds: xr.Dataset, sel) -> xr.Dataset:
    return ds.isel({d: s for d, s in sel if d in ds.dims})


def open_store(target) -> xr.Dataset:
    """Open a store without consolidated metadata and without decoding: parts that other
    tasks have yet to write hold NaN, which a cftime calendar cannot decode, and packed
    variables are compared as stored."""
    return xr.open_dataset(
        target.url,
        engine="zarr",
        chunks=None,
        consolidated=False,
        decode_times=False,
        mask_and_scale=False,
        storage_options=target.storage_options,
    )


@quietly
def check_store(
    url: str,
    storage_options: dict | None = None,
    *,
    sample: int | None = 5,
    decode_budget: int | None = None,
    also: Callable[[StoreReport, xr.Dataset, zarr.Group], None] | None = None,
) -> StoreReport:
    """Check the Zarr store (v2 or v3) at ``url`` as a reader sees it.

    It opens with xarray, its CF times decode, every dimension coordinate is complete,
    sorted and without duplicates, every chunk of every array is stored, and ``sample``
    chunks per array decode (all when None), within ``decode_budget`` decoded bytes if
    given, smallest first. ``also(report, dataset, group)`` adds checks of its own (the
    comparison with the sources, say). Raises :class:`ValidationError` when ``url`` holds
    no Zarr store at all.
    """
    report = StoreReport(url)
    group = open_group(url, storage_options)
    ds = open_checked(report, url, storage_options)
    try:
        if ds is not None:
            check_coordinates(report, ds)
        check_chunks(report, group, url, storage_options, sample, decode_budget)
        if ds is not None and also is not None:
            also(report, ds, group)
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
    report = check_store(url, storage_options, sample=2, decode_budget=PUBLISH_DECODE_BUDGET)
    if not report.ok:
        raise ValidationError(report.summary())
    return report


def open_group(url: str, storage_options: dict | None) -> zarr.Group:
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    if not fs.exists(path):
        raise ValidationError(f"{url}: no such store")
    try:
        store = target_at(url, storage_options=storage_options).zarr_store()
        return zarr.open_group(store, mode="r", use_consolidated=False)
    except Exception as exc:
        cause = type(exc).__name__
        secrets = secret_values(open_kwargs=storage_options)
        raise ValidationError(
            f"{url}: not a Zarr store (no group metadata: {cause})"
        ) from masked_cause(exc, secrets)


def open_checked(report: StoreReport, url: str, options: dict | None) -> xr.Dataset | None:
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


def check_chunks(
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
        coords = list(chunk_grid(array))
        total += len(coords)
        keys = {c: array.metadata.encode_chunk_key(c) for c in coords}
        missing += [
            f"{path}: chunk {k} is missing" for k in keys.values() if f"{path}/{k}" not in stored
        ]
        present = [c for c in coords if f"{path}/{keys[c]}" in stored]
        chosen += [(path, array, c, keys[c]) for c in pick(present, sample, seed=path)]
    if budget is not None:
        chosen = _within(chosen, budget)
    broken = [
        f"{path}: chunk {key} does not decode: {problem}"
        for path, array, c, key in chosen
        if (problem := decode_problem(array, c))
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
        return math.prod(storage_chunks(array)) * array.dtype.itemsize

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


def decode_problem(array: zarr.Array, coords: tuple[int, ...]) -> str | None:
    """Why the stored chunk at ``coords`` does not decode, read through zarr's codecs."""
    region = tuple(
        slice(i * c, min((i + 1) * c, n))
        for i, c, n in zip(coords, storage_chunks(array), array.shape, strict=True)
    )
    try:
        array[region]
    except Exception as exc:
        return one_line(exc)
    return None
