"""Combine the manifests of many inputs into one, as arrays: reference grids are joined
with one ``numpy.concatenate`` per array, whatever the number of inputs (along several
concat dims, one per row of inputs)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import xarray as xr

from arcoforge.errors import SchemaError
from arcoforge.references.manifest import NO_FILE, ArrayRefs, Manifest, inline_array

ALIGN = 64  # bytes: where each array of a joined buffer starts
SAME_META = ("dtype", "compressor", "filters", "fill_value", "order")


class CombineError(SchemaError):
    """Manifests that do not combine."""


def concat(
    manifests: Sequence[Manifest],
    dim: str,
    urls: Sequence[str],
    identical: Sequence[str] = (),
) -> Manifest:
    """``manifests`` (of the inputs at ``urls``) one after the other along ``dim``.

    Arrays with ``dim`` are concatenated; others are the first input's, and those named in
    ``identical`` must be the same in every input (compared when they are inline). Every
    input but the last must hold whole chunks along ``dim``, so that the chunk grid stays
    regular.
    """
    _check_identical(manifests, urls, identical)
    _check_coords(manifests, urls, dim)
    manifests, promoted = _promote_scalars(manifests, dim)
    first = manifests[0]
    along = [n for n, a in first.arrays.items() if dim in a.dims and n not in first.coords]
    for manifest, url in zip(manifests, urls, strict=True):
        _check_names(first, manifest, dim, url)
    paths, bases = [], []
    for manifest in manifests:
        bases.append(len(paths))
        paths += manifest.paths
    arrays, referenced = dict(first.arrays), {}
    for name in along:
        parts = [m.arrays[name] for m in manifests]
        inline = [p.inline_values for p in parts]
        if all(v is not None for v in inline):
            axis = first.arrays[name].dims.index(dim)
            arrays[name] = _inline_like(first.arrays[name], _joined_values(inline, axis))
            continue
        _check_parts(name, parts, dim, urls)
        referenced[name] = parts
    arrays.update(_joined(referenced, bases, dim))
    coords = dict(first.coords)  # of other concat dims: the first input's
    if dim in coords:
        coords[dim] = _joined_values(
            [_in_units_of(first, m, dim, url) for m, url in zip(manifests, urls, strict=True)], 0
        )
        arrays[dim] = _inline_like(first.arrays[dim], coords[dim])
    return Manifest(paths, arrays, dict(first.attrs), coords, promoted)


def concat_grid(
    manifests: Sequence[Manifest],
    dims: Sequence[str],
    positions: Sequence[tuple[int, ...]],
    urls: Sequence[str],
    keys: Sequence[dict] = (),
    identical: Sequence[str] = (),
) -> Manifest:
    """``manifests`` concatenated along each of ``dims``: each input lies at its
    ``positions`` (one per dim) in a full grid. Inputs that lack a dim get it as a new
    leading dim of length 1, its coordinate their scalar one or else their key along it
    (from ``keys``). Concatenated along the last dim first, as ``xarray.combine_nested``
    does: one ``concat`` per row of the grid. Scalar coordinates that differ between
    inputs (GRIB's ``valid_time``) are put along the first dim, and may differ only there.
    """
    shape = _check_grid(dims, positions, urls)
    order = sorted(range(len(manifests)), key=positions.__getitem__)
    level = [
        with_dims(manifests[i], dims, keys[i] if keys else {}, urls[i], identical) for i in order
    ]
    urls = [urls[i] for i in order]
    for axis in reversed(range(len(dims))):
        n = shape[axis]
        level = [
            concat(level[i : i + n], dims[axis], urls[i : i + n], identical)
            for i in range(0, len(level), n)
        ]
        promoted = sorted({name for m in level for name in m.promoted})
        if axis and promoted:  # along the first dim only, as readers put them
            raise CombineError(
                f"cannot combine {urls[0]} and the others: scalar coordinates "
                f"{', '.join(promoted)} differ along {dims[axis]!r}, not only along {dims[0]!r}"
            )
        urls = urls[::n]
    return level[0]


def _check_grid(dims: Sequence[str], positions: Sequence[tuple[int, ...]], urls) -> list[int]:
    """The number of positions along each dim, when every place of the grid has one input."""
    seen: dict[tuple[int, ...], str] = {}
    for position, url in zip(positions, urls, strict=True):
        if position in seen:
            raise CombineError(
                f"cannot combine {url}: {seen[position]} is at its position "
                f"{_place(dims, position)} already"
            )
        seen[position] = url
    axes = [sorted({p[k] for p in positions}) for k in range(len(dims))]
    for place in itertools.product(*axes):
        if place not in seen:
            raise CombineError(
                f"cannot combine the inputs along {', '.join(dims)}: no input is at "
                f"{_place(dims, place)}"
            )
    return [len(a) for a in axes]


def _place(dims: Sequence[str], position: tuple[int, ...]) -> str:
    return ", ".join(f"{d}={p}" for d, p in zip(dims, position, strict=True))


def with_dims(
    manifest: Manifest, dims: Sequence[str], keys: dict, url: str, identical: Sequence[str]
) -> Manifest:
    """``manifest`` with each of ``dims`` it lacks as a leading dim of length 1 (the first
    of ``dims`` leading) on its variables but coordinates and ``identical`` ones."""
    sizes = manifest.sizes()
    for dim in reversed(dims):
        if dim not in sizes:
            manifest = _with_dim(manifest, dim, _new_coord(manifest, dim, keys, url), identical)
    return manifest


def _new_coord(manifest: Manifest, dim: str, keys: dict, url: str) -> ArrayRefs:
    """The coordinate of a new dim: the input's scalar one, else its key along ``dim``."""
    scalar = manifest.arrays.get(dim)
    if scalar is None:
        if dim not in keys:
            raise CombineError(f"{url}: has no {dim!r} and no key along it")
        return inline_array(np.array([keys[dim]]), {"_ARRAY_DIMENSIONS": [dim]})
    values = scalar.inline_values
    if values is not None and _folded_chars(manifest, scalar):
        label = np.array(values.tobytes(), dtype=f"S{values.size}")
        return inline_array(label.reshape(1), {**scalar.attrs, "_ARRAY_DIMENSIONS": [dim]})
    if scalar.dims or values is None:
        raise CombineError(f"{url}: {dim!r} is neither a dim nor a scalar held inline")
    attrs = {**scalar.attrs, "_ARRAY_DIMENSIONS": [dim]}
    return inline_array(values.reshape(1), attrs, fill_value=scalar.meta.get("fill_value"))


def _folded_chars(manifest: Manifest, array: ArrayRefs) -> bool:
    """Whether ``array`` is a 0-d char array (CMIP's ``char realization(strlen)``), which
    xarray reads as one string: chars along one dim that only chars use, as their last."""
    if len(array.dims) != 1 or np.dtype(array.meta["dtype"]) != np.dtype("S1"):
        return False
    dim = array.dims[0]
    users = [a for a in manifest.arrays.values() if dim in a.dims]
    return dim not in manifest.arrays and all(
        np.dtype(a.meta["dtype"]).kind == "S" and a.dims[-1] == dim for a in users
    )


def _with_dim(manifest: Manifest, dim: str, coord: ArrayRefs, identical: Sequence[str]) -> Manifest:
    """``manifest`` with ``dim`` (of coordinate ``coord``) leading its variables."""
    arrays = {}
    for name, refs in manifest.arrays.items():
        kept = name in manifest.coords or refs.dims == [name] or name in identical
        arrays[name] = refs if kept else _leading(refs, dim)
    arrays[dim] = coord
    coords = {**manifest.coords, dim: coord.inline_values}
    return replace(manifest, arrays=arrays, coords=coords)


def _leading(refs: ArrayRefs, dim: str) -> ArrayRefs:
    """``refs`` with a leading axis ``dim`` of one step in chunks of one."""
    meta = {**refs.meta, "shape": [1, *refs.shape], "chunks": [1, *refs.chunks]}
    return ArrayRefs(
        meta=meta,
        attrs={**refs.attrs, "_ARRAY_DIMENSIONS": [dim, *refs.dims]},
        files=refs.files[None],
        offsets=refs.offsets[None],
        lengths=refs.lengths[None],
        raw=None if refs.raw is None else refs.raw[None],
    )


def _joined_values(parts: list[np.ndarray], axis: int) -> np.ndarray:
    """``parts`` concatenated, in their byte order when they share a dtype (netCDF-3's
    big-endian values stay big-endian, as their referenced chunks are)."""
    same = all(p.dtype == parts[0].dtype for p in parts)
    return np.concatenate(parts, axis=axis, dtype=parts[0].dtype if same else None)


def _inline_like(first: ArrayRefs, values: np.ndarray) -> ArrayRefs:
    """``values`` inline, with the attributes and fill value of the first input's array."""
    return inline_array(values, first.attrs, fill_value=first.meta.get("fill_value"))


def _check_identical(manifests: Sequence[Manifest], urls: Sequence[str], names) -> None:
    for name in names:
        want = manifests[0].arrays.get(name)
        for manifest, url in zip(manifests, urls, strict=True):
            got = manifest.arrays.get(name)
            if want is None or got is None:
                raise CombineError(f"{url}: identical dim {name!r} is missing")
            a, b = want.inline_values, got.inline_values
            if (
                a is not None
                and b is not None
                and not np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
            ):
                raise CombineError(f"{url}: {name} differs from the first input's")


def _check_coords(manifests: Sequence[Manifest], urls: Sequence[str], dim: str) -> None:
    """Every input's dimension coordinates but ``dim``'s are the first input's (the
    combined dataset holds the first's): shape, units, calendar and, inline (as the
    scanners keep them), values. Other attributes may differ, as xarray lets them."""
    first = manifests[0]
    for name, want in first.arrays.items():
        if want.dims != [name] or name == dim:
            continue
        values = want.inline_values
        for manifest, url in zip(manifests[1:], urls[1:], strict=True):
            got = manifest.arrays.get(name)
            if got is None or got.dims != [name]:
                continue  # a merge of different variables, or a variable's missing: named later
            why = _coord_difference(want, got, values)
            if why:
                raise CombineError(f"{url}: coordinate {name!r} {why}, unlike the first input")


def _coord_difference(want: ArrayRefs, got: ArrayRefs, values: np.ndarray | None) -> str:
    """How coordinate ``got`` differs from ``want`` (whose inline values are ``values``),
    or ""."""
    if got.shape != want.shape:
        return f"has {got.shape[0]} values, not {want.shape[0]}"
    for key in ("units", "calendar"):
        if got.attrs.get(key) != want.attrs.get(key):
            return f"has {key} {got.attrs.get(key)!r}, not {want.attrs.get(key)!r}"
    other = got.inline_values
    if values is None or other is None:
        return ""
    same = values == other if values.dtype.kind not in "fc" else _equal_nan(values, other)
    if not np.all(same):
        at = int(np.argmin(same))
        return f"has {other[at].item()!r} at {at}, not {values[at].item()!r}"
    return ""


def _equal_nan(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a == b) | (np.isnan(a) & np.isnan(b))


def _promote_scalars(manifests: Sequence[Manifest], dim: str) -> tuple[list[Manifest], tuple]:
    """Scalar coordinates that differ between inputs (GRIB's ``valid_time`` when each file
    holds one time), or that another input holds along ``dim``, put along ``dim``."""
    names = set()
    for name in manifests[0].arrays:
        values = [m.arrays.get(name) for m in manifests]
        if any(v is None for v in values):
            continue
        scalar = [v for v in values if not v.dims and v.inline_values is not None]
        if scalar and (len(scalar) < len(values) or _differ(scalar)):
            names.add(name)
    promoted = set().union(*(m.promoted for m in manifests)) | names
    if not names:
        return list(manifests), tuple(sorted(promoted))
    out = []
    for m in manifests:
        n = m.sizes().get(dim, 1)
        arrays = dict(m.arrays)
        for name in names:
            refs = arrays[name]
            if not refs.dims:
                values = np.repeat(refs.inline_values.reshape(1), n)
                arrays[name] = inline_array(values, {**refs.attrs, "_ARRAY_DIMENSIONS": [dim]})
        out.append(replace(m, arrays=arrays))
    return out, tuple(sorted(promoted))


def _differ(scalars: list[ArrayRefs]) -> bool:
    first = scalars[0]
    return any(
        s.raw.ravel()[0] != first.raw.ravel()[0] or repr(s.attrs) != repr(first.attrs)
        for s in scalars[1:]
    )


def merge(manifests: Sequence[Manifest], urls: Sequence[str]) -> Manifest:
    """The union of the arrays of ``manifests``; arrays in several are taken from the first."""
    paths, arrays, coords = [], {}, {}
    for manifest in manifests:
        base = len(paths)
        paths += manifest.paths
        for name, refs in manifest.arrays.items():
            if name not in arrays:
                arrays[name] = refs.with_file_offset(base)
        for name, values in manifest.coords.items():
            coords.setdefault(name, values)
    _check_sizes(arrays, urls)
    return Manifest(paths, arrays, dict(manifests[0].attrs), coords)


def _joined(arrays: dict[str, list[ArrayRefs]], bases: list[int], dim: str) -> dict:
    """Each array of ``arrays`` (by name, its parts) joined along ``dim``."""
    groups = []
    for parts in arrays.values():
        axis = parts[0].dims.index(dim)
        shifted = [p.with_file_offset(b) for p, b in zip(parts, bases, strict=True)]
        groups += [
            ([p.files for p in shifted], axis),
            ([p.offsets for p in parts], axis),
            ([p.lengths for p in parts], axis),
        ]
    grids = iter(_concatenated(groups))
    joined = {}
    for name, parts in arrays.items():
        first = parts[0]
        axis = first.dims.index(dim)
        raw = None
        if any(p.raw is not None for p in parts):
            raw = np.concatenate([_raw(p) for p in parts], axis=axis)
        shape = list(first.shape)
        shape[axis] = sum(p.shape[axis] for p in parts)
        meta = {**first.meta, "shape": shape}
        joined[name] = ArrayRefs(meta, first.attrs, next(grids), next(grids), next(grids), raw)
    return joined


def _concatenated(groups: list[tuple[list[np.ndarray], int]]) -> list[np.ndarray]:
    """Each group of arrays concatenated along its axis, all into one buffer: numpy asks
    the system to map an allocation of 4 MiB or more with huge pages, and filling one
    costs a fraction of filling as many bytes of smaller arrays page by page."""
    shapes = []
    for parts, axis in groups:
        shape = list(parts[0].shape)
        shape[axis] = sum(p.shape[axis] for p in parts)
        shapes.append((shape, np.result_type(*parts)))
    sizes = [-(-math.prod(shape) * dtype.itemsize // ALIGN) * ALIGN for shape, dtype in shapes]
    buffer = np.empty(sum(sizes), dtype=np.uint8)
    out, at = [], 0
    for (parts, axis), (shape, dtype), size in zip(groups, shapes, sizes, strict=True):
        view = buffer[at : at + math.prod(shape) * dtype.itemsize].view(dtype).reshape(shape)
        out.append(np.concatenate(parts, axis=axis, out=view))
        at += size
    return out


def _raw(part: ArrayRefs) -> np.ndarray:
    if part.raw is not None:
        return part.raw
    empty = np.empty(part.files.shape, dtype=object)
    empty[...] = None
    return empty


def _check_names(first: Manifest, other: Manifest, dim: str, url: str) -> None:
    mine = {n for n, a in first.arrays.items() if dim in a.dims}
    theirs = {n for n, a in other.arrays.items() if dim in a.dims}
    for name in sorted(mine ^ theirs):
        lacks = "lacks" if name in mine else "has"
        raise CombineError(
            f"{url}: {lacks} variable {name!r} along {dim!r}, unlike the first input"
        )


def _check_parts(name: str, parts: list[ArrayRefs], dim: str, urls: Sequence[str]) -> None:
    first = parts[0]
    axis = first.dims.index(dim)
    step = first.chunks[axis]
    for part, url in zip(parts, urls, strict=True):
        where = f"{url}: variable {name!r}"
        if part.dims != first.dims:
            raise CombineError(f"{where} has dims {part.dims}, the first input {first.dims}")
        for key in SAME_META:
            if part.meta[key] != first.meta[key]:
                raise CombineError(
                    f"{where} has {key} {part.meta[key]!r}, the first input {first.meta[key]!r}"
                )
        other = [n for i, n in enumerate(part.shape) if i != axis]
        if other != [n for i, n in enumerate(first.shape) if i != axis]:
            raise CombineError(f"{where} has shape {part.shape}, the first input {first.shape}")
        if part.chunks != first.chunks:
            raise CombineError(f"{where} has chunks {part.chunks}, the first input {first.chunks}")
    for part, url in zip(parts[:-1], urls[:-1], strict=True):
        if part.shape[axis] % step:
            raise CombineError(
                f"{url}: variable {name!r} holds {part.shape[axis]} steps along {dim!r} in chunks "
                f"of {step}; references need every input but the last to hold whole chunks"
            )


def _in_units_of(first: Manifest, other: Manifest, name: str, url: str) -> np.ndarray:
    """``other``'s values of coordinate ``name`` in the units (and dtype) of ``first``'s:
    inputs often count time from their own start."""
    want, got = first.arrays[name].attrs, other.arrays[name].attrs
    values = other.coords[name]
    dtype = first.coords[name].dtype
    same = all(got.get(k) == want.get(k) for k in ("units", "calendar"))
    if same and (values.dtype == dtype or values.dtype.kind == dtype.kind in "SU"):
        return values  # labels of any width: they are joined as wide as the widest
    if not same and " since " not in str(want.get("units", "")):
        raise CombineError(
            f"{url}: {name} units {got.get('units')!r} differ from the first input's "
            f"{want.get('units')!r}"
        )
    if not same:
        times = xr.coding.times.decode_cf_datetime(values, got["units"], got.get("calendar"))
        values, _, _ = xr.coding.times.encode_cf_datetime(
            times, want["units"], want.get("calendar"), dtype
        )
    recast = np.asarray(values).astype(dtype)
    if not np.array_equal(recast, values):
        raise CombineError(f"{url}: {name} values do not fit the first input's {dtype}")
    return recast


def _check_sizes(arrays: dict[str, ArrayRefs], urls: Sequence[str]) -> None:
    sizes: dict[str, tuple[int, str]] = {}
    for name, refs in arrays.items():
        for dim, n in zip(refs.dims, refs.shape, strict=True):
            seen = sizes.setdefault(dim, (n, name))
            if seen[0] != n:
                raise CombineError(
                    f"cannot merge {urls[0]} and the others: {dim!r} is {seen[0]} long in "
                    f"{seen[1]!r}, {n} in {name!r}"
                )


def replace_input(held: Manifest, part: Manifest, dim: str, start: int, url: str) -> Manifest:
    """``held`` (references combined along ``dim``) with ``part``, the references of the
    input at ``url`` whose steps begin at ``start``, in place of those it had: the input
    was scanned again after it changed. Raises :class:`CombineError` naming what of the
    input no longer fits ``held``."""
    count = part.sizes().get(dim, 0)
    if dim in held.coords:
        if dim not in part.coords:
            raise CombineError(f"it has no {dim!r} coordinate")
        values = _in_units_of(held, part, dim, url)
        if not np.array_equal(values, held.coords[dim][start : start + count]):
            raise CombineError(f"its {dim} values differ from the store's")
    paths = list(held.paths)
    arrays = dict(held.arrays)
    for name, refs in held.arrays.items():
        new = part.arrays.get(name)
        if new is None:
            raise CombineError(f"variable {name!r} is missing")
        if name in held.coords:
            continue
        axis = refs.dims.index(dim) if dim in refs.dims else None
        shape = list(refs.shape)
        if axis is not None:
            shape[axis] = count
        if new.dims != refs.dims or new.meta != {**refs.meta, "shape": shape}:
            raise CombineError(
                f"{name!r} is {new.meta['dtype']} of shape {list(new.shape)} in chunks "
                f"{list(new.chunks)}, the store's is {refs.meta['dtype']} of shape {shape} in "
                f"chunks {list(refs.chunks)}"
            )
        arrays[name] = _replaced(name, refs, new, axis, start, _file_indices(paths, part.paths))
    return replace(held, paths=paths, arrays=arrays)


def _file_indices(paths: list[str], part_paths: list[str]) -> np.ndarray:
    """Where each of ``part_paths`` is in ``paths`` (added at its end if it is not)."""
    for path in part_paths:
        if path not in paths:
            paths.append(path)
    return np.array([paths.index(p) for p in part_paths], dtype=np.int32)


def _replaced(
    name: str, refs: ArrayRefs, new: ArrayRefs, axis: int | None, start: int, indices
) -> ArrayRefs:
    """``refs`` with ``new``'s references in place of its chunks from step ``start`` along
    ``axis``; where the array lacks the dim, ``new`` if ``refs`` point into the input (the
    first one's, which the store's references point into)."""
    files = new.files.copy()
    if len(indices):
        files[files != NO_FILE] = indices[files[files != NO_FILE]]
    if axis is None:
        inline = refs.inline_values
        if inline is not None and not np.array_equal(inline, new.inline_values):
            raise CombineError(f"different values of {name!r}")
        if new.attrs != refs.attrs:
            raise CombineError(f"different attributes of {name!r}")
        return replace(new, files=files) if np.isin(refs.files, indices).any() else refs
    if refs.inline_values is not None and new.inline_values is not None:
        values = refs.inline_values.copy()
        where = [slice(None)] * values.ndim
        where[axis] = slice(start, start + new.shape[axis])
        values[tuple(where)] = new.inline_values
        return _inline_like(refs, values)
    first = start // refs.chunks[axis]
    where = [slice(None)] * refs.files.ndim
    where[axis] = slice(first, first + new.files.shape[axis])
    where = tuple(where)
    grids = {"files": files, "offsets": new.offsets, "lengths": new.lengths}
    out = {k: getattr(refs, k).copy() for k in grids}
    for key, grid in grids.items():
        out[key][where] = grid
    raw = None
    if refs.raw is not None or new.raw is not None:
        raw = _raw(refs).copy()
        raw[where] = _raw(new)
    return replace(refs, raw=raw, **out)
