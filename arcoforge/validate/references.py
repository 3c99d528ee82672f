"""Audit a reference store: it opens, its coordinates are sound, every reference points
into a file that exists and is long enough, sample chunks decode, and (given its recipe)
it holds its sources' values."""

from __future__ import annotations

import json
from collections.abc import Iterator

import fsspec
import numpy as np
import pandas as pd
import zarr

from arcoforge.core.report import StoreReport, check_coordinates, chunk_grid, pick
from arcoforge.errors import ValidationError, one_line, quietly
from arcoforge.recipe.steps import Recipe
from arcoforge.references.check import unreadable
from arcoforge.references.formats import icechunk
from arcoforge.references.store import ICECHUNK, is_icechunk_repository, open_references
from arcoforge.validate.sources import check_sources

Ref = tuple[str, str, int, int]  # key, path, offset, length


@quietly
def validate_references(
    url: str,
    *,
    storage_options: dict | None = None,
    against: Recipe | None = None,
    full: bool = False,
    sample: int = 5,
    cache: str | None = None,
    decode_budget: int | None = None,
) -> StoreReport:
    """Audit the kerchunk JSON, Parquet or Icechunk references at ``url`` (the keywords
    of :func:`arcoforge.validate.validate_store`; ``storage_options`` reach JSON or Parquet
    references on an object store)."""
    if is_icechunk_repository(url):
        url = ICECHUNK + url.removeprefix("file://")
    report = StoreReport(url)
    sampled = None if full else sample
    try:
        with open_references(url, storage_options) as ds:
            report.add("opens", [], f"{len(ds.data_vars)} variables, {dict(ds.sizes)}")
            texts = [str(error) for error in unreadable(ds, url)]
            report.add("text-decodes", texts, "every char and string variable reads")
            check_coordinates(report, ds)
            if against is not None:
                group = _group(url, storage_options)
                check_sources(report, ds, group, recipe=against, sample=sampled, cache=cache)
    except ValidationError:
        raise
    except Exception as exc:
        report.add("opens", [f"{url}: xarray cannot open it: {one_line(exc)}"], "")
    if url.startswith(ICECHUNK):
        report.add("ranges", *_missing_files(url.removeprefix(ICECHUNK)))
    else:
        refs = list(_references(url, storage_options))
        report.add("ranges", _range_problems(refs), f"{len(refs)} references in bounds")
    _check_decoding(report, url, sampled, storage_options)
    return report


def _references(url: str, storage_options: dict | None = None) -> Iterator[Ref]:
    """Every reference to a byte range of a file, from JSON or Parquet."""
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    if fs.isfile(path):
        refs = json.loads(fs.cat_file(path)).get("refs", {})
        for key, value in refs.items():
            if isinstance(value, list) and len(value) == 3:
                yield key, value[0], int(value[1]), int(value[2])
        return

    meta = json.loads(fs.cat_file(f"{path}/.zmetadata"))["metadata"]
    for name in sorted({k.rsplit("/", 1)[0] for k in meta if k.endswith("/.zarray")}):
        zarray = meta[f"{name}/.zarray"]
        grid = [-(-n // c) for n, c in zip(zarray["shape"], zarray["chunks"], strict=True)]
        keys = _keys(grid)
        start = 0
        parts = [p for p in fs.ls(f"{path}/{name}", detail=False) if p.endswith(".parq")]
        for part in sorted(parts, key=_record):
            with fs.open(part, "rb") as f:
                frame = pd.read_parquet(f, engine="fastparquet", columns=["path", "offset", "size"])
            rows = frame.itertuples(index=False)
            for key, (p, offset, size) in zip(keys[start:], rows, strict=False):
                if isinstance(p, str):
                    yield f"{name}/{key}", p, int(offset), int(size)
            start += len(frame)


def _record(path: str) -> int:
    return int(path.rsplit("/", 1)[-1].split(".")[1])


def _keys(grid: list[int]) -> list[str]:
    if not grid:
        return ["0"]
    return [".".join(map(str, i)) for i in np.ndindex(*grid)]


def _range_problems(refs: list[Ref]) -> list[str]:
    """Files that are missing and byte ranges beyond the end of their file."""
    problems, sizes = [], {}
    for key, path, offset, length in refs:
        if path not in sizes:
            sizes[path] = _size(path)
        size = sizes[path]
        if size is None:
            continue
        if offset + length > size:
            problems.append(
                f"{key}: bytes {offset}-{offset + length} lie beyond the end of {path} "
                f"({size} bytes)"
            )
    missing = [p for p, s in sizes.items() if s is None]
    for path in missing:
        keys = [k for k, p, *_ in refs if p == path]
        problems.insert(0, f"{path}: missing ({len(keys)} references, first {min(keys)})")
    return problems


def _missing_files(path: str) -> tuple[list[str], str]:
    """The files an Icechunk repository's virtual chunks point into that are missing
    (Icechunk does not list the byte ranges: the decode check reads a sample of them)."""
    locations = icechunk.virtual_locations(path)
    missing = [
        f"{p}: missing (virtual chunks point into it)" for p in locations if _size(p) is None
    ]
    return missing, f"{len(locations)} files the virtual chunks point into are there"


def _size(path: str) -> int | None:
    try:
        fs, inner = fsspec.core.url_to_fs(path)
        return int(fs.size(inner))
    except (FileNotFoundError, OSError):
        return None


def _check_decoding(
    report: StoreReport, url: str, sample: int | None, storage_options: dict | None = None
) -> None:
    """A sample of chunks of every array (all with ``sample`` None) decodes."""
    try:
        group = _group(url, storage_options)
    except Exception as exc:
        report.add("chunks-decode", [f"{url}: cannot open as Zarr: {one_line(exc)}"], "")
        return
    where = _locations(url, storage_options)
    broken, total, decoded = [], 0, 0
    for name, array in sorted(group.arrays()):
        coords = list(chunk_grid(array))
        total += len(coords)
        for c in pick(coords, sample, seed=name):
            decoded += 1
            problem = _decode(array, c)
            if problem:
                key = f"{name}/{'.'.join(map(str, c)) or '0'}"
                broken.append(f"{key}{where.get(key, '')} does not decode: {problem}")
    report.add("chunks-decode", broken, f"{decoded} of {total} chunks decoded")


def _decode(array: zarr.Array, coords: tuple[int, ...]) -> str | None:
    region = tuple(
        slice(i * c, min((i + 1) * c, n))
        for i, c, n in zip(coords, array.chunks, array.shape, strict=True)
    )
    try:
        array[region]
    except Exception as exc:
        return one_line(exc)
    return None


def _group(url: str, storage_options: dict | None = None) -> zarr.Group:
    if url.startswith(ICECHUNK):
        return zarr.open_group(icechunk.readonly_store(url.removeprefix(ICECHUNK)), mode="r")
    options = {"fo": url.removeprefix("file://"), "remote_options": {"asynchronous": True}}
    if storage_options:
        options["target_options"] = storage_options
    store = zarr.storage.FsspecStore.from_url(
        "reference://", storage_options=options, read_only=True
    )
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    consolidated = fs.isfile(path)
    return zarr.open_group(store, mode="r", zarr_format=2, use_consolidated=consolidated)


def _locations(url: str, storage_options: dict | None = None) -> dict[str, str]:
    """`` (bytes A-B of FILE)`` for each referenced chunk key, to name what is broken."""
    if url.startswith(ICECHUNK):
        return {}
    return {
        key: f" (bytes {o}-{o + n} of {p})" for key, p, o, n in _references(url, storage_options)
    }
