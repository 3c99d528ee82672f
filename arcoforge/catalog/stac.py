"""A STAC catalog of the records: one Collection per dataset, with the datacube extension.

Collections are written from records alone (as xstac would from the dataset:
``cube:dimensions`` with temporal and spatial extents, ``cube:variables`` for every
variable that is not a dimension's coordinate), the store as a ``data`` asset with the
``xarray:open_kwargs`` that open it, and the quick-look as a thumbnail. Every link is
relative, so the folder works offline and wherever it is copied.
"""

from __future__ import annotations

import calendar
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from arcoforge.catalog.describe import spdx_id
from arcoforge.catalog.record import DatasetRecord, Dimension, Variable
from arcoforge.errors import ArcoforgeError, require

if TYPE_CHECKING:
    import pystac

MEDIA_TYPES = {
    "zarr": "application/vnd+zarr",
    "references-json": "application/json",
    "references-parquet": "application/vnd.apache.parquet",
    "icechunk": "application/vnd.zarr+icechunk",
}
OPEN_KWARGS = {
    "zarr": {"engine": "zarr", "chunks": {}},
    "references-json": {"engine": "kerchunk", "chunks": {}},
    "references-parquet": {"engine": "kerchunk", "chunks": {}},
    "icechunk": {"engine": "zarr", "chunks": {}, "consolidated": False},
}
ROLES = {
    "zarr": ["data"],
    "references-json": ["data", "references"],
    "references-parquet": ["data", "references"],
    "icechunk": ["data", "virtual"],
}
_WORLD = [-180.0, -90.0, 180.0, 90.0]
PROJJSON = "https://proj.org/schemas/v0.4/projjson.schema.json"


def build_stac(
    records: list[DatasetRecord],
    out_dir: str | Path,
    base_url: str | None = None,
    quicklook_dir: str | Path | None = None,
) -> pystac.Catalog:
    """Write a STAC Catalog of ``records`` into ``out_dir`` (``catalog.json`` and
    ``SLUG/collection.json``) and return it.

    ``base_url`` is where ``out_dir`` will be published: the root then names itself by
    it, while every other link stays relative. Quick-looks are copied from
    ``quicklook_dir/SLUG/`` beside their collection, as its thumbnail.
    """
    stac = _pystac()
    out_dir = Path(out_dir)
    catalog = stac.Catalog(
        id="arcoforge",
        title="Datasets baked by arcoforge",
        description="Analysis-ready, cloud-optimized stores baked by arcoforge from feedstocks.",
    )
    for record in records:
        catalog.add_child(collection(record, thumbnail=quicklook_dir is not None))
    catalog.normalize_hrefs(str(out_dir.resolve()))
    if quicklook_dir is not None:
        _copy_quicklooks(records, Path(quicklook_dir), out_dir)
    if base_url:
        catalog.set_self_href(f"{base_url.rstrip('/')}/catalog.json")
        catalog.normalize_hrefs(base_url.rstrip("/"))
        catalog.save(stac.CatalogType.RELATIVE_PUBLISHED, dest_href=str(out_dir.resolve()))
    else:
        catalog.save(stac.CatalogType.SELF_CONTAINED)
    return catalog


def collection(record: DatasetRecord, thumbnail: bool = True) -> pystac.Collection:
    """The Collection of one record; with ``thumbnail``, its first quick-look (expected
    beside the collection) as its thumbnail."""
    stac = _pystac()
    result = stac.Collection(
        id=record.slug,
        title=record.title,
        description=record.description,
        extent=stac.Extent(
            stac.SpatialExtent([_bbox(record)]),
            stac.TemporalExtent([_interval(record)]),
        ),
        license=spdx_id(record.license) or "other",
        keywords=list(record.tags) or None,
        providers=[
            stac.Provider(name=p.name, roles=list(p.roles), url=p.url) for p in record.providers
        ],
        extra_fields={"arcoforge:status": record.status, "arcoforge:id": record.id},
    )
    if record.license_url:
        result.add_link(stac.Link("license", record.license_url, media_type="text/html"))
    _datacube(result, record)
    _store_asset(result, record)
    if record.quicklook and thumbnail:
        result.add_asset(
            "thumbnail",
            stac.Asset(
                href=f"./{record.quicklook.first}",
                title=record.quicklook.alt_first,
                media_type=stac.MediaType.PNG,
                roles=["thumbnail"],
            ),
        )
    return result


def _datacube(result: pystac.Collection, record: DatasetRecord) -> None:
    datacube = require("pystac.extensions.datacube", "STAC catalogs")
    ext = datacube.DatacubeExtension.ext(result, add_if_missing=True)
    dims = {d.name for d in record.dims}
    ext.apply(
        dimensions={d.name: datacube.Dimension.from_dict(cube_dimension(d)) for d in record.dims},
        variables={
            v.name: datacube.Variable(cube_variable(v))
            for v in record.variables
            if v.name not in dims
        },
    )


def cube_dimension(dim: Dimension) -> dict[str, Any]:
    """A ``cube:dimensions`` entry: temporal with ISO extents, spatial with an axis and
    (for degrees) EPSG:4326, else an additional dimension; indices when it has no
    coordinate."""
    if dim.start is None or dim.end is None:
        return {"type": "other", "extent": [0, dim.size - 1], "description": "indices"}
    if dim.kind == "time" and _date(dim.start) and _date(dim.end):
        return {"type": "temporal", "extent": [_iso(dim.start), _iso(dim.end)]}
    low, high = _numbers(dim.start, dim.end)
    if low is None:
        return {"type": "other", "extent": [None, None], "description": f"{dim.start} to {dim.end}"}
    found: dict[str, Any] = {"extent": [low, high]}
    if dim.kind in ("x", "y", "z"):
        found.update(type="spatial", axis=dim.kind)
        if dim.units and dim.units.lower().startswith("degree") and dim.kind != "z":
            found["reference_system"] = 4326
    else:
        found["type"] = dim.kind
    if dim.units and dim.kind != "x" and dim.kind != "y":
        found["unit"] = dim.units
    return found


def cube_variable(var: Variable) -> dict[str, Any]:
    """A ``cube:variables`` entry, as xstac writes it (type, dimensions, description,
    unit, shape, chunks) with the store's codecs and CF names as attributes."""
    found: dict[str, Any] = {
        "type": "auxiliary" if var.coordinate else "data",
        "dimensions": list(var.dims),
        "shape": list(var.shape),
    }
    if var.long_name:
        found["description"] = var.long_name
    if var.units:
        found["unit"] = var.units
    if var.chunks:
        found["chunks"] = list(var.chunks)
    attrs = {"dtype": var.dtype, "codecs": list(var.codecs)}
    attrs.update({"standard_name": var.standard_name} if var.standard_name else {})
    attrs.update({"shards": list(var.shards)} if var.shards else {})
    found["attrs"] = attrs
    return found


def _store_asset(result: pystac.Collection, record: DatasetRecord) -> None:
    stac = _pystac()
    xarray_assets = require("pystac.extensions.xarray_assets", "STAC catalogs")
    kind = record.store.type
    asset = stac.Asset(
        href=record.store.url,
        title=f"{kind} store",
        media_type=MEDIA_TYPES[kind],
        roles=list(ROLES[kind]),
    )
    result.add_asset("store", asset)
    ext = xarray_assets.XarrayAssetsExtension.ext(asset, add_if_missing=True)
    ext.open_kwargs = dict(OPEN_KWARGS[kind])


def _bbox(record: DatasetRecord) -> list[float]:
    """The record's extent in STAC's terms: longitudes in -180..180 (west > east across
    the antimeridian); the whole world when the record has none."""
    if record.extent is None:
        return list(_WORLD)
    e = record.extent
    if e.east - e.west + _spacing(record) >= 359.0:  # cell centres of a global grid
        west, east = -180.0, 180.0
    else:
        west, east = _wrap(e.west), _wrap(e.east)
        east = 180.0 if east == -180.0 and e.east > e.west else east
    return [west, max(e.south, -90.0), east, min(e.north, 90.0)]


def _spacing(record: DatasetRecord) -> float:
    """The step of a regular 1-D longitude dimension (its centres span one step less than
    the cells do), or 0."""
    extent = record.extent
    sizes = [d.size for d in record.dims if d.kind == "x" and d.size > 1]
    return (extent.east - extent.west) / (sizes[0] - 1) if extent and sizes else 0.0


def _wrap(lon: float) -> float:
    return (lon + 180.0) % 360.0 - 180.0


def _interval(record: DatasetRecord) -> list[datetime | None]:
    coverage = record.time_coverage
    if coverage is None:
        return [None, None]
    return [_date(coverage.start), _date(coverage.end)]


def _date(text: str) -> datetime | None:
    """``text`` (ISO) as a UTC datetime; a day a real calendar lacks (30 February of a
    360-day calendar) becomes the month's last day; None if not a date."""
    match = re.fullmatch(r"(-?\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2}):(\d{2}))?", text)
    if not match:
        return None
    year, month, day, *clock = (int(g) if g else 0 for g in match.groups())
    if not 1 <= year <= 9999 or not 1 <= month <= 12:
        return None
    day = min(day, calendar.monthrange(year, month)[1])
    return datetime(year, month, day, *clock, tzinfo=UTC)


def _iso(text: str) -> str:
    return _date(text).strftime("%Y-%m-%dT%H:%M:%SZ")


def _numbers(start: str, end: str) -> tuple[float | None, float | None]:
    try:
        a, b = float(start), float(end)
    except ValueError:
        return None, None
    return min(a, b), max(a, b)


def _copy_quicklooks(records: list[DatasetRecord], source: Path, out_dir: Path) -> None:
    for record in records:
        if record.quicklook:
            (out_dir / record.slug).mkdir(parents=True, exist_ok=True)
            for name in dict.fromkeys([record.quicklook.first, record.quicklook.last]):
                path = source / record.slug / name
                if not path.is_file():
                    raise ArcoforgeError(f"{path}: missing (the quick-look of {record.id!r})")
                shutil.copyfile(path, out_dir / record.slug / name)


def validate(catalog: pystac.Catalog) -> list[str]:
    """Validate the catalog and each of its collections against the STAC and extension
    schemas pystac ships, with no network (see :func:`offline_validator`); return the ids
    checked. Raises pystac's ``STACValidationError`` naming the first invalid object."""
    validator = offline_validator()
    objects = [catalog, *catalog.get_children()]
    for obj in objects:
        obj.validate(validator=validator)
    return [obj.id for obj in objects]


def offline_validator():
    """pystac's JSON-schema validator, allowed to fetch nothing: the STAC 1.1 core and the
    datacube and xarray-assets schemas are bundled with pystac. The PROJJSON schema that
    datacube's ``reference_system`` points to is not; it stands here as "an object" (this
    catalog writes EPSG codes, never PROJJSON, so the code branch is what is checked)."""
    _pystac()
    require("jsonschema", "STAC checks")
    validation = require("pystac.validation", "STAC checks")
    validator = validation.JsonSchemaSTACValidator(allow_list=[])
    validator.schema_cache[PROJJSON] = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$id": PROJJSON,
        "type": "object",
    }
    return validator


def _pystac():
    return require("pystac", "STAC catalogs")
