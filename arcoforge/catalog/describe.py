"""Describe what a feedstock's recipes baked: one :class:`DatasetRecord` per recipe, from
``meta.yaml``, the store at the place a bake writes it and the run records kept beside it.

Stores are found as ``arcoforge bake`` names them: ``TARGET_ROOT/STORE_NAME`` for Zarr,
``TARGET_ROOT/STORE_NAME/OUTPUT_FILE_NAME`` for references, ``PATH/STORE_NAME`` for an
``icechunk://PATH`` root. Every URL and text a record holds passes through
:func:`arcoforge.sources.secrets.redact` with the secrets of ``storage_options``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np
import xarray as xr
from packaging.licenses import InvalidLicenseExpression, canonicalize_license_expression
from zarr.errors import NodeNotFoundError

from arcoforge.bake.run import normalize_root
from arcoforge.catalog import cf
from arcoforge.catalog.quicklook import write_quicklook
from arcoforge.catalog.record import (
    DatasetRecord,
    Dimension,
    Extent,
    Maintainer,
    Provider,
    QuickLook,
    Run,
    Store,
    StoreType,
    TimeCoverage,
    Variable,
)
from arcoforge.core.runs import RUNS_FOLDER, RunRecord
from arcoforge.errors import MissingDependency, one_line, require
from arcoforge.recipe.feedstock import Meta, load_recipes, read_meta
from arcoforge.recipe.steps import Recipe
from arcoforge.references.store import ICECHUNK, open_references, store_location
from arcoforge.sources.secrets import redact, secret_values, without_userinfo

log = logging.getLogger(__name__)

LICENSES = {
    "CC-BY-4.0": "https://creativecommons.org/licenses/by/4.0/",
    "CC-BY-3.0": "https://creativecommons.org/licenses/by/3.0/",
    "CC-BY-SA-4.0": "https://creativecommons.org/licenses/by-sa/4.0/",
    "CC-BY-NC-4.0": "https://creativecommons.org/licenses/by-nc/4.0/",
    "CC-BY-NC-SA-4.0": "https://creativecommons.org/licenses/by-nc-sa/4.0/",
    "CC0-1.0": "https://creativecommons.org/publicdomain/zero/1.0/",
    "PDDL-1.0": "https://opendatacommons.org/licenses/pddl/1-0/",
    "ODC-By-1.0": "https://opendatacommons.org/licenses/by/1-0/",
    "ODbL-1.0": "https://opendatacommons.org/licenses/odbl/1-0/",
    "ODbL": "https://opendatacommons.org/licenses/odbl/1-0/",
    "OGL-UK-3.0": "https://www.nationalarchives.gov.uk/doc/open-government-licence/version/3/",
    "Apache-2.0": "https://www.apache.org/licenses/LICENSE-2.0",
    "MIT": "https://opensource.org/licenses/MIT",
    "BSD-3-Clause": "https://opensource.org/licenses/BSD-3-Clause",
    "GPL-3.0-only": "https://www.gnu.org/licenses/gpl-3.0.html",
}
SPDX_PAGE = "https://spdx.org/licenses/{}.html"


def spdx_id(license: str) -> str | None:
    """``license`` as the SPDX list spells it when it is one id of that list (packaging
    carries the list), else None: an expression or a ``LicenseRef-`` is not one."""
    try:
        found = canonicalize_license_expression(license)
    except InvalidLicenseExpression:
        return None
    return None if " " in found or found.startswith("LicenseRef-") else found


def license_url(license: str) -> str | None:
    """The license's page: :data:`LICENSES`' own, else the SPDX list's for an SPDX id."""
    if license in LICENSES:
        return LICENSES[license]
    found = spdx_id(license)
    return SPDX_PAGE.format(found) if found else None


RUN_STATUS = {"succeeded": "ok", "failed": "failed", "interrupted": "failed", "running": "running"}


def describe_feedstock(
    folder: str | Path,
    target_root: str,
    storage_options: dict | None = None,
    runs_folder: str | Path | None = None,
    quicklook_dir: str | Path | None = None,
) -> list[DatasetRecord]:
    """One record per recipe of the feedstock in ``folder``, in meta.yaml's order.

    Stores are read under ``target_root`` with ``storage_options``; run records beside
    each store (those of its store name), and in ``runs_folder`` (such as
    :func:`arcoforge.core.runs.state_dir`, those whose target is the store). With ``quicklook_dir``, quick-looks are drawn into
    ``quicklook_dir/SLUG/`` (the record names them relative to that folder).
    """
    folder = Path(folder)
    meta = read_meta(folder)
    recipes = load_recipes(folder)
    where = Where(
        normalize_root(target_root),
        storage_options,
        tuple(secret_values(open_kwargs=storage_options)),
        runs_folder,
        quicklook_dir,
    )
    feedstock = feedstock_name(folder)
    return [
        describe_recipe(meta, feedstock, ref.id, recipes[ref.id], where) for ref in meta.recipes
    ]


@dataclass(frozen=True)
class Where:
    """Where a catalog reads stores and run records, and draws quick-looks."""

    target_root: str  # as arcoforge.bake.normalize_root gives it
    storage_options: dict | None = None
    secrets: tuple[str, ...] = ()  # the values in storage_options to mask
    runs_folder: str | Path | None = None
    quicklook_dir: str | Path | None = None


def feedstock_name(folder: Path) -> str:
    """The feedstock's part of dataset ids: the folder's name, or for a pangeo-forge
    feedstock repository (``NAME-feedstock/feedstock/meta.yaml``) the repository's, without
    its ``-feedstock`` suffix (``NAME``), as every such folder is named ``feedstock``."""
    folder = folder.resolve()
    if folder.name != "feedstock" or not folder.parent.name:
        return folder.name
    return folder.parent.name.removesuffix("-feedstock") or folder.parent.name


def slug(dataset_id: str) -> str:
    """A file-name-safe form of ``FEEDSTOCK/RECIPE``: ``FEEDSTOCK--RECIPE``."""
    return "--".join(re.sub(r"[^A-Za-z0-9_.-]+", "-", part) for part in dataset_id.split("/"))


def store_of(recipe: Recipe, target_root: str) -> tuple[str, StoreType]:
    """The URL and type of the store ``recipe`` bakes under ``target_root`` (normalized as
    :func:`arcoforge.bake.normalize_root` does)."""
    writer = recipe.writer
    if not recipe.virtual:
        return f"{target_root.rstrip('/')}/{writer.store_name}", "zarr"
    url = store_location(target_root, writer)
    if target_root.startswith(ICECHUNK):
        return url, "icechunk"
    return url, f"references-{writer.format}"


def describe_recipe(
    meta: Meta, feedstock: str, recipe_id: str, recipe: Recipe, where: Where
) -> DatasetRecord:
    """The record of one recipe: meta.yaml's words, its runs and what its store holds."""
    url, kind = store_of(recipe, where.target_root)
    options, secrets = where.storage_options, where.secrets
    shown = redact(url, secrets)
    runs = find_runs(url, shown, recipe.writer.store_name, options, where.runs_folder)
    record = DatasetRecord(
        id=f"{feedstock}/{recipe_id}",
        slug=slug(f"{feedstock}/{recipe_id}"),
        feedstock=feedstock,
        recipe=recipe_id,
        title=meta.title if len(meta.recipes) == 1 else f"{meta.title} ({recipe_id})",
        description=meta.description,
        license=meta.provenance.license,
        license_url=license_url(meta.provenance.license),
        providers=[
            Provider(name=p.name, roles=list(p.roles), url=p.url) for p in meta.provenance.providers
        ],
        maintainers=[Maintainer(name=m.name, github=m.github) for m in meta.maintainers],
        tags=list(meta.tags),
        store=Store(url=shown, type=kind),
        status=RUN_STATUS[runs[0].status] if runs else "ok",
        runs=[_run(r) for r in runs],
    )
    try:
        with open_store(url, kind, options) as ds:
            _fill(record, ds, secrets)
            if where.quicklook_dir is not None:
                record.quicklook = _quicklook(record, ds, where.quicklook_dir, secrets)
        record.snippets = snippets(shown, kind, options, secrets)
    except MissingDependency:
        raise
    except Exception as exc:  # any store we cannot read still gets its record
        error = redact(one_line(exc), secrets)
        error = error if shown in error else f"{shown}: {error}"
        _unopened(record, runs, url, options, exc, error)
        return record
    record.store.size_bytes, record.store.objects = stored_size(url, options)
    return record


def _unopened(record, runs, url, storage_options, exc: Exception, error: str) -> None:
    """Say why a store could not be read: never baked, a bake that failed or is running,
    or a store that is there (or may be: a server refused us) but unreadable."""
    missing = isinstance(exc, FileNotFoundError | NodeNotFoundError)
    if not missing or _exists(url, storage_options):
        record.status, record.error = "unreadable", error
    elif not runs:
        record.status = "never-baked"
    elif record.status == "ok":
        record.status, record.error = "unreadable", f"{record.store.url}: not found"
    elif record.status == "failed":
        record.error = (runs[0].failures or [error])[-1]


@contextmanager
def open_store(
    url: str, kind: StoreType, storage_options: dict | None = None
) -> Iterator[xr.Dataset]:
    """The store opened lazily by xarray (no chunk is read)."""
    if kind == "zarr":
        ds = xr.open_zarr(url, storage_options=storage_options, chunks=None)
        try:
            yield ds
        finally:
            ds.close()
        return
    with open_references(url, storage_options) as ds:
        yield ds


def _quicklook(record: DatasetRecord, ds: xr.Dataset, quicklook_dir, secrets) -> QuickLook | None:
    """The record's quick-look, or None with one warning when it cannot be drawn (slices
    that cannot be read, say): a store that opens stays readable."""
    try:
        return write_quicklook(ds, Path(quicklook_dir) / record.slug)
    except MissingDependency:
        raise
    except Exception as exc:  # reading a slice may fail in any filesystem's or codec's way
        log.warning(redact(f"{record.id}: no quick-look ({one_line(exc)})", secrets))
        return None


def _fill(record: DatasetRecord, ds: xr.Dataset, secrets) -> None:
    """What the record says of the dataset itself."""
    record.dims = [_dimension(ds, str(d)) for d in ds.dims]
    record.variables = [_variable(ds, str(n)) for n in ds.variables]
    record.time_coverage = time_coverage(ds)
    record.extent = extent(ds)
    with xr.set_options(display_width=100, display_max_rows=40):
        record.repr = redact(repr(ds), secrets)


def _dimension(ds: xr.Dataset, name: str) -> Dimension:
    size = int(ds.sizes[name])
    if name not in ds.coords or ds[name].ndim != 1 or size == 0:
        return Dimension(name=name, size=size)
    var = ds[name].variable
    ends = var[[0, -1]].values
    return Dimension(
        name=name,
        size=size,
        start=cf.text(ends[0]),
        end=cf.text(ends[1]),
        units=cf.units(var),
        kind=cf.kind(var),
    )


def _variable(ds: xr.Dataset, name: str) -> Variable:
    var = ds[name].variable
    enc = var.encoding
    chunks, shards = enc.get("chunks"), enc.get("shards")
    return Variable(
        name=name,
        dims=[str(d) for d in var.dims],
        dtype=str(var.dtype),
        shape=[int(n) for n in var.shape],
        chunks=[int(n) for n in chunks] if chunks else None,
        shards=[int(n) for n in shards] if shards else None,
        codecs=codec_names(enc),
        units=cf.units(var),
        long_name=_attr(var, "long_name"),
        standard_name=_attr(var, "standard_name"),
        coordinate=name in ds.coords,
    )


def _attr(var: xr.Variable, key: str) -> str | None:
    value = var.attrs.get(key)
    return None if value is None else str(value)


def codec_names(encoding: Mapping) -> list[str]:
    """The names of a variable's filters, serializer (unless plain ``bytes``) and
    compressors, in the order they apply on writing: ``["shuffle", "zlib"]``,
    ``["blosc(zstd)"]``."""
    found = [*(encoding.get("filters") or ())]
    serializer = encoding.get("serializer")
    found += [serializer] if serializer is not None else []
    found += [*(encoding.get("compressors") or ())]
    found += [encoding["compressor"]] if encoding.get("compressor") is not None else []
    names = [_codec_name(codec) for codec in found]
    return [n for n in names if n != "bytes"]


def _codec_name(codec) -> str:
    name = getattr(codec, "codec_name", None) or getattr(codec, "codec_id", None)
    if name is None and hasattr(codec, "to_dict"):
        name = codec.to_dict().get("name")
    name = str(name or type(codec).__name__).removeprefix("numcodecs.")
    inner = getattr(codec, "cname", None)
    inner = getattr(inner, "value", inner)
    return f"{name}({inner})" if name == "blosc" and inner else name


def time_coverage(ds: xr.Dataset) -> TimeCoverage | None:
    """The first and last date of the first time dimension with a coordinate."""
    for name in ds.dims:
        var = ds.variables.get(name)
        if var is None or var.ndim != 1 or cf.kind(var) != "time" or not cf.is_time(var):
            continue
        found = _time_ends(var.values)
        if found:
            return TimeCoverage(start=cf.text(found[0]), end=cf.text(found[1]))
    return None


def _time_ends(values: np.ndarray) -> tuple | None:
    """The earliest and latest of ``values``, NaT and undated ones left out: in numpy for
    datetime64, value by value only for cftime objects."""
    if np.issubdtype(values.dtype, np.datetime64):
        values = values[~np.isnat(values)]
        return (values.min(), values.max()) if values.size else None
    dated = [v for v in values if cf.text(v) is not None]
    return (min(dated), max(dated)) if dated else None


def extent(ds: xr.Dataset) -> Extent | None:
    """The bounds of the geographic longitudes and latitudes of the dataset (1-D or 2-D
    coordinates in degrees); None when it has none."""
    lons = [v for v in ds.variables.values() if cf.is_longitude(v) and v.ndim in (1, 2)]
    lats = [v for v in ds.variables.values() if cf.is_latitude(v) and v.ndim in (1, 2)]
    if not lons or not lats:
        return None
    lon, lat = _bounds(lons[0]), _bounds(lats[0])
    if lon is None or lat is None:
        return None
    return Extent(west=lon[0], south=lat[0], east=lon[1], north=lat[1])


def _bounds(var: xr.Variable) -> tuple[float, float] | None:
    values = np.asarray(var.values, dtype="float64")
    values = values[np.isfinite(values)]
    return (float(values.min()), float(values.max())) if values.size else None


def stored_size(url: str, storage_options: dict | None = None) -> tuple[int | None, int | None]:
    """Bytes and objects under ``url`` (a folder, or one file); None, None when the store
    cannot be listed (a plain HTTP server)."""
    try:
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        found = fs.find(path, detail=True)
    except Exception as exc:  # each filesystem has errors of its own (aiohttp's, say)
        log.info(_masked(f"{url}: not listed, size unknown ({one_line(exc)})", storage_options))
        return None, None
    if not found:
        return None, None
    return int(sum(info.get("size") or 0 for info in found.values())), len(found)


def _masked(text: str, storage_options: dict | None) -> str:
    """``text`` with passwords in URLs and the secrets of ``storage_options`` masked."""
    return redact(text, secret_values(open_kwargs=storage_options))


def _exists(url: str, storage_options: dict | None) -> bool:
    try:
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        return bool(fs.exists(path))
    except Exception:  # each filesystem has errors of its own (aiohttp's, say)
        return False


# -- run records ------------------------------------------------------------------------


def find_runs(
    url: str,
    shown: str,
    store_name: str,
    storage_options: dict | None,
    runs_folder: str | Path | None,
) -> list[RunRecord]:
    """The run records of the store at ``url`` (whose records name it ``shown``), newest
    first. Those beside it match on their ``store`` (the recipe's store name) and the last
    part of their target (a references file's name), so they survive a target root that
    moved; those in ``runs_folder`` match on their whole target."""
    parent, _, leaf = url.rstrip("/").rpartition("/")
    beside = read_runs(f"{parent}/{RUNS_FOLDER}", storage_options)
    found = {r.id: r for r in beside if r.store == store_name and _leaf(r.target) == leaf}
    if runs_folder is not None:
        found.update({r.id: r for r in read_runs(str(runs_folder)) if r.target in (url, shown)})
    return sorted(found.values(), key=lambda r: (r.started, r.id), reverse=True)


def _leaf(target: str) -> str:
    return target.rstrip("/").rpartition("/")[2]


def read_runs(folder: str, storage_options: dict | None = None) -> list[RunRecord]:
    """The run records in ``folder`` (local or on an object store); a file that is not
    one is skipped, with a warning naming it."""
    try:
        fs, path = fsspec.core.url_to_fs(folder, **(storage_options or {}))
        paths = fs.glob(f"{path.rstrip('/')}/*.json")
    except Exception as exc:  # each filesystem has errors of its own (aiohttp's, say)
        log.info(_masked(f"{folder}: run records not listed ({one_line(exc)})", storage_options))
        return []
    records = []
    for found in paths:
        try:
            records.append(RunRecord.model_validate_json(fs.cat_file(found)))
        except (OSError, ValueError) as exc:
            why = f"{found}: not a run record, skipped ({one_line(exc)})"
            log.warning(_masked(why, storage_options))
    return records


def _run(record: RunRecord) -> Run:
    return Run(
        id=record.id,
        status=record.status,
        started=record.started.isoformat(timespec="seconds"),
        ended=record.ended.isoformat(timespec="seconds") if record.ended else None,
        seconds=record.seconds,
        inputs=record.inputs.count,
        retries=record.retries,
        command=" ".join(record.args) or None,
        by=record.by,
        version=record.versions.get("arcoforge"),
    )


# -- snippets ---------------------------------------------------------------------------


def snippets(
    url: str, kind: StoreType, storage_options: dict | None, secrets: tuple[str, ...]
) -> dict[str, str]:
    """Python code that opens the store, by label; ``url`` is the masked one, only the
    storage options :func:`_public` allows are written, and every text is redacted."""
    found = _snippets(url, kind, _public(storage_options or {}))
    return {label: redact(text, secrets) for label, text in found.items()}


def _snippets(url: str, kind: StoreType, options: dict) -> dict[str, str]:
    extra = f", storage_options={options!r}" if options else ""
    if kind == "zarr":
        return {"xarray": f'import xarray as xr\n\nds = xr.open_zarr("{url}"{extra})\n'}
    if kind == "icechunk":
        return {"icechunk": _icechunk_snippet(url), "arcoforge": _arcoforge_snippet(url, "")}
    target = f',\n            "target_options": {options!r}' if options else ""
    return {
        "arcoforge": _arcoforge_snippet(url, extra),
        "xarray (kerchunk)": (
            "import xarray as xr\n\n"
            "ds = xr.open_dataset(\n"
            '    "reference://",\n'
            '    engine="zarr",\n'
            "    chunks={},\n"
            "    backend_kwargs={\n"
            '        "consolidated": False,\n'
            '        "zarr_format": 2,\n'
            '        "storage_options": {\n'
            f'            "fo": "{url}",\n'
            f'            "remote_options": {{"asynchronous": True}}{target},\n'
            "        },\n"
            "    },\n"
            ")\n"
        ),
    }


def _arcoforge_snippet(url: str, extra: str) -> str:
    return (
        "from arcoforge.references import open_references\n\n"
        f'with open_references("{url}"{extra}) as ds:\n'
        "    print(ds)\n"
    )


def _icechunk_snippet(path: str) -> str:
    """Open the repository's ``main`` branch, allowing reads from the places its virtual
    chunks point into."""
    lines = [
        "import icechunk",
        "import xarray as xr",
        "",
        f'storage = icechunk.local_filesystem_storage("{path}")',
        "containers = {",
        *[f'    "{prefix}": None,' for prefix in _containers(path)],
        "}",
        "repo = icechunk.Repository.open(",
        "    storage, authorize_virtual_chunk_access=icechunk.containers_credentials(containers)",
        ")",
        'ds = xr.open_zarr(repo.readonly_session("main").store, consolidated=False)',
    ]
    return "\n".join(lines) + "\n"


def _containers(path: str) -> list[str]:
    """The virtual chunk containers the repository at ``path`` is configured with."""
    ic = require("icechunk", "Icechunk stores")
    repo = ic.Repository.open(ic.local_filesystem_storage(path))
    return sorted(repo.config.virtual_chunk_containers or {})


PUBLIC_OPTIONS = {"endpoint_url", "region_name", "anon", "requester_pays", "account_name"}


def _public(options: Mapping) -> dict:
    """The storage options a snippet may show: :data:`PUBLIC_OPTIONS` (an ``endpoint_url``
    without its user info), also inside ``client_kwargs``; credentials come from the
    reader's environment."""
    kept = {}
    for key, value in options.items():
        if key == "client_kwargs" and isinstance(value, Mapping):
            value = _public(value)
            if value:
                kept[key] = value
        elif key in PUBLIC_OPTIONS and isinstance(value, str | bool | None):
            kept[key] = without_userinfo(value) if key == "endpoint_url" and value else value
    return kept
