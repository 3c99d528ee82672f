"""Scan a Zarr store (v2 or v3) into a manifest: every stored chunk is a whole object,
referenced with its size from one listing of the store; the chunks of a sharded v3 array
are byte ranges of their shard, read from the shard's index."""

from __future__ import annotations

from functools import partial

import fsspec
import numpy as np
import xarray as xr
import zarr

from arcoforge.errors import SourceError
from arcoforge.references.coords import check_coordinate
from arcoforge.references.inputs import ScanConfig
from arcoforge.references.manifest import (
    NO_FILE,
    ArrayRefs,
    Manifest,
    fill_json,
    inline_array,
    json_value,
    zarray,
)

V3_CODECS = {"gzip", "zstd", "blosc"}
BLOSC_SHUFFLE = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}


def scan_zarr(url: str, config: ScanConfig) -> Manifest:
    """The manifest of the Zarr store at ``url``."""
    options = config.storage_options or {}
    fs, root = fsspec.core.url_to_fs(url, **options)
    root = root.rstrip("/")
    if not fs.exists(root):
        raise FileNotFoundError(url)
    sizes = {
        p.removeprefix(root).lstrip("/"): d["size"] for p, d in fs.find(root, detail=True).items()
    }
    group = zarr.open_group(url.removeprefix("file://"), mode="r", storage_options=options or None)
    arrays, coords, paths = {}, {}, []
    for name, array in sorted(group.arrays()):
        where = f"{url}: variable {name!r}"
        meta, attrs = _v2_metadata(array, where)
        coordinate = attrs["_ARRAY_DIMENSIONS"] == [name]
        if name in config.concat_dims and coordinate:
            coords[name] = array[...]
            arrays[name] = inline_array(coords[name], attrs)
        elif array.shards is None:
            arrays[name] = _locate(array, name, meta, attrs, sizes, paths, url)
        else:
            arrays[name] = _locate_sharded(array, name, meta, attrs, sizes, paths, url, fs, root)
        if coordinate:  # read unless inline: the other arrays' chunks are only listed
            fills = {**attrs, "_FillValue": meta["fill_value"]}
            check_coordinate(name, arrays[name], fills, partial(np.asarray, array))
    return Manifest(paths, arrays, {k: json_value(v) for k, v in group.attrs.items()}, coords)


def _locate(array, name, meta, attrs, sizes, paths, url) -> ArrayRefs:
    grid = tuple(-(-n // c) for n, c in zip(array.shape, array.chunks, strict=True))
    files = np.full(grid, NO_FILE, dtype=np.int32)
    lengths = np.zeros(grid, dtype=np.uint64)
    for index in np.ndindex(*grid):
        key = f"{name}/{array.metadata.encode_chunk_key(index)}"
        if key in sizes:
            files[index] = len(paths)
            lengths[index] = sizes[key]
            paths.append(f"{url.rstrip('/')}/{key}")
    return ArrayRefs(meta, attrs, files, np.zeros(grid, dtype=np.uint64), lengths)


def _locate_sharded(array, name, meta, attrs, sizes, paths, url, fs, root) -> ArrayRefs:
    """Each inner chunk of each stored shard, as the byte range its index gives."""
    shards = array.metadata.to_dict()["codecs"][0]["configuration"]
    inner = tuple(shards["chunk_shape"])
    per_shard = tuple(s // c for s, c in zip(array.shards, inner, strict=True))
    grid = tuple(-(-n // c) for n, c in zip(array.shape, inner, strict=True))
    files = np.full(grid, NO_FILE, dtype=np.int32)
    offsets, lengths = np.zeros(grid, dtype=np.uint64), np.zeros(grid, dtype=np.uint64)
    shard_grid = tuple(-(-n // s) for n, s in zip(array.shape, array.shards, strict=True))
    for shard in np.ndindex(*shard_grid):
        key = f"{name}/{array.metadata.encode_chunk_key(shard)}"
        if key not in sizes:
            continue
        index = _shard_index(fs, f"{root}/{key}", sizes[key], per_shard, shards)
        stored = index[..., 0] != EMPTY
        at = tuple(slice(i * n, i * n + n) for i, n in zip(shard, per_shard, strict=True))
        place = _clip(at, grid)
        region = tuple(slice(0, p.stop - p.start) for p in place)
        files[place] = np.where(stored[region], len(paths), NO_FILE)
        offsets[place] = np.where(stored[region], index[region][..., 0], 0)
        lengths[place] = np.where(stored[region], index[region][..., 1], 0)
        paths.append(f"{url.rstrip('/')}/{key}")
    return ArrayRefs(meta, attrs, files, offsets, lengths)


EMPTY = np.uint64(2**64 - 1)  # a shard index's offset and length of an absent chunk


def _shard_index(fs, path: str, size: int, per_shard: tuple, config: dict) -> np.ndarray:
    """(offset, length) of every inner chunk of the shard at ``path``."""
    count = int(np.prod(per_shard))
    checksum = any(c["name"] == "crc32c" for c in config.get("index_codecs", []))
    nbytes = 16 * count + 4 * checksum
    start = size - nbytes if config.get("index_location", "end") == "end" else 0
    raw = fs.cat_file(path, start=start, end=start + nbytes)
    return np.frombuffer(raw[: 16 * count], dtype="<u8").reshape(*per_shard, 2)


def _clip(region: tuple[slice, ...], grid: tuple[int, ...]) -> tuple[slice, ...]:
    """``region`` cut to ``grid`` (the last shard along a dim may be partly outside)."""
    return tuple(slice(r.start, min(r.stop, n)) for r, n in zip(region, grid, strict=True))


def _v2_metadata(array: zarr.Array, where: str) -> tuple[dict, dict]:
    """Zarr v2 metadata and attributes (with ``_ARRAY_DIMENSIONS``) of a v2 or v3 array."""
    attrs = {k: json_value(v) for k, v in array.attrs.items()}
    meta = array.metadata.to_dict()
    if meta["zarr_format"] == 2:
        dims = attrs.get("_ARRAY_DIMENSIONS") or [f"dim_{i}" for i in range(array.ndim)]
        v2 = zarray(
            array.shape,
            array.chunks,
            np.dtype(meta["dtype"]),
            meta["compressor"],
            meta["filters"],
            fill_json(meta["fill_value"]) if meta["fill_value"] is not None else None,
        )
        return v2, {**attrs, "_ARRAY_DIMENSIONS": list(dims)}
    codecs = meta["codecs"]
    if codecs[0]["name"] == "sharding_indexed":
        codecs = codecs[0]["configuration"]["codecs"]
    dtype, compressor = _v3_codecs(codecs, np.dtype(array.dtype), where)
    fill = attrs.pop("_FillValue", None)
    if fill is not None:
        fill = fill_json(xr.backends.zarr.FillValueCoder.decode(fill, np.dtype(array.dtype)))
    dims = meta.get("dimension_names") or [f"dim_{i}" for i in range(array.ndim)]
    v2 = zarray(array.shape, array.chunks, dtype, compressor, None, fill)
    return v2, {**attrs, "_ARRAY_DIMENSIONS": list(dims)}


def _v3_codecs(codecs, dtype: np.dtype, where: str) -> tuple[np.dtype, dict | None]:
    """The byte order and the one compressor of a v3 codec chain, as Zarr v2 has them."""
    compressor = None
    for codec in codecs:
        name, config = codec["name"], dict(codec.get("configuration") or {})
        if name == "bytes":
            endian = config.get("endian")
            dtype = dtype.newbyteorder(">" if endian == "big" else "<") if endian else dtype
        elif name in V3_CODECS and compressor is None:
            compressor = _v2_codec(name, config, dtype)
        else:
            raise SourceError(f"{where}: Zarr v3 codec {name!r} cannot be referenced as Zarr v2")
    return dtype, compressor


def _v2_codec(name: str, config: dict, dtype: np.dtype) -> dict:
    if name == "blosc":
        shuffle = BLOSC_SHUFFLE[config.get("shuffle", "noshuffle")]
        return {
            "id": "blosc",
            "cname": config["cname"],
            "clevel": config["clevel"],
            "shuffle": shuffle,
            "blocksize": config.get("blocksize", 0),
        }
    if name == "zstd":
        return {
            "id": "zstd",
            "level": config.get("level", 0),
            "checksum": config.get("checksum", False),
        }
    return {"id": "gzip", "level": config.get("level", 5)}
