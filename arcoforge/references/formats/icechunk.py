"""References in an Icechunk repository (:class:`IcechunkFormat`): Zarr v3 metadata,
virtual chunks pointing into the inputs, small arrays written as real data.

A bake commits to the branch ``arcoforge-staging``; the check stage reads that commit;
publishing moves ``main`` to it. So ``main`` gains one commit per bake, and only once the
commit is checked.
"""

from __future__ import annotations

import base64
import math
import warnings
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import numpy as np
import xarray as xr
import zarr
import zarr.codecs.numcodecs
from zarr.abc.codec import ArrayArrayCodec, ArrayBytesCodec
from zarr.codecs import BytesCodec

from arcoforge.errors import ArcoforgeError, require
from arcoforge.references.codecs import GRIB, Grib
from arcoforge.references.formats.base import ReferenceFormat
from arcoforge.references.manifest import NO_FILE, VLEN_UTF8, ArrayRefs, Manifest

STAGING = "arcoforge-staging"
MAIN = "main"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _icechunk():
    icechunk = require("icechunk", "Icechunk targets")
    icechunk.set_logs_filter("error")
    zarr.registry.register_codec(GRIB, Grib)  # for this process, if arcoforge is not installed
    return icechunk


class ContainerError(ArcoforgeError):
    """An input an Icechunk repository cannot point its virtual chunks into."""


def _containers(paths: Iterable[str], held: dict[str, str] | None = None) -> dict[str, str]:
    """The virtual chunk containers the references to ``paths`` need, by prefix, each with
    the origin its chunks are fetched from, along with those a repository ``held``;
    refusing a host reached at two ports, whose chunk locations could not be told apart."""
    found = dict(held or {})
    for path in paths:
        prefix, origin = _container(path)
        known = found.setdefault(prefix, origin)
        if known != origin:
            raise ContainerError(
                f"{path}: Icechunk {_icechunk().__version__} drops the port from virtual "
                f"chunk locations, so one repository cannot point into both {known} and "
                f"{origin}; write JSON or Parquet references"
            )
    return found


def _container(path: str) -> tuple[str, str]:
    """The prefix and origin of the container of ``path``: its folder (origin "") if local,
    else its host. Icechunk 1.x stores a chunk's location without its port, so the
    container of an input on a port is that of its host alone, and the origin keeps the
    port."""
    parts = urlsplit(path)
    if parts.scheme == "file":
        return f"file://{parts.path.rpartition('/')[0]}/", ""
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
    prefix, origin = f"{parts.scheme}://{host}/", f"{parts.scheme}://{host}"
    if parts.port in (None, _DEFAULT_PORTS.get(parts.scheme)):
        return prefix, origin
    if parts.scheme != "http":
        raise ContainerError(
            f"{path}: Icechunk {_icechunk().__version__} drops the port from virtual chunk "
            "locations, which arcoforge can route around over http only; "
            "write JSON or Parquet references"
        )
    return prefix, f"{origin}:{parts.port}"


def _held(config) -> dict[str, str]:
    """The containers a repository's ``config`` holds, by prefix, each with its origin."""
    return {
        prefix: _origin(container)
        for prefix, container in (config.virtual_chunk_containers or {}).items()
    }


def _origin(container) -> str:
    """The origin a container of ours fetches its chunks from (see :func:`_container`)."""
    if container.url_prefix.startswith("file://"):
        return ""
    http = isinstance(container.store, _icechunk().ObjectStoreConfig.Http)
    options = (container.store[0] if http else None) or {}
    return options.get("proxy_url", container.url_prefix.rstrip("/"))


def _store(prefix: str, origin: str):
    """The Icechunk store of a container: a local folder, or an HTTP server. Icechunk
    requests a chunk at its location (host, no port), so a server on a port is reached by
    naming it as the proxy: a server must accept a request naming the whole URL (RFC 9112,
    3.2.2)."""
    ic = _icechunk()
    if not origin:
        return ic.local_filesystem_store(prefix.removeprefix("file://"))
    options = {"allow_http": "true"} if prefix.startswith("http://") else {}
    if origin != prefix.rstrip("/"):
        options["proxy_url"] = origin
    return ic.http_store(options)


def _repository(path: str, paths: Iterable[str] = ()):
    """Open (or create) the repository at ``path``, allowed to read chunks from the
    containers it holds and those of ``paths``."""
    ic = _icechunk()
    storage = ic.local_filesystem_storage(path)
    config = ic.RepositoryConfig.default()
    exists = ic.Repository.exists(storage)
    containers = _containers(paths, _held(ic.Repository.open(storage).config) if exists else None)
    for prefix, origin in sorted(containers.items()):
        config.set_virtual_chunk_container(ic.VirtualChunkContainer(prefix, _store(prefix, origin)))
    access = ic.containers_credentials({p: None for p in containers})
    if exists:
        return ic.Repository.open(storage, config, authorize_virtual_chunk_access=access)
    return ic.Repository.create(storage, config, authorize_virtual_chunk_access=access)


def readonly_store(path: str, branch: str = MAIN):
    """A read-only Zarr store of the repository's ``branch``."""
    return _repository(path).readonly_session(branch=branch).store


def virtual_locations(path: str, branch: str = MAIN) -> list[str]:
    """The files the virtual chunks of the repository's ``branch`` point into."""
    repo = _repository(path)
    found = repo.readonly_session(branch=branch).all_virtual_chunk_locations()
    moved = {p: f"{o}/" for p, o in _held(repo.config).items() if o and f"{o}/" != p}
    return sorted({_with_origin(location, moved) for location in found})


def _with_origin(location: str, moved: dict[str, str]) -> str:
    """A chunk location as it was given: with the port Icechunk dropped from it."""
    for prefix, origin in moved.items():
        if location.startswith(prefix):
            return origin + location.removeprefix(prefix)
    return location


@contextmanager
def open_dataset(path: str, branch: str = MAIN, **kwargs) -> Iterator[xr.Dataset]:
    """The repository's ``branch`` opened by xarray."""
    ds = xr.open_zarr(readonly_store(path, branch), consolidated=False, chunks=None, **kwargs)
    try:
        yield ds
    finally:
        ds.close()


@dataclass(frozen=True)
class IcechunkFormat(ReferenceFormat):
    """The local Icechunk repository at ``url`` (``staging`` is the same path: the
    references are staged on a branch of it)."""

    checks_on_driver: ClassVar[bool] = True  # its runtime does not survive a worker's fork
    made_in_place: ClassVar[bool] = True

    def unwritable(self, manifest: Manifest) -> str | None:
        """A byte string array with a fill value (masked chars), whose Zarr v3 fill value
        xarray cannot decode, cannot go to Icechunk so that xarray reads it."""
        for name, refs in manifest.arrays.items():
            fill = refs.meta["fill_value"]
            if np.dtype(refs.meta["dtype"]).kind == "S" and fill is not None:
                fill = base64.b64decode(fill) if isinstance(fill, str) else fill
                return (
                    f"variable {name!r}: chars with a _FillValue ({fill!r}) cannot be "
                    "referenced in Icechunk so that xarray reads them (it cannot decode the "
                    "Zarr v3 _FillValue of a byte string array); write JSON or Parquet "
                    "references"
                )
        return None

    def check_inputs(self, urls: list[str]) -> None:
        """Refuse inputs the repository (made or not) cannot point its virtual chunks into
        along with those it points into."""
        ic = _icechunk()
        storage = ic.local_filesystem_storage(self.url)
        held = None
        if Path(self.url).is_dir() and ic.Repository.exists(storage):
            held = _held(ic.Repository.open(storage).config)
        _containers(urls, held)

    def clear_staging(self) -> None:
        """Forget the staging branch an interrupted bake left."""
        if not Path(self.url).exists():
            return
        repo = _repository(self.url)
        if STAGING in repo.list_branches():
            repo.delete_branch(STAGING)

    def seal(self, staged: bool = False) -> str | None:
        """The snapshot at the tip of ``main`` (or of the staging branch); None without the
        repository or the branch."""
        branch = STAGING if staged else MAIN
        ic = _icechunk()
        storage = ic.local_filesystem_storage(self.url)
        if not Path(self.url).is_dir() or not ic.Repository.exists(storage):
            return None
        repo = ic.Repository.open(storage)
        return repo.lookup_branch(branch) if branch in repo.list_branches() else None

    def bears(self, seal: str) -> bool:
        """Whether the repository holds the snapshot ``seal`` (one a bake of ours
        committed; later commits made by others do not matter); False for a repository
        without it and for anything else at :attr:`url`."""
        ic = _icechunk()
        storage = ic.local_filesystem_storage(self.url)
        try:
            if not Path(self.url).is_dir() or not ic.Repository.exists(storage):
                return False
            ic.Repository.open(storage).lookup_snapshot(seal)
        except ic.IcechunkError:
            return False
        return True

    def write_staged(
        self, manifest: Manifest, attrs: dict, message: str, shared: dict[str, int] | None = None
    ) -> None:
        """Write ``manifest`` on the staging branch, from ``main``'s tip, in one commit of
        ``message``. Arrays in ``shared`` (an append) are resized and given only their
        references after the shared ones."""
        repo = _repository(self.url, manifest.paths)
        repo.save_config()
        if STAGING in repo.list_branches():
            repo.delete_branch(STAGING)
        repo.create_branch(STAGING, repo.lookup_branch(MAIN))
        session = repo.writable_session(STAGING)
        store = session.store
        if shared:
            root = zarr.open_group(store, mode="r+")
            root.attrs.put(attrs)
        else:
            root = zarr.open_group(store, mode="w", zarr_format=3, attributes=attrs)
        for name, refs in manifest.arrays.items():
            if shared and name in shared:
                root[name].resize(refs.shape)
                _set_refs(store, name, refs, manifest.paths, shared[name])
            else:
                _write_array(root, store, name, refs, manifest.paths)
        session.commit(message)

    def open_staged(
        self, dim: str | None = None, spans=(), remote_options: dict | None = None
    ) -> AbstractContextManager[xr.Dataset]:
        """The staging branch, whole (its chunks are read where they are needed)."""
        return open_dataset(self.url, STAGING)

    def publish(self) -> None:
        """Move ``main`` to the staging commit and drop the staging branch."""
        repo = _repository(self.url)
        if STAGING in repo.list_branches():
            repo.reset_branch(MAIN, repo.lookup_branch(STAGING))
            repo.delete_branch(STAGING)


def _write_array(root, store, name: str, refs: ArrayRefs, paths: list[str]) -> None:
    meta = refs.meta
    dtype = np.dtype(meta["dtype"])
    attrs = {k: v for k, v in refs.attrs.items() if k != "_ARRAY_DIMENSIONS"}
    fill = meta["fill_value"]
    if fill is None and isinstance(attrs.get("_FillValue"), float):
        fill = attrs["_FillValue"]  # as the references give it (GRIB's ``step``): NaN, no JSON
    if fill is not None:
        attrs["_FillValue"] = xr.backends.zarr.FillValueCoder.encode(_fill(fill, dtype), dtype)
    strings = meta["filters"] == VLEN_UTF8  # inline variable-length strings: Zarr v3's own
    filters, serializer, compressors = ([], "auto", None) if strings else _v3_codecs(name, meta)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        array = root.create_array(
            name,
            shape=refs.shape,
            chunks=refs.chunks or refs.shape,
            dtype=str if strings else dtype.newbyteorder("="),
            fill_value=_fill(fill, dtype) if fill is not None else None,
            serializer=serializer or _serializer(dtype),
            compressors=compressors,
            filters=filters or None,
            dimension_names=refs.dims,
            attributes=attrs,
            overwrite=True,
        )
    if refs.raw is not None:
        _write_inline(array, refs)
    _set_refs(store, name, refs, paths)


def _set_refs(store, name: str, refs: ArrayRefs, paths: list[str], skip: int = 0) -> None:
    """Virtual references for the chunks of ``name`` after the first ``skip`` (C order);
    every path lies in a container the repository was configured with."""
    flat = np.flatnonzero(refs.files.ravel() != NO_FILE)
    located = np.argwhere(refs.files != NO_FILE)[flat >= skip]
    if len(located):
        store.set_virtual_refs(name, _specs(refs, located, paths), validate_containers=False)


def _specs(refs: ArrayRefs, located: np.ndarray, paths: list[str]):
    ic = _icechunk()
    index = tuple(located.T)
    files = refs.files[index].tolist()
    offsets = refs.offsets[index].tolist()
    lengths = refs.lengths[index].tolist()
    return [
        ic.VirtualChunkSpec(tuple(i), paths[f], o, n)
        for i, f, o, n in zip(located.tolist(), files, offsets, lengths, strict=True)
    ]


def _write_inline(array: zarr.Array, refs: ArrayRefs) -> None:
    """Chunks held inline become real chunks (decoded, then encoded by the array's codecs)."""
    for index in np.argwhere(refs.raw != None):  # noqa: E711 (element-wise)
        region = tuple(
            slice(i * c, min((i + 1) * c, n))
            for i, c, n in zip(index, refs.chunks, refs.shape, strict=True)
        )
        values = refs.inline_chunk(tuple(index))
        full = refs.chunks if refs.chunks else ()
        block = values.reshape(full) if math.prod(full) == values.size else values
        array[region] = block[tuple(slice(0, r.stop - r.start) for r in region)]
    if not refs.shape:
        array[()] = refs.inline_chunk(())[0]


def _fill(value, dtype: np.dtype):
    if dtype.kind == "S":  # the bytes, in base64
        return base64.standard_b64decode(value)
    if isinstance(value, str):
        return float(value)
    return dtype.type(value).item()


def _serializer(dtype: np.dtype):
    if dtype.itemsize == 1 or dtype.byteorder == "|":
        return BytesCodec(endian=None)
    big = dtype.byteorder == ">" or (dtype.byteorder == "=" and np.little_endian is False)
    return BytesCodec(endian="big" if big else "little")


def _v3_codecs(name: str, meta: dict) -> tuple[list, Any, list]:
    """A variable's Zarr v2 filters and compressor as Zarr v3 codecs: array-to-array filters,
    the serializer (None: plain bytes) and bytes-to-bytes compressors; numcodecs' codecs in
    zarr-python's Zarr v3 form, a GRIB message in arcoforge's."""
    filters, serializer, compressors = [], None, []
    configs = [*(meta["filters"] or []), *([meta["compressor"]] if meta["compressor"] else [])]
    wrapped = _numcodecs_v3()
    for config in configs:
        config = dict(config)
        kind = config.pop("id")
        if kind == "grib":
            serializer = Grib(**config)
            continue
        if kind not in wrapped:
            raise ArcoforgeError(
                f"variable {name!r}: codec {kind!r} has no Zarr v3 form for Icechunk"
            )
        codec = wrapped[kind](**config)
        if isinstance(codec, ArrayArrayCodec):
            filters.append(codec)
        elif isinstance(codec, ArrayBytesCodec):
            serializer = codec
        else:
            compressors.append(codec)
    return filters, serializer, compressors


def _numcodecs_v3() -> dict[str, type]:
    """zarr-python's Zarr v3 forms of numcodecs' codecs, by numcodecs id."""
    return {
        kind.codec_name.removeprefix("numcodecs."): kind
        for kind in vars(zarr.codecs.numcodecs).values()
        if isinstance(kind, type) and isinstance(getattr(kind, "codec_name", None), str)
    }
